/**
 * Shows a gang migration's progress: a table redrawn in a terminal, a line per update when
 * not a terminal, one JSON object per update with --json; and the final summary table.
 */
import type { GangSummary, GangView } from "./gangMigration.ts";

const MB = 1e6;
const fmtBytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / MB).toFixed(1)} MB`);
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

function vmLine(v: GangView["vms"] extends Map<string, infer V> ? V : never): string {
  const s = v.stats;
  const eta = s.time_remaining !== undefined ? `${(s.time_remaining / 1000).toFixed(1)}s` : "-";
  const rate = s.memory_bps ? `${(s.memory_bps / MB).toFixed(0)} MB/s` : "-";
  return [
    v.vm.padEnd(10),
    (v.outcome ?? v.phase).padEnd(10),
    ...(v.mode === "PostCopy" ? ["post-copy"] : []),
    `${(s.percent ?? 0).toFixed(0).padStart(3)}%`,
    `round ${s.memory_iteration ?? 0}`,
    `pages ${((s.memory_normal ?? 0) + (s.memory_constant ?? 0)).toLocaleString()}`,
    `zero ${(s.memory_constant ?? 0).toLocaleString()}`,
    `dedup ${(s.pages_deduplicated ?? 0).toLocaleString()}`,
    `sent ${(s.pages_sent ?? 0).toLocaleString()}`,
    `link ${fmtBytes(s.bytes_on_link ?? 0)}`,
    rate,
    `ETA ${eta}`,
    ...(v.waiting ? [v.waiting] : []),
  ].join("  ");
}

/** The gang as a whole: totals, dedup so far, rate, and the slowest VM's ETA. */
function gangLine(view: GangView, now: number): string {
  const vms = [...view.vms.values()].map((v) => v.stats);
  const sum = (f: (s: (typeof vms)[number]) => number | undefined) => vms.reduce((n, s) => n + (f(s) ?? 0), 0);
  const pages = sum((s) => (s.memory_normal ?? 0) + (s.memory_constant ?? 0));
  const nonZero = sum((s) => s.memory_normal);
  const sent = sum((s) => s.pages_sent);
  const link = sum((s) => s.bytes_on_link);
  const elapsed = (now - view.startedAt) / 1000;
  const eta = Math.max(0, ...vms.map((s) => s.time_remaining ?? 0));
  const pct = vms.length ? Math.min(...vms.map((s) => s.percent ?? 0)) : 0;
  return [
    "gang".padEnd(10),
    "".padEnd(10),
    `${pct.toFixed(0).padStart(3)}%`,
    `pages ${pages.toLocaleString()}`,
    `sent ${sent.toLocaleString()} of ${nonZero.toLocaleString()} non-zero (${nonZero ? ((100 * sent) / nonZero).toFixed(0) : 0}%)`,
    `link ${fmtBytes(link)}`,
    elapsed > 0 ? `${(link / elapsed / MB).toFixed(0)} MB/s` : "-",
    `ETA ${(eta / 1000).toFixed(1)}s`,
  ].join("  ");
}

export interface ProgressPrinter {
  update(view: GangView): void;
  done(): void;
}

export function progressPrinter(mode: { json: boolean; tty: boolean; out?: NodeJS.WritableStream }): ProgressPrinter {
  const out = mode.out ?? process.stderr;
  let lastAt = 0;
  let drawn = 0;
  return {
    update(view) {
      const now = Date.now();
      if (now - lastAt < (mode.tty ? 200 : 1000)) return;
      lastAt = now;
      if (mode.json) {
        process.stdout.write(JSON.stringify({ type: "progress", migrationId: view.migrationId, elapsed_ms: now - view.startedAt, vms: [...view.vms.values()].map((v) => ({ vm: v.vm, phase: v.outcome ?? v.phase, ...(v.mode ? { mode: v.mode } : {}), ...v.stats, ...(v.waiting ? { waiting: v.waiting } : {}) })) }) + "\n");
        return;
      }
      const lines = [`migration ${view.migrationId}: ${view.sourceHost} → ${view.targetHost ?? "?"}  ${((now - view.startedAt) / 1000).toFixed(1)}s`, ...[...view.vms.values()].map(vmLine), gangLine(view, now)];
      if (mode.tty) {
        if (drawn) out.write(`\x1b[${drawn}A`);
        for (const l of lines) out.write(`\x1b[2K${l}\n`);
        drawn = lines.length;
      } else out.write(lines.join("\n") + "\n");
    },
    done() {
      drawn = 0;
    },
  };
}

export function summaryTable(s: GangSummary): string {
  const rows = s.vms.map((v) =>
    [v.vm.padEnd(10), v.outcome.padEnd(10), v.pages.toLocaleString().padStart(9), v.memory_constant.toLocaleString().padStart(9), v.pages_deduplicated.toLocaleString().padStart(9), v.pages_sent.toLocaleString().padStart(9), fmtBytes(v.native_bytes).padStart(10), fmtBytes(v.bytes_on_link).padStart(10), String(v.rounds).padStart(6), (v.downtime_ms !== undefined ? `${v.downtime_ms} ms` : "-").padStart(9), (v.proof ? String(v.proof.pages_repaired) : "-").padStart(8)].join(" "),
  );
  const head = ["vm".padEnd(10), "outcome".padEnd(10), "pages".padStart(9), "zero".padStart(9), "dedup".padStart(9), "sent".padStart(9), "native".padStart(10), "gangway".padStart(10), "rounds".padStart(6), "downtime".padStart(9), "repaired".padStart(8)].join(" ");
  return [
    `migration ${s.migrationId}: ${s.outcome}${s.reason ? ` (${s.reason})` : ""}, ${s.sourceHost} → ${s.targetHost ?? "?"}, ${(s.time_elapsed_ms / 1000).toFixed(2)} s`,
    head,
    ...rows,
    `gang: QEMU's own stream ${fmtBytes(s.native_bytes)}; gangway moved ${fmtBytes(s.bytes_on_link)} (${pct(s.link_ratio)} of native)`,
    `      dedup left ${pct(s.dedup_ratio)} of non-zero pages to send (${s.pages_deduplicated.toLocaleString()} deduplicated); LZ4 packed them to ${pct(s.compression_ratio)}`,
    proofLine(s),
    ...downtimeLines(s),
  ].join("\n");
}

/** Where each pre-copy downtime went (source stopped → destination running). */
function downtimeLines(s: GangSummary): string[] {
  return s.vms.flatMap((v) => {
    const p = v.downtime_phases;
    if (!p) return [];
    return [`downtime ${v.vm}: source sent ${p.source_sent_ms} ms, proved its RAM ${p.source_proved_ms} ms, destination ready ${p.destination_ready_ms} ms, commit ${p.commit_ms} ms, resume ${p.resume_ms} ms`];
  });
}

/** What the commit proved of the committed VMs: source RAM = what was sent = what the destination loaded. */
function proofLine(s: GangSummary): string {
  const committed = s.vms.filter((v) => v.outcome === "committed");
  const proved = committed.filter((v) => v.proof && v.proof.source_ram_digest === v.proof.sent_digest && v.proof.sent_digest === v.proof.destination_digest);
  const repaired = proved.reduce((n, v) => n + v.proof!.pages_repaired, 0);
  return `proof: ${proved.length} of ${committed.length} committed VMs hold the source's RAM (three equal digests); ${repaired} pages repaired from the source's RAM after its stream`;
}
