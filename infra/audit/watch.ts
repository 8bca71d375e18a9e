/**
 * The live view of migrations: every gw.migration.*.> fact folded into one state per
 * migration (pure: `MigrationWatch.apply`), and a follower that catches up on the retained
 * events from a start time, reports what is in flight, then follows new events with an
 * ordered consumer until stopped. Percentages never run backwards (re-sent dirty pages show
 * as a higher round, not a lower bar).
 */
import { DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { JobStats } from "../../schemas/index.ts";
import { decodeMessage, type DecodedEvent } from "../events/binding.ts";
import { EVENTS_STREAM } from "../nats/resources.ts";
import { MigrationOutcome, VmOutcome } from "./timeline.ts";

export interface WatchedVm {
  vm: string;
  /** KubeVirt phase (Pending, Scheduled, Running, Succeeded, Failed). */
  phase: string;
  outcome: VmOutcome;
  reason?: string;
  /** Monotonic. */
  percent: number;
  round: number;
  switchover?: string;
  stats: JobStats;
}

export interface WatchedMigration {
  migrationId: string;
  sourceHost?: string;
  targetHost?: string;
  requestedBy?: string;
  requestReason?: string;
  evacuationId?: string;
  outcome: MigrationOutcome;
  /** Why it failed or was cancelled. */
  reason?: string;
  /** ms since the epoch: first event, last event, end. */
  startedAt: number;
  updatedAt: number;
  endedAt?: number;
  vms: Map<string, WatchedVm>;
}

/** A migration as printed with --json (one object per line). */
export interface MigrationSnapshot {
  migrationId: string;
  sourceHost?: string;
  targetHost?: string;
  requestedBy?: string;
  reason?: string;
  evacuationId?: string;
  outcome: MigrationOutcome;
  failureReason?: string;
  startTimestamp: string;
  updated: string;
  endTimestamp?: string;
  time_elapsed: number;
  /** The gang's percentage: memory processed over memory total, monotonic per VM. */
  percent: number;
  vms: {
    vm: string; phase: string; outcome: VmOutcome; reason?: string; percent: number; memory_iteration: number;
    memory_total?: number; memory_processed?: number; memory_constant?: number; pages_deduplicated?: number; pages_sent?: number;
    bytes_on_link?: number; data_processed?: number; memory_bps?: number; time_remaining?: number;
  }[];
}

export class MigrationWatch {
  readonly migrations = new Map<string, WatchedMigration>();

  /** Folds one event; returns the migration it changed (undefined for events it does not show). */
  apply(subject: string, event: DecodedEvent): WatchedMigration | undefined {
    if (event.mode !== "structured" || !subject.startsWith("gw.migration.")) return undefined;
    const id = subject.split(".")[2]!;
    const at = Date.parse(event.time);
    let m = this.migrations.get(id);
    if (!m) this.migrations.set(id, (m = { migrationId: id, outcome: MigrationOutcome.inFlight, startedAt: at, updatedAt: at, vms: new Map() }));
    m.updatedAt = Math.max(m.updatedAt, at);
    const d = event.data as Record<string, unknown> & { vm?: string; reason?: string };
    const vmOf = (vm: string): WatchedVm =>
      m.vms.get(vm) ?? m.vms.set(vm, { vm, phase: "Pending", outcome: VmOutcome.pending, percent: 0, round: 0, stats: { time_elapsed: 0, data_processed: 0 } }).get(vm)!;
    switch (event.type) {
      case "io.gangway.migration.requested.v1":
        m.startedAt = at;
        m.sourceHost = d.sourceHost as string;
        if (d.targetHost) m.targetHost = d.targetHost as string;
        m.requestedBy = d.requestedBy as string;
        if (d.reason) m.requestReason = d.reason;
        if (d.evacuationId) m.evacuationId = d.evacuationId as string;
        for (const vm of d.vms as string[]) vmOf(vm);
        break;
      case "io.gangway.migration.planned.v1":
        m.sourceHost = d.sourceHost as string;
        m.targetHost = d.targetHost as string;
        for (const p of d.vms as { vm: string }[]) {
          const v = vmOf(p.vm);
          if (v.phase === "Pending") v.phase = "Scheduled";
        }
        break;
      case "io.gangway.migration.started.v1":
        vmOf(d.vm!).phase = "Running";
        break;
      case "io.gangway.migration.progress.v1": {
        if (!d.vm) break;
        const v = vmOf(d.vm);
        const s = d.stats as JobStats;
        if (d.phase === "Succeeded") {
          v.phase = "Succeeded";
          v.percent = 100;
          break;
        }
        // Counters only grow: a late or replayed update never takes a bar backwards.
        const merged: JobStats = { ...v.stats };
        for (const [k, val] of Object.entries(s) as [keyof JobStats, number | undefined][]) {
          if (val === undefined) continue;
          const prev = merged[k];
          merged[k] = k === "time_remaining" || k === "memory_bps" || k === "memory_remaining" || k === "dedup_ratio" || k === "compression_ratio" || prev === undefined ? val : Math.max(prev, val);
        }
        v.stats = merged;
        v.percent = Math.max(v.percent, s.percent ?? 0);
        v.round = Math.max(v.round, s.memory_iteration ?? 0);
        if (v.phase === "Pending" || v.phase === "Scheduled") v.phase = "Running";
        break;
      }
      case "io.gangway.migration.switchover.v1": {
        const v = vmOf(d.vm!);
        v.switchover = d.mode as string;
        v.round = Math.max(v.round, d.round as number);
        break;
      }
      case "io.gangway.migration.committed.v1": {
        const v = vmOf(d.vm!);
        v.outcome = VmOutcome.committed;
        v.percent = Math.max(v.percent, 99);
        break;
      }
      case "io.gangway.migration.rolledback.v1": {
        const v = vmOf(d.vm!);
        v.outcome = VmOutcome.rolledback;
        v.phase = "Failed";
        if (d.reason) v.reason = d.reason;
        break;
      }
      case "io.gangway.migration.failed.v1":
        if (d.vm) {
          const v = vmOf(d.vm);
          v.phase = "Failed";
          if (d.reason) v.reason = d.reason;
          break;
        }
        m.outcome = MigrationOutcome.failed;
        m.endedAt = at;
        if (d.reason) m.reason = d.reason;
        break;
      case "io.gangway.migration.succeeded.v1":
        m.outcome = MigrationOutcome.succeeded;
        m.endedAt = at;
        break;
      case "io.gangway.migration.cancelled.v1":
        m.outcome = MigrationOutcome.cancelled;
        m.endedAt = at;
        if (d.reason) m.reason = d.reason;
        break;
      default:
        return undefined;
    }
    return m;
  }

  /** Migrations that have not ended, oldest first. */
  inFlight(): WatchedMigration[] {
    return [...this.migrations.values()].filter((m) => m.outcome === MigrationOutcome.inFlight).sort((a, b) => a.startedAt - b.startedAt);
  }
}

export function snapshotOf(m: WatchedMigration, now = Date.now()): MigrationSnapshot {
  const vms = [...m.vms.values()];
  const total = vms.reduce((n, v) => n + (v.stats.memory_total ?? 0), 0);
  const percent = total > 0 ? vms.reduce((n, v) => n + (v.percent / 100) * (v.stats.memory_total ?? 0), 0) / total * 100 : vms.length ? vms.reduce((n, v) => n + v.percent, 0) / vms.length : 0;
  const opt = <K extends keyof JobStats>(s: JobStats, k: K) => (s[k] !== undefined ? { [k]: s[k] } : {});
  return {
    migrationId: m.migrationId,
    ...(m.sourceHost ? { sourceHost: m.sourceHost } : {}),
    ...(m.targetHost ? { targetHost: m.targetHost } : {}),
    ...(m.requestedBy ? { requestedBy: m.requestedBy } : {}),
    ...(m.requestReason ? { reason: m.requestReason } : {}),
    ...(m.evacuationId ? { evacuationId: m.evacuationId } : {}),
    outcome: m.outcome,
    ...(m.reason ? { failureReason: m.reason } : {}),
    startTimestamp: new Date(m.startedAt).toISOString(),
    updated: new Date(m.updatedAt).toISOString(),
    ...(m.endedAt ? { endTimestamp: new Date(m.endedAt).toISOString() } : {}),
    time_elapsed: (m.endedAt ?? now) - m.startedAt,
    percent: Math.round(percent * 10) / 10,
    vms: vms.map((v) => ({
      vm: v.vm, phase: v.phase, outcome: v.outcome, ...(v.reason ? { reason: v.reason } : {}), percent: Math.round(v.percent * 10) / 10, memory_iteration: v.round,
      ...opt(v.stats, "memory_total"), ...opt(v.stats, "memory_processed"), ...opt(v.stats, "memory_constant"), ...opt(v.stats, "pages_deduplicated"), ...opt(v.stats, "pages_sent"),
      ...opt(v.stats, "bytes_on_link"), ...opt(v.stats, "data_processed"), ...opt(v.stats, "memory_bps"), ...opt(v.stats, "time_remaining"),
    })),
  };
}

export interface FollowOptions {
  /** Catch up from here. @default one hour ago */
  since?: Date;
  /** Stop once caught up (what is in flight now), instead of following. */
  once?: boolean;
  /** Stops following. */
  signal?: AbortSignal;
  /** Called once, when the retained events up to now are folded in. */
  onCaughtUp?: (watch: MigrationWatch) => void;
  /** Called for every event after catching up, with the migration it changed. */
  onUpdate?: (migration: WatchedMigration, watch: MigrationWatch) => void;
}

/** Follows gw.migration.*.> with an ordered consumer; resolves when stopped (or caught up, with `once`). */
export async function followMigrations(nc: NatsConnection, o: FollowOptions = {}): Promise<MigrationWatch> {
  const watch = new MigrationWatch();
  const since = o.since ?? new Date(Date.now() - 3600_000);
  // Caught up: at the stream's last message as of now (or nothing left pending), so a busy
  // stream that keeps growing does not keep --once from ending.
  const lastSeq = (await (await jetstreamManager(nc)).streams.info(EVENTS_STREAM)).state.last_seq;
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, { filter_subjects: "gw.migration.>", deliver_policy: DeliverPolicy.StartTime, opt_start_time: since.toISOString() });
  let caughtUp = false;
  const catchUp = () => {
    if (caughtUp) return;
    caughtUp = true;
    o.onCaughtUp?.(watch);
  };
  if ((await consumer.info(true)).num_pending === 0) catchUp();
  if (caughtUp && o.once) return watch;
  if (o.signal?.aborted) return watch;
  const messages: ConsumerMessages = await consumer.consume();
  const stop = () => messages.stop();
  o.signal?.addEventListener("abort", stop, { once: true });
  try {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      const changed = d.ok ? watch.apply(m.subject, d.event) : undefined;
      if (caughtUp && changed) o.onUpdate?.(changed, watch);
      if (!caughtUp && (m.info.pending === 0 || m.seq >= lastSeq)) {
        catchUp();
        if (o.once) break;
      }
    }
  } finally {
    o.signal?.removeEventListener("abort", stop);
    messages.stop();
  }
  return watch;
}
