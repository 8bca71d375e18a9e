/**
 * Dirty log: per round and per VM, what was sent and how fast memory is dirtied, so the
 * dirty-log function can decide when to switch over (stop-and-copy or post-copy).
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { migrationId, vmName, hostName } from "./common.ts";

export const dirtyRound = defineEvent({
  type: "io.gangway.dirty.round.v1",
  family: "dirty",
  subject: "gw.dirty.{migrationId}.round",
  about: (p: { migrationId: string }) => `migration/${p.migrationId}`,
  data: z.object({
    migrationId,
    vm: vmName,
    sourceHost: hostName,
    round: z.number().int().nonnegative(),
    pagesSent: z.number().int().nonnegative(),
    /** Pages dirtied while this round was being sent (the next round's work). */
    pagesDirtied: z.number().int().nonnegative(),
    durationMs: z.number().nonnegative(),
    /** Pages per second dirtied by the guest. */
    dirtyRate: z.number().nonnegative(),
    /** Bytes per second of QEMU's stream that the pipeline took in during the pass. */
    transferRate: z.number().nonnegative(),
    /** QEMU's estimate of what is still dirty (query-migrate ram.remaining). */
    remainingBytes: z.number().nonnegative(),
    /** auto-converge: vCPU time taken from the guest (QEMU cpu-throttle-percentage). */
    cpuThrottlePercent: z.number().min(0).max(100).default(0),
    /** Estimated stop-and-copy time for what remains. */
    expectedDowntimeMs: z.number().nonnegative(),
  }),
});
