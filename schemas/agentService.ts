/**
 * A host agent's services (gwsvc.agent.<host>.<name>): questions its peers, the operator
 * and the demo ask it directly, answered at once and never retained.
 */
import { z } from "zod";
import { defineService } from "./service.ts";
import { hostName, migrationId, vmName } from "./common.ts";

const count = z.number().int().nonnegative();

/**
 * Liveness: the agent is there, and how long since its main thread last ran (see
 * adapters/host/liveness.ts). Any body is answered; pings send none.
 */
export const agentStatus = defineService({
  subject: "gwsvc.agent.{host}.status",
  request: z.undefined(),
  reply: z.object({
    host: hostName,
    uptimeSec: z.number().nonnegative(),
    vms: count,
    migrations: count,
    /** How long since the agent's main thread last showed it runs (ms). */
    mainLoopLagMs: z.number().optional(),
  }),
});

/** A VM's serial console: send a line, wait for a line matching `expect` (the demo's self-checks). */
export const agentConsole = defineService({
  subject: "gwsvc.agent.{host}.console",
  request: z.object({
    vm: vmName,
    send: z.string(),
    /** A regular expression the awaited line matches. */
    expect: z.string(),
    /** @default 30000, at most 120000 */
    timeoutMs: z.number().optional(),
  }),
  reply: z.discriminatedUnion("ok", [z.object({ ok: z.literal(true), line: z.string() }), z.object({ ok: z.literal(false), error: z.string() })]),
});

/**
 * How far a destination's rebuild of one VM got: the manifest sequence numbers read and
 * handed to QEMU (-1: none yet), and what it waits for. The source drains its pipeline
 * against it before a switch-over; the progress view shows it during the downtime.
 */
export const agentManifest = defineService({
  subject: "gwsvc.agent.{host}.manifest",
  request: z.object({ migrationId, vm: vmName }),
  reply: z.union([z.object({ seqWritten: z.number().int(), seqRead: z.number().int(), waitingFor: z.string() }), z.object({ error: z.string() })]),
});
