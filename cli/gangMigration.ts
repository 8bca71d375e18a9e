/**
 * Requesting a gang migration and following it to its end from the retained events: the
 * library behind `gangway migrate` and the demo. Progress is folded into one view per VM
 * and for the gang; counters only grow, and percentages never run backwards.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { randomUUID } from "node:crypto";
import { migrationRequested, type JobStats, type MigrationOptions } from "../schemas/index.ts";
import { decodeMessage } from "../infra/events/binding.ts";
import { StreamFollower } from "../infra/nats/follow.ts";
import { switchoverLine, watchSwitchovers } from "./switchoverWaits.ts";
import { cliPublisher, cliUser } from "./requester.ts";

export interface VmView {
  vm: string;
  phase: string;
  outcome?: "committed" | "rolledback";
  reason?: string;
  stats: JobStats;
  switchoverAt?: number;
  resumedAt?: number;
  /** PostCopy once the destination resumed before all pages arrived. */
  mode?: "PreCopy" | "PostCopy";
  downtime_ms?: number;
  /** While paused in its switch-over: what it waits for ("switchover 4.2s: waiting for …"). */
  waiting?: string;
  /** The longest the destination said the same thing it waited for during the switch-over (to 1 s). */
  longestWait?: { for: string; ms: number };
  currentWait?: { for: string; since: number };
  /** The commit's three equal digests (pre-copy). */
  proof?: VmProof;
  /** When the sides spoke (ms since the epoch), and when the commit was decided. */
  spoken?: { sent: number; verified: number; ready: number };
  committedAt?: number;
}

/**
 * What a pre-copy downtime (source stopped → destination running) was spent on, in order:
 * the source finishing its stream (last pages, packs, device state stored), proving its RAM,
 * the destination loading the rest, reading back and repairing (until it held the proof), the
 * commit's decision, and the resume.
 */
export interface DowntimePhases {
  source_sent_ms: number;
  source_proved_ms: number;
  destination_ready_ms: number;
  commit_ms: number;
  resume_ms: number;
}

/** The wait the destination named last lasted until `until`: the longest so far, if it is. */
function noteWait(v: VmView, until: number): VmView["longestWait"] {
  const w = v.currentWait;
  if (!w) return v.longestWait;
  const ms = Math.max(0, until - w.since);
  if (!v.longestWait || ms > v.longestWait.ms) v.longestWait = { for: w.for, ms };
  return v.longestWait;
}

function downtimePhases(v: VmView): DowntimePhases | undefined {
  const { switchoverAt: stop, spoken, committedAt, resumedAt } = v;
  if (stop === undefined || !spoken || committedAt === undefined || resumedAt === undefined || v.mode === "PostCopy") return undefined;
  // Each step from the later of its own start and the previous step's end (the sides overlap).
  const sent = Math.max(stop, spoken.sent);
  const verified = Math.max(sent, spoken.verified);
  const ready = Math.max(verified, spoken.ready);
  const committed = Math.max(ready, committedAt);
  return { source_sent_ms: sent - stop, source_proved_ms: verified - sent, destination_ready_ms: ready - verified, commit_ms: committed - ready, resume_ms: Math.max(committed, resumedAt) - committed };
}

export interface VmProof {
  source_ram_digest: string;
  sent_digest: string;
  destination_digest: string;
  pages_repaired: number;
  device_state_digest?: string;
  source_read_ms?: number;
  destination_read_ms?: number;
}

export interface GangView {
  migrationId: string;
  sourceHost: string;
  targetHost?: string;
  startedAt: number;
  vms: Map<string, VmView>;
  outcome?: "succeeded" | "failed";
  reason?: string;
}

export interface GangSummary {
  migrationId: string;
  outcome: "succeeded" | "failed";
  reason?: string;
  sourceHost: string;
  targetHost?: string;
  time_elapsed_ms: number;
  vms: {
    vm: string; outcome: string; reason?: string; pages: number; memory_constant: number; pages_deduplicated: number; pages_sent: number;
    native_bytes: number; bytes_on_link: number; rounds: number; downtime_ms?: number; mode?: "PreCopy" | "PostCopy"; proof?: VmProof;
    /** The longest single wait of its switch-over, as its destination named it. */
    longest_wait?: { for: string; ms: number };
    downtime_phases?: DowntimePhases;
  }[];
  native_bytes: number;
  bytes_on_link: number;
  /** bytes_on_link / native_bytes */
  link_ratio: number;
  /** pages sent / non-zero pages carried: what page dedup (within and across VMs) left */
  dedup_ratio: number;
  /** packed bytes / raw bytes of the packed pages */
  compression_ratio: number;
  pages_deduplicated: number;
}

export interface GangMigrationOptions {
  nc: NatsConnection;
  vms: string[];
  sourceHost: string;
  targetHost?: string;
  requestedBy?: string;
  reason?: string;
  options?: Partial<MigrationOptions>;
  migrationId?: string;
  onUpdate?: (view: GangView) => void;
  /** Stop following after this long without any event. @default 180000 */
  idleTimeoutMs?: number;
}

export class MigrationTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MigrationTimeoutError";
  }
}

export const newMigrationId = () => `mig-${new Date().toISOString().replace(/[-:T.Z]/g, "").slice(0, 14)}-${randomUUID().slice(0, 8)}`;

/** Publishes the request, follows the migration's events, returns the summary. */
export async function migrateGang(o: GangMigrationOptions): Promise<GangSummary> {
  const migrationId = o.migrationId ?? newMigrationId();
  const pub = cliPublisher(o.nc);
  const ack = await pub.publish(migrationRequested, { migrationId }, {
    migrationId, vms: o.vms, sourceHost: o.sourceHost, ...(o.targetHost ? { targetHost: o.targetHost } : {}),
    requestedBy: o.requestedBy ?? cliUser(), ...(o.reason ? { reason: o.reason } : {}), options: o.options ?? {},
  }, { id: `${migrationId}-requested` });
  // Its events all come after the request (a repeated request's ack names the first one).
  return followGang(o.nc, migrationId, { ...o, fromSeq: ack.seq });
}

export async function followGang(nc: NatsConnection, migrationId: string, o: Pick<GangMigrationOptions, "onUpdate" | "idleTimeoutMs"> & { fromSeq?: number } = {}): Promise<GangSummary> {
  const view: GangView = { migrationId, sourceHost: "", startedAt: Date.now(), vms: new Map() };
  // A killed CLI's consumer goes 15 s after its last pull, not the client's default 5 min; one
  // on a server that died is replaced (see StreamFollower).
  const messages = await StreamFollower.start(nc, { filter: `gw.migration.${migrationId}.>`, inactiveThresholdMs: 15_000, ...(o.fromSeq ? { fromSeq: o.fromSeq } : {}) });
  const idle = o.idleTimeoutMs ?? 180_000;
  let last = Date.now();
  let timedOut = false;
  const timer = setInterval(() => {
    if (Date.now() - last > idle) {
      timedOut = true;
      messages.stop();
    }
  }, 500);
  const vmView = (vm: string) => view.vms.get(vm) ?? view.vms.set(vm, { vm, phase: "Pending", stats: { time_elapsed: 0, data_processed: 0 } }).get(vm)!;
  // No event comes between the switch-over and the commit: ask the destination what it waits for.
  const stopWaits = watchSwitchovers(nc, {
    migrationId,
    targetHost: () => view.targetHost,
    paused: () => [...view.vms.values()].filter((v) => v.switchoverAt !== undefined && v.resumedAt === undefined && v.outcome !== "rolledback" && v.mode !== "PostCopy").map((v) => ({ vm: v.vm, since: v.switchoverAt! })),
    onWait: (vm, w) => {
      const v = view.vms.get(vm);
      if (!v || v.resumedAt !== undefined || v.outcome === "rolledback") return;
      v.waiting = switchoverLine(w, Date.now());
      // Asked once a second: the same answer again extends that wait; another ends it (by now,
      // at most a question late). The first began with the pause.
      const now = Date.now();
      if (v.currentWait?.for !== w.waitingFor) {
        if (v.currentWait) noteWait(v, now);
        v.currentWait = { for: w.waitingFor, since: v.currentWait ? now : (v.switchoverAt ?? now) };
      }
      noteWait(v, now);
    },
    onRound: () => o.onUpdate?.(view),
  });
  try {
    for await (const m of messages) {
      last = Date.now();
      const d = decodeMessage(m.subject, m.data, m.headers);
      if (!d.ok || d.event.mode !== "structured") continue;
      const data = d.event.data as Record<string, unknown> & { vm?: string };
      const at = Date.parse(d.event.time);
      switch (d.event.type) {
        case "io.gangway.migration.requested.v1":
          view.sourceHost = data.sourceHost as string;
          view.startedAt = at;
          for (const v of data.vms as string[]) vmView(v);
          break;
        case "io.gangway.migration.planned.v1":
          view.targetHost = data.targetHost as string;
          for (const v of view.vms.values()) v.phase = "Scheduled";
          break;
        case "io.gangway.migration.started.v1":
          vmView(data.vm!).phase = "Running";
          break;
        case "io.gangway.migration.progress.v1": {
          if (!data.vm) break;
          const v = vmView(data.vm);
          const s = data.stats as JobStats;
          if (data.mode === "PostCopy" && d.event.id.endsWith("-postcopy-resumed")) {
            // Post-copy: the guest runs at the destination from here; its pages follow.
            v.resumedAt = at;
            delete v.waiting;
            if (v.switchoverAt) v.downtime_ms = at - v.switchoverAt;
            v.mode = "PostCopy";
          } else if (data.phase === "Succeeded") {
            v.resumedAt = at;
            delete v.waiting;
            if (v.switchoverAt) v.downtime_ms = at - v.switchoverAt;
            v.phase = "Succeeded";
            v.stats = { ...v.stats, percent: 100 };
          } else {
            // Progress never runs backwards: keep the larger of old and new counters.
            v.stats = { ...v.stats, ...s, percent: Math.max(v.stats.percent ?? 0, s.percent ?? 0) };
          }
          break;
        }
        case "io.gangway.migration.switchover.v1":
          vmView(data.vm!).switchoverAt = at;
          break;
        case "io.gangway.migration.committed.v1": {
          const v = vmView(data.vm!);
          v.outcome = "committed";
          v.committedAt = at;
          if (data.proof) v.proof = data.proof as VmProof;
          const spoken = data.spoken as { sent: string; verified: string; ready: string } | undefined;
          if (spoken) v.spoken = { sent: Date.parse(spoken.sent), verified: Date.parse(spoken.verified), ready: Date.parse(spoken.ready) };
          break;
        }
        case "io.gangway.migration.rolledback.v1": {
          const v = vmView(data.vm!);
          v.outcome = "rolledback";
          delete v.waiting;
          v.reason = data.reason as string;
          v.phase = "Failed";
          break;
        }
        case "io.gangway.migration.succeeded.v1":
          view.outcome = "succeeded";
          break;
        case "io.gangway.migration.failed.v1":
          if (data.vm) {
            // One VM lost in post-copy: the gang's own outcome follows.
            vmView(data.vm).reason = data.reason as string;
            break;
          }
          view.outcome = "failed";
          view.reason = data.reason as string;
          break;
      }
      o.onUpdate?.(view);
      const allResumed = [...view.vms.values()].every((v) => v.outcome === "rolledback" || v.resumedAt !== undefined);
      if (view.outcome === "failed" || (view.outcome === "succeeded" && allResumed)) break;
    }
  } finally {
    clearInterval(timer);
    stopWaits();
    // The server keeps an ordered consumer for minutes after its client stops reading.
    await messages.close();
  }
  if (timedOut && !view.outcome) throw new MigrationTimeoutError(`no event of migration ${migrationId} for ${Math.round(idle / 1000)} s`);
  return summarize(view);
}

export function summarize(view: GangView): GangSummary {
  const vms = [...view.vms.values()].map((v) => ({
    vm: v.vm,
    outcome: v.outcome ?? "unknown",
    ...(v.reason ? { reason: v.reason } : {}),
    pages: (v.stats.memory_normal ?? 0) + (v.stats.memory_constant ?? 0),
    memory_constant: v.stats.memory_constant ?? 0,
    pages_deduplicated: v.stats.pages_deduplicated ?? 0,
    pages_sent: v.stats.pages_sent ?? 0,
    native_bytes: v.stats.data_processed ?? 0,
    bytes_on_link: v.stats.bytes_on_link ?? 0,
    rounds: v.stats.memory_iteration ?? 0,
    ...(v.downtime_ms !== undefined ? { downtime_ms: v.downtime_ms } : {}),
    ...(v.mode ? { mode: v.mode } : {}),
    ...(v.proof ? { proof: v.proof } : {}),
    ...((l) => (l ? { longest_wait: l } : {}))(v.currentWait && v.resumedAt !== undefined ? noteWait(v, v.resumedAt) : v.longestWait),
    ...((p) => (p ? { downtime_phases: p } : {}))(downtimePhases(v)),
  }));
  const sum = (f: (v: (typeof vms)[number]) => number) => vms.reduce((n, v) => n + f(v), 0);
  const stats = [...view.vms.values()].map((v) => v.stats);
  const packedRaw = stats.reduce((n, s) => n + (s.packed_raw_bytes ?? 0), 0);
  const packed = stats.reduce((n, s) => n + (s.packed_bytes ?? 0), 0);
  const nonZero = sum((v) => v.pages - v.memory_constant);
  const native = sum((v) => v.native_bytes);
  const link = sum((v) => v.bytes_on_link);
  return {
    migrationId: view.migrationId,
    outcome: view.outcome ?? "failed",
    ...(view.reason ? { reason: view.reason } : {}),
    sourceHost: view.sourceHost,
    ...(view.targetHost ? { targetHost: view.targetHost } : {}),
    time_elapsed_ms: Math.max(...[...view.vms.values()].map((v) => v.resumedAt ?? Date.now())) - view.startedAt,
    vms,
    native_bytes: native,
    bytes_on_link: link,
    link_ratio: native ? link / native : 0,
    dedup_ratio: nonZero ? sum((v) => v.pages_sent) / nonZero : 0,
    compression_ratio: packedRaw ? packed / packedRaw : 1,
    pages_deduplicated: sum((v) => v.pages_deduplicated),
  };
}
