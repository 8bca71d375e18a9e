/**
 * Migration lifecycle: requested → planned → started → round… → switchover →
 * committed | rolledback | failed | cancelled. Facts on gw.migration.<id>.<kind>;
 * the cancel command on gw.cmd.migration.<id>.cancel.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { hostName, jobStats, migrationId, migrationOptions, MigrationMode, MigrationPhase, reason, tenantId, vmName, digestHex } from "./common.ts";

type ByMigration = { migrationId: string };
const about = (p: ByMigration) => `migration/${p.migrationId}`;

/** Someone (operator, platform, plan function of an evacuation) asks for a gang migration. */
export const migrationRequested = defineEvent({
  type: "io.gangway.migration.requested.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.requested",
  about,
  data: z.object({
    migrationId,
    vms: z.array(vmName).min(1).max(256),
    sourceHost: hostName,
    /** Destination host; when absent the plan function chooses one. */
    targetHost: hostName.optional(),
    requestedBy: z.string().min(1).max(256),
    reason: z.string().max(2000).optional(),
    evacuationId: z.string().max(128).optional(),
    options: migrationOptions.default(migrationOptions.parse({})),
  }),
});

export const plannedVm = z.object({ vm: vmName, tenant: tenantId, memoryBytes: z.number().int().positive(), uuid: z.string().optional() });

export const migrationPlanned = defineEvent({
  type: "io.gangway.migration.planned.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.planned",
  about,
  data: z.object({
    migrationId,
    sourceHost: hostName,
    targetHost: hostName,
    vms: z.array(plannedVm).min(1),
    options: migrationOptions,
  }),
});

export const migrationStarted = defineEvent({
  type: "io.gangway.migration.started.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.started",
  about,
  data: z.object({ migrationId, vm: vmName, sourceHost: hostName, targetHost: hostName, phase: z.enum(MigrationPhase) }),
});

/** One pre-copy round of one VM finished sending. */
export const migrationRound = defineEvent({
  type: "io.gangway.migration.round.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.round",
  about,
  data: z.object({ migrationId, vm: vmName, round: z.number().int().nonnegative(), stats: jobStats }),
});

/** Progress of one VM, or of the gang when vm is absent. */
export const migrationProgress = defineEvent({
  type: "io.gangway.migration.progress.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.progress",
  about,
  data: z.object({
    migrationId,
    vm: vmName.optional(),
    phase: z.enum(MigrationPhase),
    mode: z.enum(MigrationMode),
    stats: jobStats,
    /** QEMU's query-migrate fields, passed on as they are. */
    qemu: z.record(z.string(), z.unknown()).optional(),
    /** A peer host slow to answer (suspected, not yet given up), or answering again. */
    peer: z.object({ host: hostName, state: z.enum(["suspected", "answering"]), reason }).optional(),
    /** What the migration waits for now (a switch-over: what is still in flight). */
    waitingFor: z.string().max(512).optional(),
  }),
});

export const migrationSwitchover = defineEvent({
  type: "io.gangway.migration.switchover.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.switchover",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    mode: z.enum(["stop-and-copy", "post-copy"]),
    reason: reason,
    round: z.number().int().nonnegative(),
  }),
});

export const migrationCommitted = defineEvent({
  type: "io.gangway.migration.committed.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.committed",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    targetHost: hostName,
    pages: z.number().int().nonnegative(),
    /** Digest of the delivered memory image, as the destination proved it (pre-copy). */
    digest: digestHex.optional(),
    /**
     * The three digests the commit found equal: the source's RAM read once it stopped, what
     * the source sent (its stream, then the repair pass), what the destination loaded.
     */
    proof: z.object({
      source_ram_digest: digestHex,
      sent_digest: digestHex,
      destination_digest: digestHex,
      pages_repaired: z.number().int().nonnegative(),
      device_state_digest: digestHex.optional(),
      /** How long each end's RAM read took (ms): the source's runs beside the destination's load. */
      source_read_ms: z.number().nonnegative().optional(),
      destination_read_ms: z.number().nonnegative().optional(),
    }).optional(),
    /**
     * When each side had spoken (its event's time): the source had sent everything (its
     * manifest completed), the source had proved its RAM, the destination held it proven. With
     * the switch-over's time and the commit's, they say what a downtime was spent on.
     */
    spoken: z.object({ sent: z.iso.datetime({ offset: true }), verified: z.iso.datetime({ offset: true }), ready: z.iso.datetime({ offset: true }) }).optional(),
    /** post-copy: the destination runs while the rest of the pages follow. @default pre-copy */
    mode: z.enum(MigrationMode).optional(),
    stats: jobStats,
  }),
});

export const migrationRolledBack = defineEvent({
  type: "io.gangway.migration.rolledback.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.rolledback",
  about,
  data: z.object({ migrationId, vm: vmName, reason, phase: z.enum(MigrationPhase), sourceRunning: z.boolean() }),
});

export const migrationFailed = defineEvent({
  type: "io.gangway.migration.failed.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.failed",
  about,
  data: z.object({ migrationId, vm: vmName.optional(), reason, phase: z.enum(MigrationPhase) }),
});

/** The whole gang finished: every VM committed. */
export const migrationSucceeded = defineEvent({
  type: "io.gangway.migration.succeeded.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.succeeded",
  about,
  data: z.object({ migrationId, vms: z.array(vmName), stats: jobStats }),
});

export const migrationCancelled = defineEvent({
  type: "io.gangway.migration.cancelled.v1",
  family: "migration",
  subject: "gw.migration.{migrationId}.cancelled",
  about,
  data: z.object({ migrationId, reason, requestedBy: z.string().min(1).max(256) }),
});

/** Command: cancel a migration in whatever phase it is (like virsh domjobabort). */
export const migrationCancel = defineEvent({
  type: "io.gangway.migration.cancel.v1",
  family: "migration",
  subject: "gw.cmd.migration.{migrationId}.cancel",
  about,
  data: z.object({ migrationId, reason: reason.default("cancelled by request"), requestedBy: z.string().min(1).max(256) }),
});

/** Command: stop iterating and switch over now (like Nova's live-migration-force-complete). */
export const migrationForceComplete = defineEvent({
  type: "io.gangway.migration.force-complete.v1",
  family: "migration",
  subject: "gw.cmd.migration.{migrationId}.force-complete",
  about,
  data: z.object({
    migrationId,
    requestedBy: z.string().min(1).max(256),
    /** The switch-over to make (virsh --timeout-suspend / --timeout-postcopy). @default post-copy where the migration allows it, else stop-and-copy */
    mode: z.enum(["stop-and-copy", "post-copy"]).optional(),
  }),
});
