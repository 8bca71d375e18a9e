/**
 * The dedup index's state, read from its log in JetStream: per shard, the resolutions
 * (`gw.hash.resolved.<shard>`, which record claims), and the stored packs
 * (`gw.pack.*.stored`, which make keys present). Each is followed live by an ordered
 * consumer; `sync` only waits until the shard's follower has applied the last resolution
 * the stream holds (one round trip when it already has). Nothing is kept that the log does
 * not hold, so a restarted or second instance rebuilds the same view.
 */
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import type { DedupIndexView } from "../functions/hash/index.ts";
import { HASH_SHARDS, KeyStatus, KEY_BYTES, packCorrupt, packStored, RESOLVED_RECORD_BYTES, shardOfKey } from "../schemas/index.ts";
import { KeyTable } from "../kit/keyTable.ts";
import { decodeMessage } from "./events/binding.ts";
import { EVENTS_STREAM } from "./nats/resources.ts";
import { StreamFollower } from "./nats/follow.ts";

/**
 * Each shard keeps a key table per tenant: key → entry. An entry is a number so that the table needs
 * no object per key: stored in pack p is 2·p + 2, claimed by migration m (not stored yet) is
 * 2·m + 1, with packs and migrations numbered in `names`.
 */
const storedIn = (pack: number) => 2 * pack + 2;
const claimedBy = (migration: number) => 2 * migration + 1;

export interface DedupIndex extends DedupIndexView {
  close(): Promise<void>;
}

export function createDedupIndex(nc: NatsConnection): DedupIndex {
  /** Per shard, per tenant. */
  const keys = Array.from({ length: HASH_SHARDS }, () => new Map<string, KeyTable>());
  const entries = (shard: number, tenant: string): KeyTable => keys[shard]!.get(tenant) ?? keys[shard]!.set(tenant, new KeyTable(4096)).get(tenant)!;
  /** Pack and migration names, numbered (entries refer to them by number). */
  const names: string[] = [];
  const numbers = new Map<string, number>();
  const numberOf = (name: string) => numbers.get(name) ?? (numbers.set(name, names.push(name) - 1), names.length - 1);
  /** Each stored pack's keys (tenant, keys), to forget them if the pack is found damaged. */
  const keysOfPack = new Map<string, { tenant: string; keys: Uint8Array }>();
  const applied = new Array<number>(HASH_SHARDS).fill(0);
  const waiters: (() => void)[][] = Array.from({ length: HASH_SHARDS }, () => []);
  const followers: StreamFollower[] = [];
  const shardFollowers: StreamFollower[] = [];
  let started: Promise<void> | undefined;
  let packFollower: StreamFollower | undefined;
  let jsmReady: Promise<JetStreamManager> | undefined;

  // A follower picks up after the last message it applied when its consumer is lost (a
  // nats-server killed and restarted left the index stalled for good before, and every hash
  // look-up failing until the functions restarted).
  const follow = async (filter: string, onMessage: (seq: number, d: ReturnType<typeof decodeMessage>) => void): Promise<StreamFollower> => {
    const f = await StreamFollower.start(nc, { filter });
    followers.push(f);
    void (async () => {
      for await (const m of f) onMessage(m.seq, decodeMessage(m.subject, m.data, m.headers));
    })();
    return f;
  };

  const start = () =>
    (started ??= (async () => {
      for (let shard = 0; shard < HASH_SHARDS; shard++) {
        shardFollowers[shard] = await follow(`gw.hash.resolved.${shard}`, (seq, d) => {
          if (d.ok && d.event.mode === "binary") {
            const ext = d.event.ext as { tenant: string; migrationId: string; count: number };
            const body = d.event.data;
            const table = entries(shard, ext.tenant);
            const claim = claimedBy(numberOf(ext.migrationId));
            for (let i = 0; i < ext.count; i++) {
              if (body[i * RESOLVED_RECORD_BYTES] !== KeyStatus.claimed) continue;
              const at = i * RESOLVED_RECORD_BYTES + 1;
              const e = table.get(body, at);
              if (e === undefined || e % 2 === 1) table.set(body, at, claim);
            }
          }
          applied[shard] = seq;
          for (const w of waiters[shard]!.splice(0)) w();
        });
      }
      // Stored packs only turn claims into "present"; no decision waits for them. A pack a
      // destination found damaged (and removed) takes its keys with it: they are absent
      // again, so the next migration that meets them sends them.
      packFollower = await follow("gw.pack.*.*", (_seq, d) => {
        if (!d.ok || d.event.mode !== "structured") return;
        if (d.definition === packCorrupt) {
          const { pack } = d.event.data as z.infer<typeof packCorrupt.data>;
          const held = keysOfPack.get(pack);
          if (held) {
            const stored = storedIn(numberOf(pack));
            for (let at = 0; at < held.keys.byteLength; at += KEY_BYTES) {
              const table = entries(shardOfKey(held.keys[at]!), held.tenant);
              if (table.get(held.keys, at) === stored) table.delete(held.keys, at);
            }
          }
          keysOfPack.delete(pack);
          return;
        }
        if (d.definition !== packStored) return;
        const data = d.event.data as z.infer<typeof packStored.data>;
        const held = new Uint8Array(data.keys.length * KEY_BYTES);
        data.keys.forEach((k, i) => held.set(Buffer.from(k, "hex"), i * KEY_BYTES));
        const stored = storedIn(numberOf(data.pack));
        for (let at = 0; at < held.byteLength; at += KEY_BYTES) entries(shardOfKey(held[at]!), data.tenant).set(held, at, stored);
        keysOfPack.set(data.pack, { tenant: data.tenant, keys: held });
      });
    })());

  /**
   * Damage reports change answers ("present" → claim it again), so a look-up waits until the
   * pack follower has read every pack event stored before it (bounded: 3 s, then it answers
   * with what it has). A destination reports damage before it fails the migration that met it.
   */
  const packsRead = async () => {
    const until = Date.now() + 3000;
    while (Date.now() < until) {
      if ((await packFollower!.unread().catch(() => 0)) === 0) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  return {
    async sync(shard) {
      await start();
      await packsRead();
      // Made once, without the account-info round trip a new manager makes: that request
      // needs the JetStream meta leader, so on a cluster that lost a node every look-up
      // timed out until a new one was elected, although the stream itself still answered.
      const jsm = await (jsmReady ??= jetstreamManager(nc, { checkAPI: false }));
      let last = 0;
      try {
        last = (await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: `gw.hash.resolved.${shard}` }))?.seq ?? 0;
      } catch {
        last = 0; // nothing logged for this shard yet
      }
      // Bounded: a follower that stopped (connection trouble) must fail the look-up, which
      // the runtime retries, rather than hang it; one that makes no progress for 3 s is
      // started again from where it was.
      const deadline = Date.now() + 15_000;
      let progressAt = Date.now();
      let seen = applied[shard]!;
      while (applied[shard]! < last) {
        if (Date.now() > deadline) throw new Error(`dedup index shard ${shard} did not catch up with its log (at ${applied[shard]}, log at ${last})`);
        if (applied[shard]! !== seen) [seen, progressAt] = [applied[shard]!, Date.now()];
        else if (Date.now() - progressAt > 3000) {
          progressAt = Date.now();
          shardFollowers[shard]!.reopen();
        }
        await new Promise<void>((r) => {
          const t = setTimeout(r, 1000);
          waiters[shard]!.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
    },
    get(tenant, key, at = 0) {
      const e = keys[shardOfKey(key[at]!)]!.get(tenant)?.get(key, at);
      if (e === undefined) return undefined;
      return e % 2 === 0 ? { stored: true, pack: names[(e - 2) / 2]! } : { stored: false, claimedBy: names[(e - 1) / 2]! };
    },
    async close() {
      for (const f of followers) await f.close();
    },
  };
}
