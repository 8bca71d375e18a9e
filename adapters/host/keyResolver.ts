/**
 * Asks the dedup index about content keys, batched and split by shard, and waits for the
 * answers (the hash function's resolutions, seen on a plain subscription). One resolver
 * serves every VM of a gang on this host, so look-ups of different VMs interleave.
 * An answer is taken only for the look-up it names and only if it answers that look-up's
 * keys; an unreadable message, or an answer of this migration that fits none of its
 * look-ups, is dead-lettered and the look-up waits on (answers of other migrations are
 * other resolvers' and pass by).
 */
import { randomBytes } from "node:crypto";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { HASH_SHARDS, hashLookup, KEY_BYTES, RESOLVED_RECORD_BYTES, shardOfKey } from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { deadLetterSink } from "../../infra/events/deadLetter.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";

export class KeyLookupTimeoutError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KeyLookupTimeoutError";
  }
}

export interface KeyResolver {
  /** Status (KeyStatus) of each of `count` keys packed in `keys`, in order. */
  resolve(vm: string, tenant: string, keys: Uint8Array): Promise<Uint8Array>;
  /** Bytes of look-ups published (they cross the link too). */
  readonly bytesSent: number;
  close(): void;
}

export interface KeyResolverOptions {
  migrationId: string;
  targetHost: string;
  /** Give up on an answer after this long. @default 60000 */
  timeoutMs?: number;
  /** Send a shard's look-up once this many keys wait. @default 4096 */
  coalesceKeys?: number;
  /** …or once the first waited this long. @default 3 */
  coalesceMs?: number;
}

export function createKeyResolver(nc: NatsConnection, publisher: EventPublisher, opts: KeyResolverOptions): KeyResolver {
  type Asked = { vm: string; tenant: string; shard: number; keys: Uint8Array };
  const waiters = new Map<string, { asked: Asked; resolve: (body: Uint8Array) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  const deadLetters = deadLetterSink(publisher, publisher.source, "key-resolver");
  const idPrefix = `lk-${opts.migrationId}-`;
  // Look-up ids are event ids, which JetStream deduplicates for minutes: a restarted agent
  // asking again under the same preparation id ("prep-<host>") reused "…-0" and its look-up
  // was dropped as a duplicate (never answered). The instance makes each resolver's ids its own.
  const instance = randomBytes(4).toString("hex");
  const ours = (lookupId: string) => lookupId.startsWith(idPrefix) && lookupId.includes(`-${instance}-`);
  /** Why an answer does not answer the look-up it names (or undefined). */
  const misfit = (a: Asked, ext: { vm: string; tenant: string; shard: number; count: number }, body: Uint8Array): string | undefined => {
    if (ext.vm !== a.vm || ext.tenant !== a.tenant || ext.shard !== a.shard) return `answers ${ext.vm}/${ext.tenant}/shard ${ext.shard}, the look-up asked for ${a.vm}/${a.tenant}/shard ${a.shard}`;
    if (ext.count * KEY_BYTES !== a.keys.byteLength) return `answers ${ext.count} keys, the look-up asked about ${a.keys.byteLength / KEY_BYTES}`;
    for (let i = 0; i < ext.count; i++) {
      const at = i * RESOLVED_RECORD_BYTES + 1;
      for (let b = 0; b < KEY_BYTES; b++) if (body[at + b] !== a.keys[i * KEY_BYTES + b]) return `answer record ${i} is about another key than the look-up's`;
    }
    return undefined;
  };
  const sub: Subscription = nc.subscribe("gw.hash.resolved.*", {
    callback: (err, m) => {
      if (err) return;
      const d = decodeMessage(m.subject, m.data, m.headers);
      if (!d.ok) return deadLetters(m, `unreadable dedup answer: ${d.reason}`);
      if (d.event.mode !== "binary") return;
      const ext = d.event.ext as { lookupId: string; migrationId: string; vm: string; tenant: string; shard: number; count: number };
      if (ext.migrationId !== opts.migrationId) return;
      const w = waiters.get(ext.lookupId);
      if (!w) {
        // A late or repeated answer to one of this resolver's look-ups (the hash function
        // retried, or the look-up timed out) is not foreign: it is just not needed.
        const n = ours(ext.lookupId) ? Number(ext.lookupId.slice(ext.lookupId.lastIndexOf("-") + 1)) : NaN;
        if (!(Number.isInteger(n) && n < seq)) deadLetters(m, `dedup answer ${ext.lookupId} of ${opts.migrationId} answers no look-up this resolver sent`);
        return;
      }
      const bad = misfit(w.asked, ext, d.event.data);
      if (bad) return deadLetters(m, `dedup answer ${ext.lookupId}: ${bad}`);
      waiters.delete(ext.lookupId);
      clearTimeout(w.timer);
      w.resolve(d.event.data);
    },
  });
  let seq = 0;
  let bytesSent = 0;

  const lookupShard = (vm: string, tenant: string, shard: number, keys: Uint8Array): Promise<Uint8Array> => {
    const id = `lk-${opts.migrationId}-${vm}-${instance}-${seq++}`;
    const answer = new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(id);
        reject(new KeyLookupTimeoutError(`dedup index did not answer look-up ${id} within ${opts.timeoutMs ?? 60000} ms`));
      }, opts.timeoutMs ?? 60_000);
      waiters.set(id, { asked: { vm, tenant, shard, keys }, resolve, reject, timer });
    });
    const count = keys.byteLength / KEY_BYTES;
    bytesSent += keys.byteLength;
    publisher
      .publishBinary(hashLookup, { migrationId: opts.migrationId, shard: String(shard) }, { migrationId: opts.migrationId, vm, tenant, targetHost: opts.targetHost, shard, seq, count }, keys, { id })
      .catch((err: Error) => {
        const w = waiters.get(id);
        if (w) {
          waiters.delete(id);
          clearTimeout(w.timer);
          w.reject(err);
        }
      });
    return answer;
  };

  /**
   * Look-ups are coalesced per tenant and shard: batches of different VMs and pages that
   * arrive within a moment travel as one message, because each shard answers one look-up
   * at a time and a round trip costs far more than a key.
   */
  type Part = { keys: Uint8Array; resolve: (s: Uint8Array) => void; reject: (e: Error) => void };
  const queues = new Map<string, { vm: string; tenant: string; shard: number; parts: Part[]; keys: number; timer?: NodeJS.Timeout }>();
  const flush = (qk: string) => {
    const q = queues.get(qk);
    if (!q || q.parts.length === 0) return;
    queues.delete(qk);
    if (q.timer) clearTimeout(q.timer);
    const all = new Uint8Array(q.keys * KEY_BYTES);
    let at = 0;
    for (const p of q.parts) {
      all.set(p.keys, at);
      at += p.keys.byteLength;
    }
    lookupShard(q.vm, q.tenant, q.shard, all).then(
      (body) => {
        let k = 0;
        for (const p of q.parts) {
          const n = p.keys.byteLength / KEY_BYTES;
          const st = new Uint8Array(n);
          for (let j = 0; j < n; j++) st[j] = body[(k + j) * RESOLVED_RECORD_BYTES]!;
          k += n;
          p.resolve(st);
        }
      },
      (err: Error) => q.parts.forEach((p) => p.reject(err)),
    );
  };
  const enqueue = (vm: string, tenant: string, shard: number, keys: Uint8Array) =>
    new Promise<Uint8Array>((resolve, reject) => {
      const qk = `${tenant}/${shard}`;
      // A look-up carries at most 8192 keys: send what waits before it would overflow.
      if ((queues.get(qk)?.keys ?? 0) + keys.byteLength / KEY_BYTES > 8192) flush(qk);
      let q = queues.get(qk);
      if (!q) queues.set(qk, (q = { vm, tenant, shard, parts: [], keys: 0 }));
      q.parts.push({ keys, resolve, reject });
      q.keys += keys.byteLength / KEY_BYTES;
      if (q.keys >= (opts.coalesceKeys ?? 4096)) flush(qk);
      else q.timer ??= setTimeout(() => flush(qk), opts.coalesceMs ?? 3);
    });

  return {
    get bytesSent() {
      return bytesSent;
    },
    async resolve(vm, tenant, keys) {
      const count = keys.byteLength / KEY_BYTES;
      const byShard: number[][] = Array.from({ length: HASH_SHARDS }, () => []);
      for (let i = 0; i < count; i++) byShard[shardOfKey(keys[i * KEY_BYTES]!)]!.push(i);
      const statuses = new Uint8Array(count);
      await Promise.all(
        byShard.map(async (idx, shard) => {
          if (idx.length === 0) return;
          const part = new Uint8Array(idx.length * KEY_BYTES);
          idx.forEach((i, j) => part.set(keys.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES), j * KEY_BYTES));
          const st = await enqueue(vm, tenant, shard, part);
          idx.forEach((i, j) => (statuses[i] = st[j]!));
        }),
      );
      return statuses;
    },
    close() {
      sub.unsubscribe();
      for (const [, w] of waiters) {
        clearTimeout(w.timer);
        w.reject(new Error("key resolver closed"));
      }
      waiters.clear();
    },
  };
}
