/**
 * The post-copy control: plain QEMU (no gangway), workload W4, switched to post-copy on a
 * schedule like gangway's (several pre-copy passes, then a slow drain), run many times; each
 * destination is resumed and the guest checks every page of its memory. It tells whether a
 * failed self-check after post-copy is gangway's doing or QEMU's.
 *
 *   npx tsx bench/postcopyControl.ts [--runs 40] [--after-syncs 6] [--throttle-ms 5000] [--private-ram] [--json]
 */
import { parseArgs } from "node:util";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runNative } from "./native.ts";
import { workload } from "./workloads.ts";

export interface ControlReport {
  runs: number;
  afterSyncs: number;
  throttleMs: number;
  ram: "shared-file" | "private";
  completed: number;
  verified: number;
  failures: { run: number; check: string }[];
}

export async function postcopyControl(o: { runs: number; afterSyncs: number; throttleMs: number; ram?: "shared-file" | "private"; log?: (s: string) => void }): Promise<ControlReport> {
  const ram = o.ram ?? "shared-file";
  const work = await mkdtemp(join(tmpdir(), "gw-pcc-"));
  const report: ControlReport = { runs: o.runs, afterSyncs: o.afterSyncs, throttleMs: o.throttleMs, ram, completed: 0, verified: 0, failures: [] };
  try {
    const w = await workload("W4", { quick: false, workDir: work });
    for (let run = 0; run < o.runs; run++) {
      const r = await runNative({
        workload: w, mode: "postcopy", bytesPerSecond: 125e6, baseDir: join(work, "n"), ram,
        postcopySwitch: { afterSyncs: o.afterSyncs, throttleMs: o.throttleMs, throttleBps: 1e6 },
      });
      if (r.completed) report.completed++;
      const ok = r.completed && r.vms.every((v) => v.check.startsWith("VERIFY OK"));
      if (ok) report.verified++;
      else report.failures.push({ run, check: r.vms.map((v) => v.check || v.status).join("; ") || (r.reason ?? "not completed") });
      o.log?.(`run ${run + 1}/${o.runs}: ${ok ? "verified" : `FAILED (${report.failures.at(-1)!.check})`}`);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return report;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: { runs: { type: "string", default: "40" }, "after-syncs": { type: "string", default: "6" }, "throttle-ms": { type: "string", default: "5000" }, "private-ram": { type: "boolean", default: false }, json: { type: "boolean", default: false } } }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 64;
  }
  const [runs, afterSyncs, throttleMs] = [values.runs, values["after-syncs"], values["throttle-ms"]].map(Number) as [number, number, number];
  if (![runs, afterSyncs, throttleMs].every((n) => Number.isInteger(n) && n >= 0) || runs < 1 || afterSyncs < 1) {
    process.stderr.write("--runs and --after-syncs take whole numbers ≥ 1, --throttle-ms a whole number ≥ 0\n");
    return 64;
  }
  const r = await postcopyControl({ runs, afterSyncs, throttleMs, ram: values["private-ram"] ? "private" : "shared-file", log: values.json ? undefined : (s) => process.stderr.write(`${s}\n`) });
  if (values.json) process.stdout.write(`${JSON.stringify(r)}\n`);
  else process.stdout.write(`native post-copy, switch after ${afterSyncs} dirty-log syncs${throttleMs ? ` and ${throttleMs} ms at 1 MB/s` : ""}, ${r.ram} guest RAM: ${r.verified}/${r.runs} verified, ${r.completed} completed${r.failures.length ? `; failed: ${r.failures.map((f) => `#${f.run + 1} ${f.check}`).join(", ")}` : ""}\n`);
  return r.failures.length ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
