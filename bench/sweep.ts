/**
 * The link sweep (`gangway bench --link-mbps 100,1000,10000`): the same workloads over links
 * of several rates in one run, interleaved (each repetition runs every link before the next
 * one starts), so that where gangway wins, breaks even or loses is read off one machine state.
 * A link's figures are those of `gangway bench` at that rate; the summary puts the rates side
 * by side, with the rate native plain pre-copy really reached (the relay and TCG cap it).
 */
import { formatReport, runBench, summarizeWorkload, type BenchOptions, type BenchReport, type WorkloadReport } from "./run.ts";

export interface SweepReport {
  type: "bench-sweep";
  startedAt: string;
  reps: number;
  links: BenchReport[];
}

export async function runSweep(o: Omit<BenchOptions, "linkMbps"> & { links: number[] }): Promise<SweepReport> {
  const log = o.log ?? (() => undefined);
  const startedAt = new Date().toISOString();
  const byLink = new Map<number, BenchReport[]>(o.links.map((l) => [l, []]));
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const linkMbps of o.links) {
      const r = await runBench({ ...o, reps: 1, linkMbps, log: (s) => log(`${linkMbps} Mbit/s, repetition ${rep}/${o.reps}: ${s}`) });
      byLink.get(linkMbps)!.push(r);
    }
  }
  return { type: "bench-sweep", startedAt, reps: o.reps, links: [...byLink.values()].map(mergeRepetitions) };
}

/** One link's repetitions (one report each) as one report. */
export function mergeRepetitions(reports: BenchReport[]): BenchReport {
  const first = reports[0]!;
  const workloads = first.workloads.map((w, i): WorkloadReport => {
    if (w.skipped) return w;
    const raw: WorkloadReport["raw"] = { native: { plain: [], "multifd-zstd": [], postcopy: [] }, gangway: [], errors: [], load: [] };
    for (const r of reports) {
      const x = r.workloads[i]!.raw;
      for (const mode of Object.keys(raw.native) as (keyof typeof raw.native)[]) raw.native[mode].push(...x.native[mode]);
      raw.gangway.push(...x.gangway);
      raw.errors.push(...x.errors);
      raw.load.push(...x.load);
    }
    return summarizeWorkload(w.id, w.title, raw);
  });
  return { ...first, reps: reports.length, workloads };
}

const x2 = (v?: number) => (v === undefined ? "-" : `${v.toFixed(2)}×`);

/** Each link's table, then the rates side by side. */
export function formatSweep(r: SweepReport): string {
  const out: string[] = [];
  for (const l of r.links) out.push(`## ${l.link.mbps} Mbit/s`, "", formatReport(l), "");
  out.push("## Side by side (gangway / native, medians; time = migration phase, bytes = both phases)", "");
  out.push("| link | workload | native plain reached MB/s | time vs plain | time vs multifd+zstd | bytes vs plain | bytes vs multifd+zstd | worst downtime vs plain |");
  out.push("|---|---|---|---|---|---|---|---|");
  for (const l of r.links) {
    for (const w of l.workloads) {
      if (w.skipped || !w.ratios) continue;
      const p = w.native.plain;
      const reached = p.bytes_on_link && p.time_ms ? (p.bytes_on_link.median / (p.time_ms.median / 1000) / 1e6).toFixed(1) : "-";
      const vs = w.ratios;
      out.push(`| ${l.link.mbps} Mbit/s | ${w.id} | ${reached} | ${x2(vs.plain.time)} | ${x2(vs["multifd-zstd"].time)} | ${x2(vs.plain.bytes)} | ${x2(vs["multifd-zstd"].bytes)} | ${x2(vs.plain.downtime_max)} |`);
    }
  }
  return out.join("\n");
}
