/**
 * How `gangway watch` shows migrations: progress bars redrawn in a terminal, one line per
 * update when not a terminal, one JSON object per line with --json.
 */
import { MigrationOutcome } from "./timeline.ts";
import { snapshotOf, type MigrationSnapshot, type MigrationWatch, type WatchedMigration } from "./watch.ts";

const MB = 1e6;
const fmtBytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / MB).toFixed(1)} MB`);

/** A bar of `width` cells for a percentage (0–100). */
export function bar(percent: number, width = 24): string {
  const full = Math.max(0, Math.min(width, Math.round((percent / 100) * width)));
  return `[${"#".repeat(full)}${"-".repeat(width - full)}]`;
}

/** The lines that show one migration: a heading, then a bar per VM. */
export function migrationLines(s: MigrationSnapshot): string[] {
  const head = `${s.migrationId}  ${s.sourceHost ?? "?"} → ${s.targetHost ?? "?"}  ${s.outcome}${s.failureReason ? ` (${s.failureReason})` : ""}  ${(s.time_elapsed / 1000).toFixed(1)}s${s.requestedBy ? `  by ${s.requestedBy}` : ""}${s.evacuationId ? `  evacuation ${s.evacuationId}` : ""}`;
  const vms = s.vms.map((v) => {
    const eta = v.time_remaining !== undefined ? `ETA ${(v.time_remaining / 1000).toFixed(1)}s` : "";
    const rate = v.memory_bps ? `${(v.memory_bps / MB).toFixed(0)} MB/s` : "";
    const state = v.outcome !== "pending" ? v.outcome : v.phase;
    return [
      `  ${v.vm.padEnd(10)}`, bar(v.percent), `${v.percent.toFixed(0).padStart(3)}%`, `round ${v.memory_iteration}`, state.padEnd(10),
      `dedup ${(v.pages_deduplicated ?? 0).toLocaleString()}`, `sent ${(v.pages_sent ?? 0).toLocaleString()}`, `link ${fmtBytes(v.bytes_on_link ?? 0)}`, rate, eta, v.reason ? `— ${v.reason}` : "",
    ].filter(Boolean).join("  ");
  });
  return [head, ...vms];
}

/** One line for one update (not a terminal): the gang's bar and each VM's percentage and round. */
export function updateLine(s: MigrationSnapshot): string {
  const vms = s.vms.map((v) => `${v.vm} ${v.outcome !== "pending" ? v.outcome : v.phase} ${v.percent.toFixed(0)}% r${v.memory_iteration}`).join(", ");
  return `${s.updated} ${s.migrationId} ${s.sourceHost ?? "?"}→${s.targetHost ?? "?"} ${s.outcome} ${s.percent.toFixed(0)}%: ${vms}${s.failureReason ? ` — ${s.failureReason}` : ""}`;
}

export interface WatchPrinter {
  /** The retained events are folded in: show what is in flight now. */
  caughtUp(watch: MigrationWatch): void;
  update(m: WatchedMigration, watch: MigrationWatch): void;
  /** Stopping: with --json, a summary line. */
  done(watch: MigrationWatch): void;
}

export function watchPrinter(mode: { json: boolean; tty: boolean; out?: NodeJS.WritableStream; now?: () => number }): WatchPrinter {
  const out = mode.out ?? process.stdout;
  const now = mode.now ?? Date.now;
  const write = (line: string) => out.write(line + "\n");
  let drawn = 0;
  let lastDraw = 0;
  let pending: ReturnType<typeof setTimeout> | undefined;
  const lastLine = new Map<string, number>();

  /** Terminal: redraw the block of migrations in flight (and those that ended in the last 30 s). */
  const draw = (watch: MigrationWatch) => {
    lastDraw = now();
    const shown = [...watch.migrations.values()].filter((m) => m.outcome === MigrationOutcome.inFlight || now() - (m.endedAt ?? 0) < 30_000).sort((a, b) => a.startedAt - b.startedAt);
    const lines = shown.length ? shown.flatMap((m) => migrationLines(snapshotOf(m, now()))) : ["no migration in flight"];
    if (drawn) out.write(`\x1b[${drawn}A`);
    for (const l of lines) out.write(`\x1b[2K${l}\n`);
    if (lines.length < drawn) for (let i = lines.length; i < drawn; i++) out.write("\x1b[2K\n");
    drawn = Math.max(lines.length, drawn);
  };

  return {
    caughtUp(watch) {
      const flying = watch.inFlight();
      if (mode.json) for (const m of flying) write(JSON.stringify({ type: "migration", ...snapshotOf(m, now()) }));
      else if (mode.tty) draw(watch);
      else if (flying.length === 0) write("no migration in flight");
      else for (const m of flying) write(updateLine(snapshotOf(m, now())));
    },
    update(m, watch) {
      if (mode.json) return write(JSON.stringify({ type: "migration", ...snapshotOf(m, now()) }));
      if (mode.tty) {
        // At most 5 redraws a second; the last update is always drawn.
        if (pending) return;
        const wait = Math.max(0, 200 - (now() - lastDraw));
        pending = setTimeout(() => {
          pending = undefined;
          draw(watch);
        }, wait);
        return;
      }
      // Lines: every change of outcome, else at most one a second per migration.
      const t = now();
      if (m.outcome === MigrationOutcome.inFlight && t - (lastLine.get(m.migrationId) ?? 0) < 1000) return;
      lastLine.set(m.migrationId, t);
      write(updateLine(snapshotOf(m, t)));
    },
    done(watch) {
      if (pending) {
        clearTimeout(pending);
        pending = undefined;
        if (mode.tty && !mode.json) draw(watch);
      }
      const flying = watch.inFlight();
      // JSON: the updates, then a summary line (what is still in flight as watching stops).
      if (mode.json) write(JSON.stringify({ type: "summary", in_flight: flying.length, migrations: flying.map((m) => m.migrationId) }));
    },
  };
}
