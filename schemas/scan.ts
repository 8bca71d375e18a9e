/**
 * Scan (the gang paper's preparation phase): a host's scanner reads a VM's RAM, keys each
 * page, and publishes key batches; later scans re-key only what changed.
 * Batches are binary-mode CloudEvents: the body is `count` records of
 * be64 page offset + 16-byte key (an all-zero key marks a zero page).
 */
import { z } from "zod";
import { defineBinaryEvent, defineEvent } from "./cloudevent.ts";
import { hostName, KEY_BYTES, tenantId, vmName } from "./common.ts";

export const SCAN_RECORD_BYTES = 8 + KEY_BYTES;

type ByVm = { host: string; vm: string };
const about = (p: ByVm) => `host/${p.host}/vm/${p.vm}`;

/** Command to a host agent: scan a VM's RAM now (full, or only pages changed since the last scan). */
export const scanRequested = defineEvent({
  type: "io.gangway.scan.requested.v1",
  family: "scan",
  subject: "gw.cmd.agent.{host}.scan",
  about: (p: { host: string }) => `host/${p.host}`,
  data: z.object({ host: hostName, vm: vmName, full: z.boolean().default(false) }),
});

export const scanBatch = defineBinaryEvent({
  type: "io.gangway.scan.batch.v1",
  family: "scan",
  subject: "gw.scan.{host}.{vm}.batch",
  about,
  extensions: z.object({
    host: hostName,
    vm: vmName,
    tenant: tenantId,
    /** Scan pass number: 0 is the full scan, later passes carry changed pages only. */
    pass: z.coerce.number().int().nonnegative(),
    seq: z.coerce.number().int().nonnegative(),
    count: z.coerce.number().int().nonnegative().max(65536),
  }),
  checkBody: (body, ext) =>
    body.byteLength === ext.count * SCAN_RECORD_BYTES ? undefined : `body has ${body.byteLength} bytes, expected count ${ext.count} × ${SCAN_RECORD_BYTES}`,
});

export const scanCompleted = defineEvent({
  type: "io.gangway.scan.completed.v1",
  family: "scan",
  subject: "gw.scan.{host}.{vm}.completed",
  about,
  data: z.object({
    host: hostName,
    vm: vmName,
    tenant: tenantId,
    pass: z.number().int().nonnegative(),
    pages: z.number().int().nonnegative(),
    zeroPages: z.number().int().nonnegative(),
    changedPages: z.number().int().nonnegative(),
    batches: z.number().int().nonnegative(),
    /** Pages this pass packed and stored ahead of any migration (the destination side now holds them). */
    pagesPreseeded: z.number().int().nonnegative(),
    /**
     * A sample of the VM's content keys (those whose first byte is 0: ~1/256 of its pages), so
     * placement can see which VMs share pages without reading any memory.
     */
    sample: z.array(z.string().regex(/^[0-9a-f]{32}$/)).max(8192).default([]),
    /** Bytes this pass put on the link: look-ups, packs and the scan batches. */
    bytesSent: z.number().int().nonnegative(),
    durationMs: z.number().nonnegative(),
  }),
});
