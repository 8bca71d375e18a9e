/**
 * A migration's timeline, folded from its retained facts: who asked for it and why, the
 * plan, each VM's phases (started, switch-over, commit or rollback and why), rounds, bytes
 * and dedup, and how the gang ended. Pure: the facts come in, the timeline comes out.
 */
import type { z } from "zod";
import type {
  JobStats,
  commitReady,
  manifestCompleted,
  manifestHeader,
  migrationCancelled,
  migrationCommitted,
  migrationFailed,
  migrationPlanned,
  migrationProgress,
  migrationRequested,
  migrationRolledBack,
  migrationStarted,
  migrationSwitchover,
  MigrationOptions,
} from "../../schemas/index.ts";
import { dataOf, type Fact } from "./events.ts";

type Data<D extends { data: z.ZodType }> = z.infer<D["data"]>;

/** How a migration (the gang) ended, or that it has not yet. */
export const MigrationOutcome = { succeeded: "succeeded", failed: "failed", cancelled: "cancelled", inFlight: "in-flight" } as const;
export type MigrationOutcome = (typeof MigrationOutcome)[keyof typeof MigrationOutcome];

/** How one VM of the gang ended. */
export const VmOutcome = { committed: "committed", rolledback: "rolledback", pending: "pending" } as const;
export type VmOutcome = (typeof VmOutcome)[keyof typeof VmOutcome];

export interface TimelineEntry {
  /** ISO 8601 time of the event. */
  at: string;
  /** The event's kind: requested, planned, started, switchover, manifest.completed, commit.ready, committed, resumed, … */
  event: string;
  vm?: string;
  detail?: string;
}

export interface VmTimeline {
  vm: string;
  tenant?: string;
  memoryBytes?: number;
  startedAt?: string;
  switchoverAt?: string;
  switchoverMode?: string;
  switchoverReason?: string;
  /** The destination resumed the VM. */
  resumedAt?: string;
  outcome: VmOutcome;
  decidedAt?: string;
  /** Why it rolled back. */
  reason?: string;
  /** Pre-copy rounds (libvirt memory_iteration). */
  rounds: number;
  /** Pages the stream carried over all rounds (manifest records). */
  pages: number;
  memory_constant: number;
  pages_deduplicated: number;
  pages_sent: number;
  /** Bytes of QEMU's own stream (what native migration carries). */
  native_bytes: number;
  bytes_on_link: number;
  packed_raw_bytes: number;
  packed_bytes: number;
  /** From the switch-over to the destination's resume. */
  downtime_ms?: number;
  /** Digests recorded: the source's (manifest completed), the destination's (commit ready), and the one committed. */
  digests: { source?: string; destination?: string; committed?: string };
  /** The commit's proof: the three digests it found equal, and the pages the source repaired. */
  proof?: { source_ram_digest: string; sent_digest: string; destination_digest: string; pages_repaired: number };
}

export interface MigrationTimeline {
  migrationId: string;
  requested?: {
    at: string;
    requestedBy: string;
    reason?: string;
    evacuationId?: string;
    sourceHost: string;
    targetHost?: string;
    vms: string[];
    options: MigrationOptions;
  };
  planned?: { at: string; sourceHost: string; targetHost: string };
  sourceHost?: string;
  targetHost?: string;
  outcome: MigrationOutcome;
  endedAt?: string;
  /** Why the gang failed or was cancelled. */
  reason?: string;
  cancelledBy?: string;
  /** From the request to the end (or to the last event, in flight). */
  time_elapsed_ms?: number;
  vms: VmTimeline[];
  totals: {
    pages: number;
    memory_constant: number;
    pages_deduplicated: number;
    pages_sent: number;
    native_bytes: number;
    bytes_on_link: number;
    /** bytes_on_link / native_bytes */
    link_ratio: number;
    /** pages sent / non-zero pages carried */
    dedup_ratio: number;
    /** packed bytes / raw bytes of the packed pages */
    compression_ratio: number;
  };
  /** Each phase with its time, in stream order (progress updates are folded, not listed). */
  entries: TimelineEntry[];
  /** Progress updates seen. */
  progressEvents: number;
}

const iso = (ms: number) => new Date(ms).toISOString();
/** io.gangway.migration.started.v1 → "started"; other families keep theirs: "manifest.completed", "commit.ready". */
const kindOf = (type: string) => type.replace(/^io\.gangway\./, "").replace(/^migration\./, "").replace(/\.v[0-9]+$/, "");

/** Folds a migration's facts (gw.migration.<id>.>, gw.manifest.<id>.>, gw.commit.<id>.>) into its timeline. */
export function buildTimeline(migrationId: string, facts: Fact[]): MigrationTimeline {
  const sorted = [...facts].sort((a, b) => a.seq - b.seq);
  const t: MigrationTimeline = { migrationId, outcome: MigrationOutcome.inFlight, vms: [], totals: emptyTotals(), entries: [], progressEvents: 0 };
  const vms = new Map<string, VmTimeline>();
  const vmOf = (vm: string): VmTimeline => {
    let v = vms.get(vm);
    if (!v) {
      v = {
        vm, outcome: VmOutcome.pending, rounds: 0, pages: 0, memory_constant: 0, pages_deduplicated: 0, pages_sent: 0,
        native_bytes: 0, bytes_on_link: 0, packed_raw_bytes: 0, packed_bytes: 0, digests: {},
      };
      vms.set(vm, v);
    }
    return v;
  };
  let first: number | undefined;
  let last: number | undefined;
  const entry = (f: Fact, vm?: string, detail?: string) => t.entries.push({ at: iso(f.at), event: kindOf(f.event.type), ...(vm ? { vm } : {}), ...(detail ? { detail } : {}) });

  for (const f of sorted) {
    if (f.event.mode !== "structured") continue; // manifest batches: the verifier reads them
    first ??= f.at;
    last = Math.max(last ?? f.at, f.at);
    switch (f.event.type) {
      case "io.gangway.migration.requested.v1": {
        const d = dataOf<Data<typeof migrationRequested>>(f);
        t.requested = {
          at: iso(f.at), requestedBy: d.requestedBy, ...(d.reason ? { reason: d.reason } : {}), ...(d.evacuationId ? { evacuationId: d.evacuationId } : {}),
          sourceHost: d.sourceHost, ...(d.targetHost ? { targetHost: d.targetHost } : {}), vms: d.vms, options: d.options,
        };
        t.sourceHost = d.sourceHost;
        if (d.targetHost) t.targetHost = d.targetHost;
        for (const vm of d.vms) vmOf(vm);
        entry(f, undefined, `by ${d.requestedBy}${d.reason ? `: ${d.reason}` : ""}${d.evacuationId ? ` (evacuation ${d.evacuationId})` : ""}; ${d.vms.join(", ")} from ${d.sourceHost}${d.targetHost ? ` to ${d.targetHost}` : ""}`);
        break;
      }
      case "io.gangway.migration.planned.v1": {
        const d = dataOf<Data<typeof migrationPlanned>>(f);
        t.planned = { at: iso(f.at), sourceHost: d.sourceHost, targetHost: d.targetHost };
        t.sourceHost = d.sourceHost;
        t.targetHost = d.targetHost;
        for (const p of d.vms) {
          const v = vmOf(p.vm);
          v.tenant = p.tenant;
          v.memoryBytes = p.memoryBytes;
        }
        entry(f, undefined, `${d.sourceHost} → ${d.targetHost}, ${d.vms.length} VMs`);
        break;
      }
      case "io.gangway.migration.started.v1": {
        const d = dataOf<Data<typeof migrationStarted>>(f);
        vmOf(d.vm).startedAt = iso(f.at);
        entry(f, d.vm);
        break;
      }
      case "io.gangway.migration.progress.v1": {
        t.progressEvents++;
        const d = dataOf<Data<typeof migrationProgress>>(f);
        if (!d.vm) break;
        const v = vmOf(d.vm);
        if (d.phase === "Succeeded") {
          v.resumedAt = iso(f.at);
          t.entries.push({ at: iso(f.at), event: "resumed", vm: d.vm, detail: "the destination runs the VM" });
        } else foldStats(v, d.stats);
        break;
      }
      case "io.gangway.migration.switchover.v1": {
        const d = dataOf<Data<typeof migrationSwitchover>>(f);
        const v = vmOf(d.vm);
        v.switchoverAt = iso(f.at);
        v.switchoverMode = d.mode;
        v.switchoverReason = d.reason;
        v.rounds = Math.max(v.rounds, d.round);
        entry(f, d.vm, `${d.mode} after round ${d.round}: ${d.reason}`);
        break;
      }
      case "io.gangway.migration.committed.v1": {
        const d = dataOf<Data<typeof migrationCommitted>>(f);
        const v = vmOf(d.vm);
        v.outcome = VmOutcome.committed;
        v.decidedAt = iso(f.at);
        if (d.digest) v.digests.committed = d.digest;
        if (d.proof) v.proof = d.proof;
        if (d.stats.memory_iteration !== undefined) v.rounds = Math.max(v.rounds, d.stats.memory_iteration);
        entry(f, d.vm, d.digest ? `on ${d.targetHost}, ${d.pages} pages, digest ${d.digest.slice(0, 16)}…` : `on ${d.targetHost}, post-copy: resumed with ${d.pages} pages, the rest follows`);
        break;
      }
      case "io.gangway.migration.rolledback.v1": {
        const d = dataOf<Data<typeof migrationRolledBack>>(f);
        const v = vmOf(d.vm);
        v.outcome = VmOutcome.rolledback;
        v.decidedAt = iso(f.at);
        v.reason = d.reason;
        entry(f, d.vm, `${d.reason}${d.sourceRunning ? " (source running)" : ""}`);
        break;
      }
      case "io.gangway.migration.failed.v1": {
        const d = dataOf<Data<typeof migrationFailed>>(f);
        if (d.vm) {
          entry(f, d.vm, d.reason);
          break;
        }
        t.outcome = MigrationOutcome.failed;
        t.endedAt = iso(f.at);
        t.reason = d.reason;
        entry(f, undefined, d.reason);
        break;
      }
      case "io.gangway.migration.succeeded.v1":
        t.outcome = MigrationOutcome.succeeded;
        t.endedAt = iso(f.at);
        entry(f);
        break;
      case "io.gangway.migration.cancelled.v1": {
        const d = dataOf<Data<typeof migrationCancelled>>(f);
        t.outcome = MigrationOutcome.cancelled;
        t.endedAt = iso(f.at);
        t.reason = d.reason;
        t.cancelledBy = d.requestedBy;
        entry(f, undefined, `by ${d.requestedBy}: ${d.reason}`);
        break;
      }
      case "io.gangway.manifest.header.v1": {
        const d = dataOf<Data<typeof manifestHeader>>(f);
        const v = vmOf(d.vm);
        v.tenant ??= d.tenant;
        entry(f, d.vm, `manifest opened by ${d.sourceHost}: ${d.blocks.length} RAM blocks, ${d.blocks.reduce((n, b) => n + b.usedBytes, 0)} bytes`);
        break;
      }
      case "io.gangway.manifest.completed.v1": {
        const d = dataOf<Data<typeof manifestCompleted>>(f);
        const v = vmOf(d.vm);
        v.digests.source = d.digest;
        v.rounds = Math.max(v.rounds, d.rounds);
        v.pages = Math.max(v.pages, d.records);
        entry(f, d.vm, `source sent ${d.records} pages in ${d.rounds} rounds, digest ${d.digest.slice(0, 16)}…`);
        break;
      }
      case "io.gangway.commit.ready.v1": {
        const d = dataOf<Data<typeof commitReady>>(f);
        const v = vmOf(d.vm);
        v.digests.destination = d.digest;
        if (d.downtimeMs !== undefined) v.downtime_ms = d.downtimeMs;
        entry(f, d.vm, `destination ${d.targetHost} loaded ${d.pagesDelivered}/${d.pagesExpected} pages, digest ${d.digest.slice(0, 16)}…`);
        break;
      }
      case "io.gangway.commit.abort.v1": {
        const d = dataOf<{ vm: string; reason: string; reportedBy: string }>(f);
        entry(f, d.vm, `${d.reportedBy}: ${d.reason}`);
        break;
      }
      default:
        break;
    }
  }
  t.vms = [...vms.values()];
  for (const v of t.vms) {
    if (v.downtime_ms === undefined && v.switchoverAt && v.resumedAt) v.downtime_ms = Date.parse(v.resumedAt) - Date.parse(v.switchoverAt);
  }
  const start = t.requested ? Date.parse(t.requested.at) : first;
  const end = t.endedAt ? Math.max(Date.parse(t.endedAt), ...t.vms.map((v) => (v.resumedAt ? Date.parse(v.resumedAt) : 0))) : last;
  if (start !== undefined && end !== undefined) t.time_elapsed_ms = end - start;
  t.totals = totalsOf(t.vms);
  return t;
}

/** Counters only grow: the largest value seen wins (a resume's zeroed stats change nothing). */
function foldStats(v: VmTimeline, s: JobStats): void {
  const max = (a: number, b: number | undefined) => Math.max(a, b ?? 0);
  v.rounds = max(v.rounds, s.memory_iteration);
  v.pages = max(v.pages, (s.memory_normal ?? 0) + (s.memory_constant ?? 0));
  v.memory_constant = max(v.memory_constant, s.memory_constant);
  v.pages_deduplicated = max(v.pages_deduplicated, s.pages_deduplicated);
  v.pages_sent = max(v.pages_sent, s.pages_sent);
  v.native_bytes = max(v.native_bytes, s.data_processed);
  v.bytes_on_link = max(v.bytes_on_link, s.bytes_on_link);
  v.packed_raw_bytes = max(v.packed_raw_bytes, s.packed_raw_bytes);
  v.packed_bytes = max(v.packed_bytes, s.packed_bytes);
}

function emptyTotals(): MigrationTimeline["totals"] {
  return { pages: 0, memory_constant: 0, pages_deduplicated: 0, pages_sent: 0, native_bytes: 0, bytes_on_link: 0, link_ratio: 0, dedup_ratio: 0, compression_ratio: 1 };
}

function totalsOf(vms: VmTimeline[]): MigrationTimeline["totals"] {
  const sum = (f: (v: VmTimeline) => number) => vms.reduce((n, v) => n + f(v), 0);
  const pages = sum((v) => v.pages);
  const constant = sum((v) => v.memory_constant);
  const native = sum((v) => v.native_bytes);
  const link = sum((v) => v.bytes_on_link);
  const raw = sum((v) => v.packed_raw_bytes);
  const packed = sum((v) => v.packed_bytes);
  const sent = sum((v) => v.pages_sent);
  return {
    pages, memory_constant: constant, pages_deduplicated: sum((v) => v.pages_deduplicated), pages_sent: sent, native_bytes: native, bytes_on_link: link,
    link_ratio: native ? link / native : 0,
    dedup_ratio: pages - constant > 0 ? sent / (pages - constant) : 0,
    compression_ratio: raw ? packed / raw : 1,
  };
}
