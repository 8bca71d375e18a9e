/**
 * The dedup index's state, read from its log in JetStream: per shard, the resolutions
 * (`gw.hash.resolved.<shard>`, which record claims), and the stored packs
 * (`gw.pack.*.stored`, which make keys present). Nothing is kept that the log does not
 * hold, so a restarted or second instance rebuilds the same view.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { DedupIndexView, IndexedKey } from "../functions/hash/index.ts";
import { HASH_SHARDS, KeyStatus, KEY_BYTES, RESOLVED_RECORD_BYTES, shardOfKey, type packStored } from "../schemas/index.ts";
import type { z } from "zod";
import { readEvents } from "./events/reader.ts";
import { EVENTS_STREAM } from "./nats/resources.ts";

const scoped = (tenant: string, key: Uint8Array | string) => `${tenant}/${typeof key === "string" ? key : Buffer.from(key).toString("hex")}`;

export function createDedupIndex(nc: NatsConnection): DedupIndexView {
  const shards = Array.from({ length: HASH_SHARDS }, () => ({ keys: new Map<string, IndexedKey>(), appliedSeq: 0 }));
  let packsAppliedSeq = 0;

  const applyStored = (data: z.infer<typeof packStored.data>) => {
    for (const k of data.keys) {
      const shard = shards[shardOfKey(parseInt(k.slice(0, 2), 16))]!;
      shard.keys.set(scoped(data.tenant, k), { stored: true });
    }
  };

  return {
    async sync(shard) {
      const s = shards[shard]!;
      const jsm = await jetstreamManager(nc);
      const subject = `gw.hash.resolved.${shard}`;
      let last = 0;
      try {
        last = (await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: subject }))?.seq ?? 0;
      } catch {
        last = 0; // nothing logged for this shard yet
      }
      if (last > s.appliedSeq) {
        for await (const e of readEvents(nc, { filter: subject, startSeq: s.appliedSeq + 1 })) {
          s.appliedSeq = e.seq;
          if (!e.result.ok || e.result.event.mode !== "binary") continue;
          const ext = e.result.event.ext as { tenant: string; migrationId: string; count: number };
          const body = e.result.event.data;
          for (let i = 0; i < ext.count; i++) {
            if (body[i * RESOLVED_RECORD_BYTES] !== KeyStatus.claimed) continue;
            const key = body.subarray(i * RESOLVED_RECORD_BYTES + 1, i * RESOLVED_RECORD_BYTES + 1 + KEY_BYTES);
            const id = scoped(ext.tenant, key);
            if (!s.keys.get(id)?.stored) s.keys.set(id, { stored: false, claimedBy: ext.migrationId });
          }
          if (e.seq >= last) break;
        }
      }
      // Stored packs: not needed for exactly-once claims, only to say "present"; read what is there.
      for await (const e of readEvents(nc, { filter: "gw.pack.*.stored", startSeq: packsAppliedSeq + 1 })) {
        packsAppliedSeq = e.seq;
        if (e.result.ok && e.result.event.mode === "structured") applyStored(e.result.event.data as z.infer<typeof packStored.data>);
      }
    },
    get(tenant, key) {
      return shards[shardOfKey(key[0]!)]!.keys.get(scoped(tenant, key));
    },
  };
}
