/**
 * What the pipeline benchmark's processes tell each other: each child gets its configuration
 * as JSON in argv[2] and talks over the IPC channel (ready → go → done → stop). Every message
 * is parsed here at the boundary, in both directions.
 */
import { z } from "zod";

const common = {
  natsUrl: z.string(),
  migrationId: z.string(),
  tenant: z.string(),
};

export const sourceConfig = z.object({
  ...common,
  host: z.string(),
  targetHost: z.string(),
  vms: z.array(z.object({
    vm: z.string(),
    /** Where this side's source proxy listens (the synthetic QEMU connects to it). */
    socketPath: z.string(),
    /** Block m0 as the preparation scan reads it; absent: no preparation for this VM. */
    scanPath: z.string().optional(),
    ramBytes: z.number(),
  })),
});
export type SourceConfig = z.infer<typeof sourceConfig>;

export const destinationConfig = z.object({
  ...common,
  host: z.string(),
  sourceHost: z.string(),
  progressTimeoutMs: z.number(),
  vms: z.array(z.object({ vm: z.string(), sinkSocket: z.string() })),
});
export type DestinationConfig = z.infer<typeof destinationConfig>;

export const qemuConfig = z.object({
  vms: z.array(z.object({ vm: z.string(), streamPath: z.string(), sourceSocket: z.string(), sinkSocket: z.string() })),
});
export type QemuConfig = z.infer<typeof qemuConfig>;

export const sourceDone = z.object({
  /** Per VM, the source pipeline's own counters (SourceProgress). */
  vms: z.array(z.object({
    vm: z.string(), pages: z.number(), memory_constant: z.number(), pages_deduplicated: z.number(), pages_sent: z.number(),
    native_bytes: z.number(), bytes_on_link: z.number(), packed_raw_bytes: z.number(), packed_bytes: z.number(),
  })),
  /** Preparation (scans) before the measured migration, if any. */
  prep: z.object({ ms: z.number(), pagesPreseeded: z.number() }).optional(),
});
export type SourceDone = z.infer<typeof sourceDone>;

export const destinationDone = z.object({
  vms: z.array(z.object({ vm: z.string(), bytesWritten: z.number(), pagesWritten: z.number() })),
  packsFetched: z.number(),
  bytesFetched: z.number(),
  cacheHits: z.number(),
});
export type DestinationDone = z.infer<typeof destinationDone>;

export const qemuDone = z.object({
  vms: z.array(z.object({ vm: z.string(), pagesChecked: z.number(), pagesExpected: z.number(), deviceBytesChecked: z.number(), bytesReceived: z.number() })),
});
export type QemuDone = z.infer<typeof qemuDone>;

export const childMessage = z.discriminatedUnion("type", [
  z.object({ type: z.literal("ready"), detail: z.record(z.string(), z.unknown()).optional() }),
  z.object({ type: z.literal("done"), result: z.unknown() }),
  z.object({ type: z.literal("error"), message: z.string(), check: z.boolean() }),
]);
export type ChildMessage = z.infer<typeof childMessage>;

export const parentMessage = z.object({ type: z.enum(["go", "stop"]) });
export type ParentMessage = z.infer<typeof parentMessage>;
