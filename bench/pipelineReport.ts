/** The pipeline benchmark's figures (its JSON shape) and their table for people. */

/** One side's figures over the measured migration. */
export interface SideFigures {
  /** MB (10^6 bytes) of the source QEMU's stream per second of wall time, go → this side done. */
  mb_per_s: number;
  /** CPU-seconds of this side's processes per GB (10^9 bytes) of QEMU stream. */
  cpu_s_per_gb: number;
  /** Sum of this side's processes' peak resident sets during the migration, MB. */
  peak_rss_mb: number;
  cpu_s: number;
  wall_s: number;
}

export interface ProcessRow {
  /** "source" or "destination": the side its CPU counts for; "qemu": not counted (QEMU's part). */
  side: "source" | "destination" | "qemu";
  cpu_s: number;
  cpu_s_per_gb: number;
  peak_rss_mb: number;
}

export interface PipelineRun {
  mix: "present" | "new" | "w2";
  vms: number;
  source: SideFigures;
  destination: SideFigures;
  /** Bytes of the source QEMUs' streams, all VMs, MB. */
  stream_mb: number;
  /** Pages the sink checked against the source stream (every page of every VM), and how many there were. */
  pages_checked: number;
  pages_expected: number;
  /** The source pipeline's counters, summed over the VMs. */
  pages_zero: number;
  pages_deduplicated: number;
  pages_sent: number;
  packed_mb: number;
  /** The destination's pack fetches. */
  packs_fetched: number;
  /** The preparation (scans) before the migration, not measured: seconds, pages preseeded. */
  prep_s?: number;
  prep_pages?: number;
  /** Per process: the nats-server and the functions (hash) count for the source side. */
  processes: Record<string, ProcessRow>;
  /** CPU-seconds of nats-server alone and of the functions process alone (both included in source). */
  nats_cpu_s: number;
  functions_cpu_s: number;
}

export interface PipelineReport {
  type: "pipeline";
  mixes: PipelineRun[];
  date: string;
  machine: { cpus: number; load_before: number[] };
  size_mib_per_vm: number;
  attribution: string;
}

export const ATTRIBUTION = "source = source agent + functions process (hash) + nats-server; destination = destination agent; the synthetic QEMUs are not counted";

const f = (n: number, d = 1) => n.toFixed(d);

export function formatPipelineReport(r: PipelineReport): string {
  const head = ["mix", "VMs", "stream MB", "src MB/s", "src CPU-s/GB", "src RSS MB", "dst MB/s", "dst CPU-s/GB", "dst RSS MB", "pages checked"];
  const rows = r.mixes.map((m) => [
    m.mix, String(m.vms), f(m.stream_mb), f(m.source.mb_per_s), f(m.source.cpu_s_per_gb, 2), f(m.source.peak_rss_mb, 0),
    f(m.destination.mb_per_s), f(m.destination.cpu_s_per_gb, 2), f(m.destination.peak_rss_mb, 0), `${m.pages_checked}/${m.pages_expected}`,
  ]);
  const procNames = [...new Set(r.mixes.flatMap((m) => Object.keys(m.processes)))];
  const procHead = ["mix", "VMs", ...procNames.map((n) => `${n} CPU-s/GB`), "zero", "dedup", "sent", "packs fetched", "prep s"];
  const procRows = r.mixes.map((m) => [
    m.mix, String(m.vms), ...procNames.map((n) => (m.processes[n] ? f(m.processes[n]!.cpu_s_per_gb, 2) : "-")),
    String(m.pages_zero), String(m.pages_deduplicated), String(m.pages_sent), String(m.packs_fetched), m.prep_s === undefined ? "-" : f(m.prep_s),
  ]);
  return [
    `Pipeline benchmark (no QEMU), ${r.date}: ${r.size_mib_per_vm} MiB of guest RAM per VM, ${r.machine.cpus} CPUs, load before ${r.machine.load_before.map((x) => f(x, 2)).join(" ")}`,
    table(head, rows),
    "",
    `Per process (${r.attribution}):`,
    table(procHead, procRows),
  ].join("\n");
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join("  ");
  return [line(head), ...rows.map(line)].join("\n");
}
