/**
 * The soak under load (`npm run soak`): an embedded nats-server, the functions and two host
 * agents as processes, four dirtying test VMs migrated back and forth between the hosts N
 * times while a CPU hog keeps one core busy (as on a hypervisor being evacuated). Every run
 * is checked three ways: the commit's three digests (source RAM, sent, destination), the
 * RAM of both ends byte for byte (dumps kept by the agents), and every guest's self-check
 * on its new host. It counts what RELIABILITY.md reports: committed, rolled back (and why),
 * wrong VMs committed (must be 0), mismatches caught (pages repaired), false peer-loss
 * rollbacks (must be 0: no fault is injected), and each VM's downtime.
 *
 * The destination's dump is a copy of its RAM taken in the downtime (0.3–0.65 s per 128 MiB
 * VM here, measured): `--no-dumps` leaves the byte-for-byte check out, for downtimes as a
 * user's agents (which keep no dumps) have them; the digests and self-checks stay.
 *
 *   npm run soak -- [--runs 30] [--vms 4] [--memory 256] [--rate 1000] [--no-hog] [--no-dumps] [--json]
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { hostVms, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../cli/localCluster.ts";
import { migrateGang, type DowntimePhases } from "../cli/gangMigration.ts";
import { connectNats } from "../infra/nats/connect.ts";
import { provision } from "../infra/nats/provision.ts";
import { startEmbeddedServer } from "../infra/nats/server.ts";
import { compareRamDumps } from "../test/helpers/ramDumps.ts";

export interface SoakRun {
  run: number;
  from: string;
  to: string;
  outcome: string;
  reason?: string;
  time_ms: number;
  vms: { vm: string; outcome: string; downtime_ms?: number; downtime_phases?: DowntimePhases; longest_wait?: { for: string; ms: number }; pages_repaired?: number; digests_equal?: boolean; ram?: string; check?: string }[];
}

export interface SoakReport {
  runs: number;
  hog: boolean;
  /** Whether both ends' RAM was dumped and compared byte for byte. */
  dumps: boolean;
  committed: number;
  rolled_back: number;
  rollback_reasons: string[];
  /** Committed VMs whose RAM differed from the source's or whose self-check failed. */
  wrong_vms_committed: number;
  /** Pages the repair pass sent because the source's RAM differed from QEMU's stream. */
  pages_repaired: number;
  vms_repaired: number;
  false_peer_loss_rollbacks: number;
  downtime_ms: { max: number; median: number; over_5s: number };
  /** The longest single wait inside any downtime, as the destination named it. */
  longest_wait?: { run: number; vm: string; for: string; ms: number };
  details: SoakRun[];
}

/** Until every VM shows running on the host it is on. */
async function waitRunning(nc: Parameters<typeof hostVms>[0], at: Map<string, string>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const views = await Promise.all(["hostA", "hostB"].map((h) => hostVms(nc, h)));
    const byHost = new Map([["hostA", views[0]!], ["hostB", views[1]!]]);
    if ([...at].every(([vm, host]) => byHost.get(host)?.get(vm) === "running")) return;
    if (Date.now() > until) throw new Error(`VMs not running where they should be after ${timeoutMs / 1000} s: ${[...at].map(([vm, h]) => `${vm}@${h}=${byHost.get(h)?.get(vm) ?? "absent"}`).join(", ")}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** sent/proved/ready/commit/resume in ms, as the CLI's summary names them. */
const phasesText = (p: DowntimePhases) => `sent ${p.source_sent_ms} proved ${p.source_proved_ms} ready ${p.destination_ready_ms} commit ${p.commit_ms} resume ${p.resume_ms}`;

const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : 0);

export async function soak(o: { runs: number; vms: number; memoryMiB: number; rate: number; hog: boolean; dumps?: boolean; log: (s: string) => void }): Promise<SoakReport> {
  const dumping = o.dumps ?? true;
  const work = await mkdtemp(join(tmpdir(), "gangway-soak-"));
  // Beside the VMs' RAM files (tmpfs): a source's dump is then a link, not a copy in its downtime.
  const dumps = await mkdtemp("/dev/shm/gw-soak-dumps-");
  const hog = o.hog ? spawn("sh", ["-c", "exec yes > /dev/null"], { stdio: "ignore" }) : undefined;
  const server = await startEmbeddedServer({ name: "gangway-soak", storeDir: join(work, "js") });
  const nc = await connectNats({ servers: server.url, name: "gangway-soak", reconnect: false });
  const procs: GangwayProcess[] = [];
  const report: SoakReport = {
    runs: o.runs, hog: o.hog, dumps: dumping, committed: 0, rolled_back: 0, rollback_reasons: [], wrong_vms_committed: 0, pages_repaired: 0, vms_repaired: 0,
    false_peer_loss_rollbacks: 0, downtime_ms: { max: 0, median: 0, over_5s: 0 }, details: [],
  };
  const downtimes: number[] = [];
  try {
    await provision(nc);
    procs.push(await startFunctions(server.url));
    if (dumping) process.env.GANGWAY_RAM_DUMP_DIR = dumps;
    for (const host of ["hostA", "hostB"]) procs.push(await startAgentProcess(server.url, host, work));
    delete process.env.GANGWAY_RAM_DUMP_DIR;
    const names = Array.from({ length: o.vms }, (_, i) => `s${i + 1}`);
    await startVms(nc, "hostA", names.map((n, i) => testGuestSpec(n, { memoryMiB: o.memoryMiB, seed: i + 1, image: 7, rate: o.rate })));
    // Where each VM runs now (a rolled-back VM stays where it was).
    const at = new Map(names.map((n) => [n, "hostA"]));
    for (let run = 0; run < o.runs; run++) {
      const from = at.get(names[0]!)!;
      const to = from === "hostA" ? "hostB" : "hostA";
      const gang = names.filter((n) => at.get(n) === from);
      const t0 = Date.now();
      const s = await migrateGang({ nc, vms: gang, sourceHost: from, targetHost: to, requestedBy: "gangway soak" });
      const ram = dumping ? await compareRamDumps(dumps, s.migrationId, gang) : {};
      const r: SoakRun = { run, from, to, outcome: s.outcome, ...(s.reason ? { reason: s.reason } : {}), time_ms: Date.now() - t0, vms: [] };
      for (const v of s.vms) {
        const committed = v.outcome === "committed";
        const row: SoakRun["vms"][number] = { vm: v.vm, outcome: v.outcome, ...(v.downtime_ms !== undefined ? { downtime_ms: v.downtime_ms } : {}), ...(v.downtime_phases ? { downtime_phases: v.downtime_phases } : {}), ...(v.longest_wait ? { longest_wait: v.longest_wait } : {}) };
        if (committed) {
          report.committed++;
          at.set(v.vm, to);
          const check = await verifyGuest(nc, to, v.vm).catch((e: Error) => ({ ok: false, line: e.message }));
          row.check = check.line;
          row.ram = dumping ? ram[v.vm] : "not dumped";
          row.digests_equal = !!v.proof && v.proof.source_ram_digest === v.proof.sent_digest && v.proof.sent_digest === v.proof.destination_digest;
          row.pages_repaired = v.proof?.pages_repaired ?? 0;
          report.pages_repaired += row.pages_repaired;
          if (row.pages_repaired > 0) report.vms_repaired++;
          if (!check.ok || (dumping && row.ram !== "identical") || !row.digests_equal) report.wrong_vms_committed++;
          if (v.downtime_ms !== undefined) {
            downtimes.push(v.downtime_ms);
            if (v.downtime_ms > 5000) report.downtime_ms.over_5s++;
          }
        } else {
          report.rolled_back++;
          report.rollback_reasons.push(`run ${run} ${v.vm}: ${v.reason ?? s.reason ?? "rolled back"}`);
          if (/stopped answering/.test(v.reason ?? "")) report.false_peer_loss_rollbacks++;
        }
        r.vms.push(row);
        if (row.longest_wait && row.longest_wait.ms > (report.longest_wait?.ms ?? -1)) report.longest_wait = { run, vm: v.vm, ...row.longest_wait };
      }
      report.details.push(r);
      // A rolled-back VM is resumed at its source shortly after the outcome: wait for it.
      await waitRunning(nc, at, 120_000);
      await rm(dumps, { recursive: true, force: true });
      o.log(`run ${run + 1}/${o.runs} ${from}→${to}: ${s.outcome}${s.reason ? ` (${s.reason})` : ""}; ${r.vms.map((v) => `${v.vm} ${v.outcome}${v.downtime_ms !== undefined ? ` ${v.downtime_ms} ms` : ""}${v.downtime_phases ? ` (${phasesText(v.downtime_phases)})` : ""}${v.pages_repaired ? ` repaired ${v.pages_repaired}` : ""}${v.ram && v.ram !== "identical" && v.ram !== "not dumped" ? ` RAM ${v.ram}` : ""}${v.check && !/VERIFY OK/.test(v.check) ? ` CHECK ${v.check}` : ""}`).join(", ")}`);
    }
  } finally {
    hog?.kill();
    for (const p of procs.reverse()) await p.stop().catch(() => undefined);
    await nc.close().catch(() => undefined);
    await server.stop();
    await rm(work, { recursive: true, force: true });
    await rm(dumps, { recursive: true, force: true });
  }
  report.downtime_ms = { max: Math.max(0, ...downtimes), median: median(downtimes), over_5s: report.downtime_ms.over_5s };
  return report;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: { runs: { type: "string", default: "30" }, vms: { type: "string", default: "4" }, memory: { type: "string", default: "256" }, rate: { type: "string", default: "1000" }, "no-hog": { type: "boolean", default: false }, "no-dumps": { type: "boolean", default: false }, json: { type: "boolean", default: false } } }));
  } catch (err) {
    process.stderr.write(`soak: ${(err as Error).message}\n`);
    return 64;
  }
  const [runs, vms, memoryMiB, rate] = [values.runs, values.vms, values.memory, values.rate].map(Number) as [number, number, number, number];
  if (![runs, vms, memoryMiB].every((n) => Number.isInteger(n) && n >= 1) || !Number.isInteger(rate) || rate < 0) {
    process.stderr.write("soak: --runs, --vms and --memory take whole numbers ≥ 1, --rate a whole number ≥ 0\n");
    return 64;
  }
  const report = await soak({ runs, vms, memoryMiB, rate, hog: !values["no-hog"], dumps: !values["no-dumps"], log: (s) => process.stderr.write(`soak: ${s}\n`) });
  if (values.json) process.stdout.write(JSON.stringify(report) + "\n");
  else {
    const { details: _d, rollback_reasons, ...figures } = report;
    process.stdout.write(`${JSON.stringify(figures, null, 2)}\n${rollback_reasons.map((r) => `rolled back: ${r}`).join("\n")}\n`);
  }
  return report.wrong_vms_committed === 0 && report.false_peer_loss_rollbacks === 0 ? 0 : 1;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main();
