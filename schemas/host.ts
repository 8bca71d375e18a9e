/**
 * Hosts: inventory and heartbeats from each host agent; evacuation commands from operators
 * and autoscalers, and the facts of an evacuation.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { hostName, reason, tenantId, vmName } from "./common.ts";
import { vmSpec } from "./agent.ts";

const about = (p: { host: string }) => `host/${p.host}`;

export const VmState = { running: "running", paused: "paused", incoming: "incoming", migrating: "migrating", stopped: "stopped" } as const;
export type VmState = (typeof VmState)[keyof typeof VmState];

export const hostInventory = defineEvent({
  type: "io.gangway.host.inventory.v1",
  family: "host",
  subject: "gw.host.{host}.inventory",
  about,
  data: z.object({
    host: hostName,
    memoryTotalBytes: z.number().int().nonnegative(),
    memoryFreeBytes: z.number().int().nonnegative(),
    /** The QEMU version this host's VMs run ("10.0.2"); both ends of a migration must agree. */
    qemuVersion: z.string().regex(/^\d+\.\d+\.\d+$/).optional(),
    vms: z.array(z.object({ vm: vmName, tenant: tenantId, memoryBytes: z.number().int().positive(), state: z.enum(VmState), uuid: z.string().optional(), spec: vmSpec.optional() })),
  }),
});

export const hostHeartbeat = defineEvent({
  type: "io.gangway.host.heartbeat.v1",
  family: "host",
  subject: "gw.host.{host}.heartbeat",
  about,
  data: z.object({ host: hostName, uptimeSec: z.number().nonnegative(), vms: z.number().int().nonnegative(), migrations: z.number().int().nonnegative() }),
});

const limits = z.object({
  /** KubeVirt: parallelMigrationsPerCluster. */
  parallelMigrations: z.number().int().positive().default(5),
  /** KubeVirt: parallelOutboundMigrationsPerNode. */
  parallelOutboundPerHost: z.number().int().positive().default(2),
});

/** Command: move every VM off a host (from an autoscaler, `nats pub`, or `gangway evacuate`). */
export const hostEvacuate = defineEvent({
  type: "io.gangway.host.evacuate.v1",
  family: "host",
  subject: "gw.cmd.host.{host}.evacuate",
  about,
  data: z.object({
    host: hostName,
    evacuationId: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/),
    requestedBy: z.string().min(1).max(256),
    reason: z.string().max(2000).optional(),
    /** Restrict destinations to these hosts; all other known hosts when absent. */
    candidates: z.array(hostName).optional(),
    limits: limits.default(limits.parse({})),
  }),
});

export const hostEvacuateCancel = defineEvent({
  type: "io.gangway.host.evacuate-cancel.v1",
  family: "host",
  subject: "gw.cmd.host.{host}.evacuate-cancel",
  about,
  data: z.object({ host: hostName, evacuationId: z.string().min(1).max(128), requestedBy: z.string().min(1).max(256) }),
});

export const hostEvacuationProgress = defineEvent({
  type: "io.gangway.host.evacuation-progress.v1",
  family: "host",
  subject: "gw.host.{host}.evacuation",
  about,
  data: z.object({
    host: hostName,
    evacuationId: z.string().min(1).max(128),
    remaining: z.array(vmName),
    moved: z.array(z.object({ vm: vmName, to: hostName, migrationId: z.string() })),
    failed: z.array(z.object({ vm: vmName, reason })),
  }),
});

export const hostDrained = defineEvent({
  type: "io.gangway.host.drained.v1",
  family: "host",
  subject: "gw.host.{host}.drained",
  about,
  data: z.object({ host: hostName, evacuationId: z.string().min(1).max(128), moved: z.number().int().nonnegative(), durationMs: z.number().nonnegative() }),
});
