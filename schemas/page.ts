/**
 * Page requests: after a post-copy switch-over the destination faults on pages it does
 * not have (QEMU's return path, REQ_PAGES); page-request serves them, with prefetch of
 * neighbours, exactly once each.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { migrationId, vmName } from "./common.ts";

const about = (p: { migrationId: string }) => `migration/${p.migrationId}`;
const range = z.object({ offset: z.number().int().nonnegative().multipleOf(4096), length: z.number().int().positive().multipleOf(4096) });

export const pageRequested = defineEvent({
  type: "io.gangway.page.requested.v1",
  family: "page",
  subject: "gw.page.{migrationId}.requested",
  about,
  data: z.object({ migrationId, vm: vmName, block: z.string().min(1).max(255), ranges: z.array(range).min(1).max(1024), seq: z.number().int().nonnegative() }),
});

export const pageServed = defineEvent({
  type: "io.gangway.page.served.v1",
  family: "page",
  subject: "gw.page.{migrationId}.served",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    block: z.string().min(1).max(255),
    ranges: z.array(range),
    from: z.enum(["cache", "pack", "source"]),
    prefetched: z.number().int().nonnegative(),
    requestSeq: z.number().int().nonnegative(),
  }),
});
