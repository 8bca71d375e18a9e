/**
 * hash: the dedup index answers batched look-ups. Identical pages across the VMs of a gang
 * are sent once: the first VM to ask for a key claims it and sends the page; every later
 * ask, from any VM, references it (gang migration, HPDC'11). Keys already stored in a page
 * pack for the tenant are present and never sent again (IRLM's per-rack index: a second
 * gang to the same place sends only what is new).
 *
 * One function per shard of the key space, each handling its look-ups one at a time across
 * all instances (exclusive), so claims are decided in one order: the shard's resolutions
 * are its log, and any instance rebuilds the index from that log before it answers.
 */
import { hashLookup, hashResolved, HASH_SHARDS, KeyStatus, KEY_BYTES, RESOLVED_RECORD_BYTES } from "../../schemas/index.ts";
import { KeyTable } from "../../kit/keyTable.ts";
import { defineFunction, type FunctionDefinition } from "../../kit/index.ts";

/** What the index knows of one key in one tenant's scope. */
export interface IndexedKey {
  /** A page pack holding it is stored. */
  stored: boolean;
  /** The migration whose VM claimed it (and will store it), if not stored yet. */
  claimedBy?: string;
  /** The pack that holds it, once stored. */
  pack?: string;
}

/** The index as the hash function sees it: a view of the log, brought up to date on demand. */
export interface DedupIndexView {
  /** Reads every resolution (and stored pack) logged so far for this shard into the view. */
  sync(shard: number): Promise<void>;
  /** What is known of the key at `key[at…at+16)`. */
  get(tenant: string, key: Uint8Array, at?: number): IndexedKey | undefined;
}

export function createHashFunctions(index: DedupIndexView): FunctionDefinition<typeof hashLookup>[] {
  return Array.from({ length: HASH_SHARDS }, (_, shard) =>
    defineFunction({
      id: `hash-${shard}`,
      description: `dedup index, shard ${shard}: claim or reference each looked-up key`,
      trigger: hashLookup,
      filter: `gw.hash.*.lookup.${shard}`,
      exclusive: true,
      effectsAreEmittedOnly: true,
      retry: { maxAttempts: 10, backoffMs: 100 },
      async handler(event, ctx) {
        const { ext, data } = event;
        await index.sync(shard);
        const out = new Uint8Array(ext.count * RESOLVED_RECORD_BYTES);
        const inThisBatch = new KeyTable(ext.count);
        let claimed = 0;
        for (let i = 0; i < ext.count; i++) {
          const at = i * KEY_BYTES;
          const known = index.get(ext.tenant, data, at);
          let status: KeyStatus;
          if (known?.stored) status = KeyStatus.present;
          else if (inThisBatch.has(data, at) || known?.claimedBy === ext.migrationId) status = KeyStatus.inFlight;
          else {
            // Unknown, or claimed by another migration that may never store it: claim it.
            status = KeyStatus.claimed;
            claimed++;
          }
          inThisBatch.set(data, at, 1);
          out[i * RESOLVED_RECORD_BYTES] = status;
          out.set(data.subarray(at, at + KEY_BYTES), i * RESOLVED_RECORD_BYTES + 1);
        }
        ctx.log.debug("resolved", { shard, count: ext.count, claimed });
        ctx.emitBinary(hashResolved, { shard: String(shard) }, { ...ext, lookupId: event.id }, out);
      },
    }),
  );
}
