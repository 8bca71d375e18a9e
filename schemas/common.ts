/** Pieces shared by several event families. */
import { z } from "zod";
import { token } from "./cloudevent.ts";

export const migrationId = token.describe("migration id; a subject token");
export const hostName = token.describe("host name; a subject token");
export const vmName = token.describe("VM name; a subject token");
export const tenantId = token.describe("tenant; pages of different tenants never dedup");

/** 128-bit content key of a 4 KiB page, keyed per tenant, as 32 lowercase hex digits. */
export const contentKey = z.string().regex(/^[0-9a-f]{32}$/, "must be 32 lowercase hex digits");
/** SHA-256 or similar digest, hex. */
export const digestHex = z.string().regex(/^[0-9a-f]{16,128}$/, "must be lowercase hex");

export const PAGE_SIZE = 4096;
/** Bytes of one content key on the wire (binary bodies). */
export const KEY_BYTES = 16;

/** KubeVirt's migration modes. */
export const MigrationMode = { PreCopy: "PreCopy", PostCopy: "PostCopy", Paused: "Paused" } as const;
export type MigrationMode = (typeof MigrationMode)[keyof typeof MigrationMode];

/** KubeVirt's migration phases. */
export const MigrationPhase = {
  Pending: "Pending",
  Scheduling: "Scheduling",
  Scheduled: "Scheduled",
  PreparingTarget: "PreparingTarget",
  TargetReady: "TargetReady",
  Running: "Running",
  Succeeded: "Succeeded",
  Failed: "Failed",
} as const;
export type MigrationPhase = (typeof MigrationPhase)[keyof typeof MigrationPhase];

/** Migration options, named after `virsh migrate` and KubeVirt's knobs. */
export const migrationOptions = z.object({
  /** Link bandwidth cap for this migration, MB/s (virsh --bandwidth is MiB/s). */
  bandwidthMBps: z.number().positive().optional(),
  /** Largest acceptable downtime at switch-over. */
  maxDowntimeMs: z.number().int().positive().default(300),
  /** Switch to post-copy when pre-copy stops converging (virsh --postcopy-after-precopy). */
  postcopy: z.boolean().default(false),
  /** Give up pre-copy after this many rounds (then post-copy or abort). */
  maxRounds: z.number().int().positive().default(30),
  /** Throttle the guest's vCPUs while pre-copy does not converge (libvirt --auto-converge). */
  autoConverge: z.boolean().default(false),
  /** The most auto-converge may throttle, percent of vCPU time (QEMU max-cpu-throttle). */
  autoConvergeMaxPercent: z.number().int().min(1).max(99).default(99),
  /** KubeVirt progressTimeout: abort after this long without progress. */
  progressTimeoutSec: z.number().int().positive().default(150),
  /** KubeVirt completionTimeoutPerGiB. */
  completionTimeoutPerGiB: z.number().int().positive().default(150),
  /**
   * How many of a gang's VMs may be in their stop-and-copy at once (absent: no limit). Their
   * downtimes share the hosts' CPU: one at a time, each VM's pause is its own work, not the
   * gang's, but one VM slow to finish holds the others in pre-copy (up to a 60 s lease).
   */
  parallelSwitchovers: z.number().int().positive().optional(),
});
export type MigrationOptions = z.infer<typeof migrationOptions>;

/**
 * Progress and result figures under libvirt's job-statistics names, plus gangway's own.
 * Counters are monotonic within one migration (no bars running backwards).
 */
export const jobStats = z.object({
  time_elapsed: z.number().nonnegative(),
  time_remaining: z.number().nonnegative().optional(),
  setup_time: z.number().nonnegative().optional(),
  downtime: z.number().nonnegative().optional(),
  data_total: z.number().nonnegative().optional(),
  data_processed: z.number().nonnegative(),
  data_remaining: z.number().nonnegative().optional(),
  memory_total: z.number().nonnegative().optional(),
  memory_processed: z.number().nonnegative().optional(),
  memory_remaining: z.number().nonnegative().optional(),
  memory_constant: z.number().nonnegative().optional(),
  memory_normal: z.number().nonnegative().optional(),
  memory_bps: z.number().nonnegative().optional(),
  memory_dirty_rate: z.number().nonnegative().optional(),
  memory_iteration: z.number().int().nonnegative().optional(),
  pages_deduplicated: z.number().int().nonnegative().optional(),
  /** Pages sent as content (in page packs). */
  pages_sent: z.number().int().nonnegative().optional(),
  /** Bytes of the pages packed, before and after compression. */
  packed_raw_bytes: z.number().nonnegative().optional(),
  packed_bytes: z.number().nonnegative().optional(),
  bytes_on_link: z.number().nonnegative().optional(),
  dedup_ratio: z.number().nonnegative().optional(),
  compression_ratio: z.number().nonnegative().optional(),
  percent: z.number().min(0).max(100).optional(),
});
export type JobStats = z.infer<typeof jobStats>;

/** A reason for a failure, bounded so it fits any event and log line. */
export const reason = z.string().min(1).max(2000);
