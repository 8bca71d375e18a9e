/**
 * Page requests: after a post-copy switch-over the destination faults on pages it does
 * not have (QEMU's return path, REQ_PAGES); page-request serves them, with prefetch of
 * neighbours, exactly once each.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { hostName, migrationId, vmName } from "./common.ts";

const about = (p: { migrationId: string }) => `migration/${p.migrationId}`;
const range = z.object({ offset: z.number().int().nonnegative().multipleOf(4096), length: z.number().int().positive().multipleOf(4096) });

export const pageRequested = defineEvent({
  type: "io.gangway.page.requested.v1",
  family: "page",
  subject: "gw.page.{migrationId}.requested",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    block: z.string().min(1).max(255),
    /** Size of the block, so that prefetch never asks past its end (QEMU fails a migration that does). */
    blockBytes: z.number().int().positive(),
    ranges: z.array(range).min(1).max(1024),
    seq: z.number().int().nonnegative(),
  }),
});

/**
 * Requested pages reached the manifest after the switch-over: `fromDestination` of them
 * were already held at the destination (its page cache or the packs: only their key
 * crossed), `fromSource` crossed as content.
 */
export const pageServed = defineEvent({
  type: "io.gangway.page.served.v1",
  family: "page",
  subject: "gw.page.{migrationId}.served",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    block: z.string().min(1).max(255),
    ranges: z.array(range).max(4096),
    fromDestination: z.number().int().nonnegative(),
    fromSource: z.number().int().nonnegative(),
  }),
});

/** The pages a destination never got because post-copy broke off (the VM is lost). */
export const pageMissing = defineEvent({
  type: "io.gangway.page.missing.v1",
  family: "page",
  subject: "gw.page.{migrationId}.missing",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    targetHost: hostName,
    /** Pages of guest RAM the destination does not hold. */
    pages: z.number().int().nonnegative(),
    /** The first ranges of them (bytes of block `block`). */
    block: z.string().min(1).max(255),
    ranges: z.array(range).max(1024),
    reason: z.string().min(1).max(2000),
  }),
});
