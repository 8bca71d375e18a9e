/**
 * The dedup index: which content keys the destination side already holds. Look-ups are
 * batched (hundreds of keys per message), sharded by the key's first byte, and answered
 * with one status byte per key. A key is claimed exactly once: the first asker is told to
 * send the page, everyone after is told it is present or on its way.
 */
import { z } from "zod";
import { defineBinaryEvent } from "./cloudevent.ts";
import { hostName, KEY_BYTES, migrationId, tenantId, vmName } from "./common.ts";

/** Answer for one key of a look-up. */
export const KeyStatus = {
  /** The destination side holds it: reference it, do not send. */
  present: 0,
  /** Nobody had it: this asker claimed it and must send the page. */
  claimed: 1,
  /** Another VM of the gang claimed it and will send it: reference it. */
  inFlight: 2,
} as const;
export type KeyStatus = (typeof KeyStatus)[keyof typeof KeyStatus];

type ByMigration = { migrationId: string; shard: string };
const about = (p: ByMigration) => `migration/${p.migrationId}`;

const lookupExt = z.object({
  migrationId,
  vm: vmName,
  tenant: tenantId,
  /** The destination whose holdings are asked about (the index is per destination). */
  targetHost: hostName,
  shard: z.coerce.number().int().min(0).max(255),
  seq: z.coerce.number().int().nonnegative(),
  count: z.coerce.number().int().positive().max(8192),
});

/** Body: count × 16-byte keys. */
export const hashLookup = defineBinaryEvent({
  type: "io.gangway.hash.lookup.v1",
  family: "hash",
  subject: "gw.hash.{migrationId}.lookup.{shard}",
  about,
  extensions: lookupExt,
  checkBody: (body, ext) => (body.byteLength === ext.count * KEY_BYTES ? undefined : `body has ${body.byteLength} bytes, expected ${ext.count} keys × ${KEY_BYTES}`),
});

/** Body: count status bytes (KeyStatus), in the order of the look-up's keys. */
export const hashResolved = defineBinaryEvent({
  type: "io.gangway.hash.resolved.v1",
  family: "hash",
  subject: "gw.hash.{migrationId}.resolved.{shard}",
  about,
  extensions: lookupExt.extend({ lookupId: z.string().min(1).max(256) }),
  checkBody: (body, ext) => {
    if (body.byteLength !== ext.count) return `body has ${body.byteLength} bytes, expected ${ext.count} status bytes`;
    for (const b of body) if (b > 2) return `status byte ${b} is not a KeyStatus`;
    return undefined;
  },
});
