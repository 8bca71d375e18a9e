/**
 * The benchmark: for each workload, native QEMU (plain pre-copy, multifd+zstd) and gangway
 * over the same shaped link, several repetitions interleaved, min and median of each
 * figure, gangway/native ratios and the issue's targets. `gangway bench` prints it.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, totalmem } from "node:os";
import { execFileSync } from "node:child_process";
import { runGangway, type GangwayResult } from "./gangway.ts";
import { runNative, type NativeMode, type NativeResult } from "./native.ts";

const NATIVE_MODES: readonly NativeMode[] = ["plain", "multifd-zstd", "postcopy"];
import { unavailable, workload, type Workload, type WorkloadId } from "./workloads.ts";

export interface BenchOptions {
  quick: boolean;
  reps: number;
  linkMbps: number;
  workloads: WorkloadId[];
  log?: (s: string) => void;
  /** Profile gangway's processes (node --cpu-prof) into this directory. */
  cpuProfileDir?: string;
}

export interface Stat {
  min: number;
  median: number;
  n: number;
}

export interface ConfigSummary {
  runs: number;
  completed: number;
  verified: number;
  time_ms?: Stat;
  bytes_on_link?: Stat;
  /** The worst VM's downtime in each run. */
  downtime_max_ms?: Stat;
}

export interface GangwaySummary extends ConfigSummary {
  /** Migration phase only. */
  migration_bytes_on_link?: Stat;
  prep_bytes_on_link?: Stat;
  prep_time_ms?: Stat;
  cpu_seconds?: Stat;
  cpu_seconds_migration?: Stat;
  peak_rss_bytes?: Stat;
}

export interface Target {
  what: string;
  limit: number;
  value?: number;
  met?: boolean;
}

export interface WorkloadReport {
  id: WorkloadId;
  title: string;
  skipped?: string;
  native: Record<NativeMode, ConfigSummary>;
  gangway?: GangwaySummary;
  /** gangway/native of medians: bytes use gangway's total (preparation + migration), time its migration phase. */
  ratios?: Record<NativeMode, { bytes?: number; migration_bytes?: number; time?: number; downtime_max?: number }>;
  targets: Target[];
  raw: { native: Record<NativeMode, NativeResult[]>; gangway: (GangwayResult | { error: string })[]; errors: string[]; load: { run: string; loadavg1_before: number; loadavg1_after: number }[] };
}

export interface BenchReport {
  type: "bench";
  startedAt: string;
  machine: { cpus: number; cpu_model: string; memory_gib: number; accel: "tcg"; qemu: string; nats_server: string; node: string };
  link: { mbps: number; bytes_per_second: number };
  quick: boolean;
  reps: number;
  workloads: WorkloadReport[];
}

export function stat(xs: number[]): Stat | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { min: s[0]!, median, n: s.length };
}

const tryRun = (cmd: string, args: string[]) => {
  try {
    return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "ignore"] }).toString().split("\n")[0]!.trim();
  } catch {
    return "unknown";
  }
};

function machine(): BenchReport["machine"] {
  return {
    cpus: cpus().length,
    cpu_model: cpus()[0]?.model ?? "unknown",
    memory_gib: Math.round(totalmem() / 1024 ** 3),
    accel: "tcg",
    qemu: tryRun("qemu-system-x86_64", ["--version"]),
    nats_server: tryRun("nats-server", ["--version"]),
    node: process.version,
  };
}

function summarizeNative(rs: NativeResult[]): ConfigSummary {
  const ok = rs.filter((r) => r.completed);
  return {
    runs: rs.length,
    completed: ok.length,
    verified: ok.filter((r) => r.vms.every((v) => v.verified)).length,
    ...opt("time_ms", stat(ok.map((r) => r.time_ms))),
    ...opt("bytes_on_link", stat(ok.map((r) => r.bytes_on_link))),
    ...opt("downtime_max_ms", stat(ok.map((r) => Math.max(...r.vms.map((v) => v.downtime_ms ?? 0))))),
  };
}

function summarizeGangway(rs: GangwayResult[]): GangwaySummary {
  const ok = rs.filter((r) => r.completed);
  return {
    runs: rs.length,
    completed: ok.length,
    verified: ok.filter((r) => r.vms.length > 0 && r.vms.every((v) => v.verified)).length,
    ...opt("time_ms", stat(ok.map((r) => r.time_ms))),
    ...opt("bytes_on_link", stat(ok.map((r) => r.total_bytes_on_link))),
    ...opt("downtime_max_ms", stat(ok.map((r) => Math.max(...r.vms.map((v) => v.downtime_ms ?? 0))))),
    ...opt("migration_bytes_on_link", stat(ok.map((r) => r.bytes_on_link))),
    ...opt("prep_bytes_on_link", stat(ok.map((r) => r.prep_bytes_on_link))),
    ...opt("prep_time_ms", stat(ok.map((r) => r.prep_time_ms))),
    ...opt("cpu_seconds", stat(rs.map((r) => r.cpu_seconds))),
    ...opt("cpu_seconds_migration", stat(rs.map((r) => r.cpu_seconds_migration))),
    ...opt("peak_rss_bytes", stat(rs.map((r) => r.peak_rss_bytes))),
  };
}

const opt = <K extends string, V>(k: K, v: V | undefined) => (v === undefined ? {} : ({ [k]: v } as Record<K, V>));
const ratio = (a?: Stat, b?: Stat) => (a && b && b.median > 0 ? Math.round((a.median / b.median) * 1000) / 1000 : undefined);

function targets(id: WorkloadId, native: Record<NativeMode, ConfigSummary>, g: GangwaySummary | undefined): Target[] {
  const t: Target[] = [];
  const mk = (what: string, limit: number, value: number | undefined): Target => ({ what, limit, ...(value !== undefined ? { value: Math.round(value * 1000) / 1000, met: value <= limit } : {}) });
  const fasterNative = [native.plain.time_ms, native["multifd-zstd"].time_ms].filter((s): s is Stat => !!s).sort((a, b) => a.median - b.median)[0];
  if (id === "W1" || id === "W2") {
    t.push(mk("link bytes ≤ 0.35× native plain", 0.35, ratio(g?.bytes_on_link, native.plain.bytes_on_link)));
    t.push(mk("link bytes ≤ 0.6× native multifd+zstd", 0.6, ratio(g?.bytes_on_link, native["multifd-zstd"].bytes_on_link)));
    t.push(mk("gang time ≤ 0.6× the faster native", 0.6, ratio(g?.time_ms, fasterNative)));
  }
  if (id === "W3") t.push(mk("time ≤ 1.1× the faster native", 1.1, ratio(g?.time_ms, fasterNative)));
  const bestDowntime = [native.plain.downtime_max_ms, native["multifd-zstd"].downtime_max_ms].filter((s): s is Stat => !!s).sort((a, b) => a.median - b.median)[0];
  if (id !== "W4") t.push(mk("worst VM downtime ≤ the better native's (ratio ≤ 1)", 1, ratio(g?.downtime_max_ms, bestDowntime)));
  if (id === "W4") {
    t.push(mk("gangway completes (post-copy): runs not completed", 0, g ? g.runs - g.completed : undefined));
    t.push(mk("time ≤ native post-copy's", 1, ratio(g?.time_ms, native.postcopy?.time_ms)));
    t.push(mk("worst VM downtime ≤ native post-copy's", 1, ratio(g?.downtime_max_ms, native.postcopy?.downtime_max_ms)));
  }
  return t;
}

export async function runBench(o: BenchOptions): Promise<BenchReport> {
  const log = o.log ?? (() => undefined);
  const bytesPerSecond = (o.linkMbps * 1e6) / 8;
  const report: BenchReport = {
    type: "bench",
    startedAt: new Date().toISOString(),
    machine: machine(),
    link: { mbps: o.linkMbps, bytes_per_second: bytesPerSecond },
    quick: o.quick,
    reps: o.reps,
    workloads: [],
  };
  const work = await mkdtemp("/tmp/gwb-");
  try {
    for (const id of o.workloads) {
      const empty = (): Record<NativeMode, NativeResult[]> => ({ plain: [], "multifd-zstd": [], postcopy: [] });
      const raw: WorkloadReport["raw"] = { native: empty(), gangway: [], errors: [], load: [] };
      // Other work on the machine skews every figure: record the load around each run.
      const loadOf = async <T>(run: string, f: () => Promise<T>): Promise<T> => {
        const before = loadavg()[0]!;
        try {
          return await f();
        } finally {
          raw.load.push({ run, loadavg1_before: Math.round(before * 100) / 100, loadavg1_after: Math.round(loadavg()[0]! * 100) / 100 });
        }
      };
      const why = unavailable(id);
      if (why) {
        log(`${id}: skipped: ${why}`);
        report.workloads.push({ id, title: id, skipped: why, native: { plain: summarizeNative([]), "multifd-zstd": summarizeNative([]), postcopy: summarizeNative([]) }, targets: [], raw });
        continue;
      }
      const w: Workload = await workload(id, { quick: o.quick, workDir: work });
      log(`${id}: ${w.title}`);
      for (let rep = 1; rep <= o.reps; rep++) {
        for (const mode of w.nativeModes ?? (["plain", "multifd-zstd"] as const)) {
          try {
            const r = await loadOf(`native ${mode} #${rep}`, () => runNative({ workload: w, mode, bytesPerSecond, baseDir: `${work}/n`, log: (s) => log(`${id} #${rep} native ${s}`) }));
            raw.native[mode].push(r);
            log(`${id} #${rep} native ${mode}: ${r.completed ? "completed" : r.reason} in ${(r.time_ms / 1000).toFixed(2)} s, ${(r.bytes_on_link / 1e6).toFixed(1)} MB on the link, downtime ${r.vms.map((v) => v.downtime_ms ?? "-").join("/")} ms`);
          } catch (err) {
            raw.errors.push(`native ${mode} #${rep}: ${(err as Error).message}`);
            log(`${id} #${rep} native ${mode} failed: ${(err as Error).message}`);
          }
        }
        const gw = `${work}/g${rep}${id}`;
        try {
          const r = await loadOf(`gangway #${rep}`, () => runGangway({ workload: w, bytesPerSecond, workDir: gw, ...(o.cpuProfileDir ? { cpuProfileDir: `${o.cpuProfileDir}/${id}-${rep}` } : {}), log: (s) => log(`${id} #${rep} ${s}`) }));
          raw.gangway.push(r);
          log(`${id} #${rep} gangway: ${r.completed ? "completed" : r.reason} in ${(r.time_ms / 1000).toFixed(2)} s, ${(r.bytes_on_link / 1e6).toFixed(1)} MB + ${(r.prep_bytes_on_link / 1e6).toFixed(1)} MB preparation on the link, downtime ${r.vms.map((v) => v.downtime_ms ?? "-").join("/")} ms`);
        } catch (err) {
          raw.gangway.push({ error: (err as Error).message });
          raw.errors.push(`gangway #${rep}: ${(err as Error).message}`);
          log(`${id} #${rep} gangway failed: ${(err as Error).message}`);
        } finally {
          await rm(gw, { recursive: true, force: true });
        }
      }
      report.workloads.push(summarizeWorkload(id, w.title, raw));
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return report;
}

/** A workload's figures from its runs (also for runs gathered from several reports, as the link sweep does). */
export function summarizeWorkload(id: WorkloadId, title: string, raw: WorkloadReport["raw"]): WorkloadReport {
  const native = { plain: summarizeNative(raw.native.plain), "multifd-zstd": summarizeNative(raw.native["multifd-zstd"]), postcopy: summarizeNative(raw.native.postcopy) };
  const g = summarizeGangway(raw.gangway.filter((r): r is GangwayResult => !("error" in r)));
  const ratios = Object.fromEntries(
    NATIVE_MODES.map((m) => [
      m,
      {
        ...opt("bytes", ratio(g.bytes_on_link, native[m].bytes_on_link)),
        ...opt("migration_bytes", ratio(g.migration_bytes_on_link, native[m].bytes_on_link)),
        ...opt("time", ratio(g.time_ms, native[m].time_ms)),
        ...opt("downtime_max", ratio(g.downtime_max_ms, native[m].downtime_max_ms)),
      },
    ]),
  ) as WorkloadReport["ratios"];
  return { id, title, native, gangway: g, ...(ratios ? { ratios } : {}), targets: targets(id, native, g), raw };
}

// ---- the table -------------------------------------------------------------------------

const mb = (b?: number) => (b === undefined ? "-" : (b / 1e6).toFixed(1));
const sec = (ms?: number) => (ms === undefined ? "-" : (ms / 1000).toFixed(2));
const ms = (x?: number) => (x === undefined ? "-" : String(Math.round(x)));
const pair = (s: Stat | undefined, f: (x?: number) => string) => (s ? `${f(s.min)} / ${f(s.median)}` : "-");
const r3 = (x?: number) => (x === undefined ? "-" : `${x.toFixed(2)}×`);

/** A Markdown table (also readable in a terminal). */
export function formatReport(r: BenchReport): string {
  const out: string[] = [];
  out.push(`Machine: ${r.machine.cpus} cores (${r.machine.cpu_model}), ${r.machine.memory_gib} GiB, QEMU under TCG (${r.machine.qemu}), ${r.machine.nats_server}, Node ${r.machine.node}.`);
  out.push(`Link: ${r.link.mbps} Mbit/s each way (${(r.link.bytes_per_second / 1e6).toFixed(1)} MB/s), shared by the gang; bytes counted at the relay, both directions. ${r.reps} repetition(s)${r.quick ? ", quick mode (128 MiB VMs, W4 256 MiB)" : ""}. Figures are min / median.`);
  out.push("");
  out.push("| workload | configuration | done | gang time s | link MB | worst downtime ms | gangway CPU s (migration) | gangway peak RSS MB |");
  out.push("|---|---|---|---|---|---|---|---|");
  for (const w of r.workloads) {
    if (w.skipped) {
      out.push(`| ${w.id} | skipped: ${w.skipped} | | | | | | |`);
      continue;
    }
    // Runs stopped by the time limit: what they had put on the link by then.
    const sent = (xs: number[]) => (xs.length ? `(${mb(Math.min(...xs))}–${mb(Math.max(...xs))} sent, unfinished)` : "-");
    for (const m of NATIVE_MODES) {
      const s = w.native[m];
      if (!s || s.runs === 0) continue;
      const bytes = s.bytes_on_link ? pair(s.bytes_on_link, mb) : sent(w.raw.native[m].filter((x) => !x.completed).map((x) => x.bytes_on_link));
      out.push(`| ${w.id} | native ${m === "plain" ? "plain pre-copy" : m === "postcopy" ? "post-copy after one pass" : "multifd+zstd"} | ${s.completed}/${s.runs} ok, ${s.verified} verified | ${pair(s.time_ms, sec)} | ${bytes} | ${pair(s.downtime_max_ms, ms)} | | |`);
    }
    const g = w.gangway;
    if (g) {
      const unfinished = w.raw.gangway.filter((x): x is GangwayResult => !("error" in x) && !x.completed);
      const migBytes = g.migration_bytes_on_link ? pair(g.migration_bytes_on_link, mb) : sent(unfinished.map((x) => x.bytes_on_link));
      out.push(`| ${w.id} | gangway (migration phase) | ${g.completed}/${g.runs} ok, ${g.verified} verified | ${pair(g.time_ms, sec)} | ${migBytes} | ${pair(g.downtime_max_ms, ms)} | ${pair(g.cpu_seconds, (x) => (x ?? 0).toFixed(1))} (${pair(g.cpu_seconds_migration, (x) => (x ?? 0).toFixed(1))}) | ${pair(g.peak_rss_bytes, mb)} |`);
      const prepTime = g.prep_time_ms ?? stat(unfinished.map((x) => x.prep_time_ms));
      const prepBytes = g.prep_bytes_on_link ?? stat(unfinished.map((x) => x.prep_bytes_on_link));
      out.push(`| ${w.id} | gangway preparation phase | | ${pair(prepTime, sec)} | ${pair(prepBytes, mb)} | | | |`);
      out.push(`| ${w.id} | **gangway, both phases** | | | **${pair(g.bytes_on_link, mb)}** | | | |`);
    }
  }
  out.push("");
  out.push("gangway / native (medians; bytes = both phases, time = migration phase):");
  out.push("");
  out.push("| workload | vs | bytes | migration-phase bytes | time | worst downtime |");
  out.push("|---|---|---|---|---|---|");
  for (const w of r.workloads) {
    if (!w.ratios) continue;
    for (const m of NATIVE_MODES) {
      const x = w.ratios[m];
      if (!x || !w.native[m] || w.native[m].runs === 0) continue;
      out.push(`| ${w.id} | native ${m} | ${r3(x.bytes)} | ${r3(x.migration_bytes)} | ${r3(x.time)} | ${r3(x.downtime_max)} |`);
    }
  }
  out.push("");
  out.push("Targets (issue 6):");
  out.push("");
  for (const w of r.workloads) {
    for (const t of w.targets) out.push(`- ${w.id}: ${t.what}: ${t.value === undefined ? "not measured" : `${t.value.toFixed(2)} → ${t.met ? "met" : "MISSED"}`}`);
    for (const e of w.raw.errors) out.push(`- ${w.id}: error: ${e}`);
    if (w.raw.load.length) out.push(`- ${w.id}: machine load (1-min average) before the runs: ${Math.min(...w.raw.load.map((l) => l.loadavg1_before)).toFixed(1)}–${Math.max(...w.raw.load.map((l) => l.loadavg1_before)).toFixed(1)} on ${r.machine.cpus} cores`);
    const notDone = NATIVE_MODES.flatMap((m) => w.raw.native[m] ?? []).filter((n) => !n.completed);
    for (const n of notDone) out.push(`- ${w.id}: native ${n.mode} did not finish: ${n.reason}`);
    for (const g of w.raw.gangway) if (!("error" in g) && !g.completed) out.push(`- ${w.id}: gangway did not finish: ${g.reason}`);
  }
  return out.join("\n");
}
