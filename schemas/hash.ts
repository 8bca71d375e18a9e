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

/** Shards of the index: the key's first byte, top 2 bits. */
export const HASH_SHARDS = 4;
export const shardOfKey = (firstKeyByte: number): number => firstKeyByte >> 6;

/** Bytes of one resolution record: status byte + key. */
export const RESOLVED_RECORD_BYTES = 1 + KEY_BYTES;

const lookupExt = z.object({
  migrationId,
  vm: vmName,
  tenant: tenantId,
  /** The destination whose holdings are asked about. */
  targetHost: hostName,
  shard: z.coerce.number().int().min(0).max(HASH_SHARDS - 1),
  seq: z.coerce.number().int().nonnegative(),
  count: z.coerce.number().int().positive().max(8192),
});

/** Body: count × 16-byte keys, all of the lookup's shard. */
export const hashLookup = defineBinaryEvent({
  type: "io.gangway.hash.lookup.v1",
  family: "hash",
  subject: "gw.hash.{migrationId}.lookup.{shard}",
  about: (p: { migrationId: string; shard: string }) => `migration/${p.migrationId}`,
  extensions: lookupExt,
  checkBody: (body, ext) => {
    if (body.byteLength !== ext.count * KEY_BYTES) return `body has ${body.byteLength} bytes, expected ${ext.count} keys × ${KEY_BYTES}`;
    for (let i = 0; i < ext.count; i++) if (shardOfKey(body[i * KEY_BYTES]!) !== ext.shard) return `key ${i} is not of shard ${ext.shard}`;
    return undefined;
  },
});

/**
 * The answer, and the index's log: one subject per shard, so the shard's resolutions are
 * totally ordered and any instance can rebuild the index by reading them.
 * Body: count × (status byte + 16-byte key), in the order of the look-up's keys.
 */
export const hashResolved = defineBinaryEvent({
  type: "io.gangway.hash.resolved.v1",
  family: "hash",
  subject: "gw.hash.resolved.{shard}",
  about: (p: { shard: string }) => `dedup-index/${p.shard}`,
  extensions: lookupExt.extend({ lookupId: z.string().min(1).max(256) }),
  checkBody: (body, ext) => {
    if (body.byteLength !== ext.count * RESOLVED_RECORD_BYTES) return `body has ${body.byteLength} bytes, expected ${ext.count} records × ${RESOLVED_RECORD_BYTES}`;
    for (let i = 0; i < ext.count; i++) if (body[i * RESOLVED_RECORD_BYTES]! > 2) return `record ${i}: status ${body[i * RESOLVED_RECORD_BYTES]} is not a KeyStatus`;
    return undefined;
  },
});
