/**
 * The pre-copy control: plain QEMU (no gangway in the path), W1's test guests (1,000 pages/s
 * dirtied), migrated QEMU to QEMU over loopback with the bandwidth capped so that each takes
 * several passes, as gangway's migrations do. Once the destination has loaded the stream —
 * before it is resumed — its RAM file is compared byte for byte with the source's, whose
 * guest QEMU stopped for the switch-over. Any page that differs is one QEMU's own stream did
 * not carry in its last state: the fault is below gangway.
 *
 *   npx tsx bench/precopyControl.ts [--runs 10] [--vms 4] [--bandwidth-mbps 20] [--json]
 */
import { parseArgs } from "node:util";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { qemuVersion } from "../adapters/qemu/binary.ts";
import { startVm, type VmHandle } from "../adapters/qemu/vm.ts";
import { freePort } from "./shaper.ts";
import { workload } from "./workloads.ts";

const PAGE = 4096;

export interface PrecopyControlReport {
  runs: number;
  vms: number;
  bandwidthMBps: number;
  /** The QEMU that ran (GANGWAY_QEMU selects another than the system's). */
  qemu: string;
  migrations: number;
  /** Migrations whose destination RAM differed from the stopped source's. */
  differing: number;
  /** Per differing migration: pages that differ, the first offsets, QEMU's passes. */
  cases: { run: number; vm: string; pages: number; first: string[]; passes: number }[];
}

/** Pages at which two RAM files differ. */
async function diffRam(a: string, b: string, bytes: number): Promise<number[]> {
  const [fa, fb] = await Promise.all([open(a, "r"), open(b, "r")]);
  const out: number[] = [];
  try {
    const ba = Buffer.alloc(256 * PAGE);
    const bb = Buffer.alloc(256 * PAGE);
    for (let off = 0; off < bytes; off += ba.length) {
      await Promise.all([fa.read(ba, 0, ba.length, off), fb.read(bb, 0, bb.length, off)]);
      for (let p = 0; p < ba.length; p += PAGE) if (ba.compare(bb, p, p + PAGE, p, p + PAGE) !== 0) out.push(off + p);
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
  return out;
}

async function migrateAndCompare(src: VmHandle, dst: VmHandle, bandwidthBps: number, bytes: number): Promise<{ pages: number[]; passes: number }> {
  await src.qmp.migrateSetParameters({ "max-bandwidth": bandwidthBps });
  const port = await freePort();
  await dst.qmp.migrateIncoming(`tcp:127.0.0.1:${port}`);
  await src.qmp.migrate(`tcp:127.0.0.1:${port}`);
  const info = await src.qmp.waitForMigration({ timeoutMs: 300_000 });
  if (info.status !== "completed") throw new Error(`native migration ${info.status}: ${info["error-desc"] ?? ""}`);
  for (let i = 0; i < 600 && (await dst.qmp.queryMigrate()).status !== "completed"; i++) await new Promise((r) => setTimeout(r, 50));
  // Source in postmigrate (stopped), destination paused (-S, never run): both RAMs still.
  return { pages: await diffRam(src.paths.ramPath, dst.paths.ramPath, bytes), passes: info.ram?.["dirty-sync-count"] ?? 0 };
}

export async function precopyControl(o: { runs: number; vms: number; bandwidthMBps: number; log?: (s: string) => void }): Promise<PrecopyControlReport> {
  const work = await mkdtemp(join(tmpdir(), "gw-prc-"));
  const report: PrecopyControlReport = { runs: o.runs, vms: o.vms, bandwidthMBps: o.bandwidthMBps, qemu: (await qemuVersion()) ?? "unknown", migrations: 0, differing: 0, cases: [] };
  try {
    const w = await workload("W1", { quick: false, workDir: work });
    for (let run = 0; run < o.runs; run++) {
      const pairs: { src: VmHandle; dst: VmHandle }[] = [];
      try {
        for (const v of w.vms.slice(0, o.vms)) {
          const config = { name: v.name, memoryMiB: v.memoryMiB, kernel: v.kernel, append: v.append };
          const src = await startVm(config, { role: "source", baseDir: join(work, "n"), host: "nsrc" });
          const dst = await startVm(config, { role: "destination", baseDir: join(work, "n"), host: "ndst" });
          pairs.push({ src, dst });
          await src.serial.waitFor(new RegExp(v.readyPattern), 180_000);
        }
        const results = await Promise.all(pairs.map((p) => migrateAndCompare(p.src, p.dst, o.bandwidthMBps * 1e6, p.src.config.memoryMiB * 1024 * 1024)));
        results.forEach((r, i) => {
          report.migrations++;
          const vm = pairs[i]!.src.config.name;
          if (r.pages.length > 0) {
            report.differing++;
            report.cases.push({ run, vm, pages: r.pages.length, first: r.pages.slice(0, 4).map((p) => `0x${p.toString(16)}`), passes: r.passes });
          }
          o.log?.(`run ${run + 1}/${o.runs} ${vm}: ${r.passes} passes, ${r.pages.length} pages differ${r.pages.length ? ` (first ${r.pages.slice(0, 4).map((p) => `0x${p.toString(16)}`).join(", ")})` : ""}`);
        });
      } finally {
        await Promise.allSettled(pairs.flatMap((p) => [p.src[Symbol.asyncDispose](), p.dst[Symbol.asyncDispose]()]));
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return report;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: { runs: { type: "string", default: "10" }, vms: { type: "string", default: "4" }, "bandwidth-mbps": { type: "string", default: "20" }, json: { type: "boolean", default: false } } }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 64;
  }
  const [runs, vms, bw] = [values.runs, values.vms, values["bandwidth-mbps"]].map(Number) as [number, number, number];
  if (![runs, vms].every((n) => Number.isInteger(n) && n >= 1) || vms > 4 || !(bw > 0)) {
    process.stderr.write("--runs takes a whole number ≥ 1, --vms 1 to 4, --bandwidth-mbps a number > 0 (MB/s)\n");
    return 64;
  }
  const report = await precopyControl({ runs, vms, bandwidthMBps: bw, log: (s) => process.stderr.write(`${s}\n`) });
  if (values.json) process.stdout.write(JSON.stringify(report) + "\n");
  else process.stdout.write(`QEMU ${report.qemu}: ${report.differing} of ${report.migrations} native pre-copy migrations left the destination's RAM different from the stopped source's\n`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
