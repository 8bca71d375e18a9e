/**
 * The pipeline benchmark without QEMU (issue 14, deliverable 1): synthetic QEMU 7.2 streams
 * of a gang pushed through the real source pipeline, a real nats-server with the real
 * functions, and the real destination pipeline, into a sink that parses what it gets and
 * checks every page against what the source stream carried.
 *
 * Each run (a mix × a gang size) gets a fresh nats-server and functions process, and three
 * processes of its own: the source side, the destination side and the synthetic QEMUs (this
 * one only starts them and samples /proc). Streams are generated and encoded before anything starts
 * (their cost is QEMU's); the preparation phase (scans) runs before the measurement begins.
 * Measured: from "go" to each side's last VM done; CPU and peak RSS per process over that.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, cpus, tmpdir } from "node:os";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { spawnGangway, type GangwayProcess } from "../cli/localCluster.ts";
import { connectNats } from "../infra/nats/connect.ts";
import { provision } from "../infra/nats/provision.ts";
import { startEmbeddedServer, type EmbeddedServer } from "../infra/nats/server.ts";
import { forkChild, isPipelineCheckError, type ChildHandle } from "./pipelineChild.ts";
import { startMeter, type ProcessFigures } from "./pipelineMeter.ts";
import { MIXES, vmMemory, w2SharedPages, type MixId } from "./pipelineMix.ts";
import { destinationDone, qemuDone, sourceDone } from "./pipelineProtocol.ts";
import { ATTRIBUTION, type PipelineReport, type PipelineRun, type ProcessRow, type SideFigures } from "./pipelineReport.ts";
import { writeStreamFile } from "./pipelineStream.ts";

export interface PipelineBenchOptions {
  /** @default all: present, new, w2 */
  mixes?: MixId[];
  /** Gang sizes, each a run of its own. @default [1, 4] */
  vms?: number[];
  /** Guest RAM per VM (block m0), MiB. @default 256, or 16 with `quick` */
  sizeMiB?: number;
  quick?: boolean;
  /** Progress lines (stderr). */
  log?: (s: string) => void;
  /** Called with each run's figures as it finishes (JSON lines). */
  onRun?: (run: PipelineRun) => void;
  /** Where streams, RAM files and sockets go. @default /dev/shm (else the temp dir) */
  workDir?: string;
  /**
   * Write CPU profiles of the source and destination sides' main threads over the measured
   * phase to DIR/<mix>-<vms>/<side>/main.cpuprofile (summarize with `npx tsx bench/profile.ts DIR`).
   * @default none
   */
  cpuProfileDir?: string;
}

const SOURCE_HOST = "pipeA";
const TARGET_HOST = "pipeB";
const TENANT = "bench";

interface MixFiles {
  streams: { path: string; bytes: number }[];
  /** Per VM, its RAM file as the scan reads it, if the mix has a preparation. */
  scans: (string | undefined)[];
}

/** Generates and encodes the gang's streams (and scan images) for up to `vms` VMs. */
async function generate(mix: MixId, vms: number, ramBytes: number, dir: string): Promise<MixFiles> {
  const shared = mix === "w2" ? w2SharedPages(ramBytes) : undefined;
  const files: MixFiles = { streams: [], scans: [] };
  for (let v = 0; v < vms; v++) {
    const mem = vmMemory(mix, v, ramBytes, shared);
    const path = join(dir, `vm${v + 1}.stream`);
    files.streams.push({ path, bytes: writeStreamFile(path, mem) });
    if (mem.scanned) {
      const scan = join(dir, `vm${v + 1}.ram`);
      await writeFile(scan, mem.scanned);
      files.scans.push(scan);
    } else files.scans.push(undefined);
  }
  return files;
}

/** Resolves with `p`, or rejects when any of `failures` rejects first (a child died or failed). */
function unlessFailed<T>(p: Promise<T>, failures: Promise<unknown>[]): Promise<T> {
  return Promise.race([p, ...failures.map((f) => f.then(() => new Promise<never>(() => undefined)))]);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what} took longer than ${Math.round(ms / 1000)} s`)), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

async function runOnce(mix: MixId, n: number, files: MixFiles, ramBytes: number, dir: string, o: PipelineBenchOptions): Promise<PipelineRun> {
  const log = o.log ?? (() => undefined);
  const runDir = await mkdtemp(join(dir, `run${n}-`));
  const migrationId = `pipe-${mix}-${n}-${randomBytes(3).toString("hex")}`;
  const names = Array.from({ length: n }, (_, i) => `vm${i + 1}`);
  const sock = (vm: string, what: string) => join(runDir, `${vm}.${what}.sock`);
  const streamBytes = files.streams.slice(0, n).reduce((a, s) => a + s.bytes, 0);
  const profiled = (side: string) => (o.cpuProfileDir ? { profileTo: join(o.cpuProfileDir, `${mix}-${n}`, side, "main.cpuprofile") } : {});
  let server: EmbeddedServer | undefined;
  let functions: GangwayProcess | undefined;
  const children: ChildHandle<unknown>[] = [];
  try {
    server = await startEmbeddedServer({ name: "gangway-pipeline" });
    const nc = await connectNats({ servers: server.url, name: "bench-pipeline", reconnect: false });
    await provision(nc);
    await nc.close();
    const prepStart = Date.now();
    const qemu = forkChild("synthetic QEMU", "bench/pipelineQemu.ts", {
      vms: names.map((vm, i) => ({ vm, streamPath: files.streams[i]!.path, sourceSocket: sock(vm, "src"), sinkSocket: sock(vm, "dst") })),
    }, qemuDone);
    children.push(qemu);
    const destination = forkChild("destination side", "bench/pipelineDestination.ts", {
      natsUrl: server.url, migrationId, tenant: TENANT, host: TARGET_HOST, sourceHost: SOURCE_HOST, progressTimeoutMs: 60_000,
      vms: names.map((vm) => ({ vm, sinkSocket: sock(vm, "dst") })),
    }, destinationDone, profiled("destination"));
    children.push(destination);
    const source = forkChild("source side", "bench/pipelineSource.ts", {
      natsUrl: server.url, migrationId, tenant: TENANT, host: SOURCE_HOST, targetHost: TARGET_HOST,
      vms: names.map((vm, i) => ({ vm, socketPath: sock(vm, "src"), ramBytes, ...(files.scans[i] ? { scanPath: files.scans[i] } : {}) })),
    }, sourceDone, profiled("source"));
    children.push(source);
    // The source side waits for the hash function itself before its scans: everything starts at once.
    // Only errors from the functions: the commit function retries on manifest.completed of a
    // migration no plan was recorded for (the benchmark has no control plane), a warning each time.
    functions = await spawnGangway("functions", ["up", "--nats", server.url, "--json"], /"url"/, { GANGWAY_LOG_LEVEL: process.env.GANGWAY_LOG_LEVEL ?? "error" });
    const failures = children.map((c) => c.done);
    await withTimeout(unlessFailed(Promise.all(children.map((c) => c.ready)), failures), 600_000, "setting up (and preparing) the run");
    if (files.scans.slice(0, n).some(Boolean)) log(`${mix} × ${n}: set up and prepared in ${((Date.now() - prepStart) / 1000).toFixed(1)} s`);

    const procs = [
      { name: "source agent", pid: source.pid, side: "source" as const },
      { name: "functions", pid: functions.child.pid!, side: "source" as const },
      { name: "nats-server", pid: server.pid, side: "source" as const },
      { name: "destination agent", pid: destination.pid, side: "destination" as const },
      { name: "synthetic QEMU", pid: qemu.pid, side: "qemu" as const },
    ];
    const meter = startMeter(procs);
    const t0 = performance.now();
    const at = <T,>(p: Promise<T>) => p.then((v) => ({ v, s: (performance.now() - t0) / 1000 }));
    destination.go();
    source.go();
    qemu.go();
    const budgetMs = 120_000 + (streamBytes / 2e6) * 1000;
    const [src, dst, chk] = await withTimeout(Promise.all([at(source.done), at(destination.done), at(qemu.done)]), budgetMs, `the ${mix} × ${n} migration`).catch(async (err: unknown) => {
      // A failed check closes the sink's socket, so the destination side may fail first
      // ("QEMU closed the connection"): the check's own report is the one to give.
      const check = await Promise.race([qemu.done.then(() => undefined, (e: unknown) => e), new Promise((r) => setTimeout(r, 3000))]);
      throw isPipelineCheckError(check) ? check : err;
    });
    const figures = meter.stop();

    const gb = streamBytes / 1e9;
    const side = (name: "source" | "destination", wall: number): SideFigures => {
      const mine = procs.filter((p) => p.side === name).map((p) => figures.get(p.name)!);
      const cpu = mine.reduce((a, x) => a + x.cpuSeconds, 0);
      return { mb_per_s: streamBytes / 1e6 / wall, cpu_s_per_gb: cpu / gb, peak_rss_mb: mine.reduce((a, x) => a + x.peakRssBytes, 0) / 1e6, cpu_s: cpu, wall_s: wall };
    };
    const row = (p: (typeof procs)[number], x: ProcessFigures): ProcessRow => ({ side: p.side, cpu_s: x.cpuSeconds, cpu_s_per_gb: x.cpuSeconds / gb, peak_rss_mb: x.peakRssBytes / 1e6 });
    const sum = (k: "pages" | "memory_constant" | "pages_deduplicated" | "pages_sent" | "packed_bytes" | "native_bytes") => src.v.vms.reduce((a, v) => a + v[k], 0);
    if (sum("native_bytes") !== streamBytes) throw new Error(`the source proxies got ${sum("native_bytes")} bytes of stream, the synthetic QEMUs sent ${streamBytes}`);
    const run: PipelineRun = {
      mix, vms: n,
      source: side("source", src.s),
      destination: side("destination", dst.s),
      stream_mb: streamBytes / 1e6,
      pages_checked: chk.v.vms.reduce((a, v) => a + v.pagesChecked, 0),
      pages_expected: chk.v.vms.reduce((a, v) => a + v.pagesExpected, 0),
      pages_zero: sum("memory_constant"), pages_deduplicated: sum("pages_deduplicated"), pages_sent: sum("pages_sent"), packed_mb: sum("packed_bytes") / 1e6,
      packs_fetched: dst.v.packsFetched,
      ...(src.v.prep ? { prep_s: src.v.prep.ms / 1000, prep_pages: src.v.prep.pagesPreseeded } : {}),
      processes: Object.fromEntries(procs.map((p) => [p.name, row(p, figures.get(p.name)!)])),
      nats_cpu_s: figures.get("nats-server")!.cpuSeconds,
      functions_cpu_s: figures.get("functions")!.cpuSeconds,
    };
    if (run.pages_checked !== run.pages_expected || run.pages_checked !== sum("pages")) {
      throw new Error(`${mix} × ${n}: ${run.pages_checked} pages checked, ${run.pages_expected} in the source streams, ${sum("pages")} through the source pipeline`);
    }
    log(`${mix} × ${n}: ${run.stream_mb.toFixed(0)} MB of stream; source ${run.source.mb_per_s.toFixed(1)} MB/s ${run.source.cpu_s_per_gb.toFixed(2)} CPU-s/GB; destination ${run.destination.mb_per_s.toFixed(1)} MB/s ${run.destination.cpu_s_per_gb.toFixed(2)} CPU-s/GB; ${run.pages_checked} pages checked`);
    return run;
  } finally {
    await Promise.allSettled(children.map((c) => c.stop()));
    await functions?.stop().catch(() => undefined);
    await server?.stop().catch(() => undefined);
    await rm(runDir, { recursive: true, force: true });
  }
}

export async function runPipelineBench(o: PipelineBenchOptions = {}): Promise<PipelineReport> {
  const mixes = o.mixes ?? [...MIXES];
  const gangs = o.vms ?? [1, 4];
  const sizeMiB = o.sizeMiB ?? (o.quick ? 16 : 256);
  const ramBytes = sizeMiB * 1024 * 1024;
  const base = o.workDir ?? (existsSync("/dev/shm") ? "/dev/shm" : tmpdir());
  const log = o.log ?? (() => undefined);
  const report: PipelineReport = {
    type: "pipeline", mixes: [], date: new Date().toISOString(), machine: { cpus: cpus().length, load_before: loadavg() }, size_mib_per_vm: sizeMiB, attribution: ATTRIBUTION,
  };
  for (const mix of mixes) {
    const dir = await mkdtemp(join(base, "gangway-pipeline-"));
    try {
      const t = Date.now();
      const files = await generate(mix, Math.max(...gangs), ramBytes, dir);
      log(`${mix}: streams of ${Math.max(...gangs)} VM(s) generated in ${((Date.now() - t) / 1000).toFixed(1)} s`);
      for (const n of gangs) {
        const run = await runOnce(mix, n, files, ramBytes, dir, o);
        report.mixes.push(run);
        o.onRun?.(run);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  return report;
}
