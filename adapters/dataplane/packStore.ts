/**
 * The page-pack store: a JetStream object store, content-addressed. Uses node's SHA-256
 * for the store's checksums (the client's default pure-JS one runs at ~60 MB/s here).
 */
import { createHash } from "node:crypto";
import { jetstream, jetstreamManager, type DirectStreamAPI, type StoredMsg } from "@nats-io/jetstream";
import { Base64UrlPaddedCodec, Objm, setSha256Backend, type ObjectStore } from "@nats-io/obj";
import { z } from "zod";
import type { NatsConnection } from "@nats-io/transport-node";
import { PACK_STORE } from "../../infra/nats/resources.ts";
import { packNameOf, PagePackError } from "./pagePack.ts";
import { createLogger, type Logger } from "../../infra/log.ts";

setSha256Backend("native");

export interface PackStore {
  /** Stores a pack unless one of that name is there already; returns true if it wrote. */
  put(name: string, bytes: Uint8Array): Promise<boolean>;
  /** The pack's bytes, checked against its content address; null if absent. */
  get(name: string): Promise<Uint8Array | null>;
  /** Removes a pack found damaged, so that a later put stores it again. */
  remove(name: string): Promise<void>;
  /** Overwrites a pack as it is (fault injection in tests, nothing else). */
  putUnchecked(name: string, bytes: Uint8Array): Promise<void>;
  /** Other migration objects (device state): stored and read as they are. */
  putObject(name: string, bytes: Uint8Array): Promise<void>;
  getObject(name: string): Promise<Uint8Array | null>;
}

/**
 * A pack (~1 MiB) or a device state as one chunk where the server allows it (the client
 * clamps this to the server's max_payload): the default 128 KiB made eight acknowledged
 * publishes and eight consumer deliveries of every pack.
 */
const CHUNK_BYTES = 2 * 1024 * 1024;
const meta = (name: string) => ({ name, options: { max_chunk_size: CHUNK_BYTES } });

/** The object store's stream, which direct gets name. */
const OBJ_STREAM = `OBJ_${PACK_STORE}`;

/** Errors of a server that is briefly unable to answer (a cluster electing leaders). */
const TRANSIENT = new Set(["TimeoutError", "NoRespondersError", "JetStreamNotEnabled", "ObjectIncompleteError"]);

/** A chunk the answering server does not hold yet (a replica behind its leader): read again. */
class ObjectIncompleteError extends Error {
  override name = "ObjectIncompleteError";
}

/** The part of an object's meta a read needs (the client's ObjectInfo, as stored). */
const ObjectMeta = z.object({ nuid: z.string(), size: z.number(), chunks: z.number(), digest: z.string(), deleted: z.boolean().optional() });

/**
 * An object's meta by a direct get too: the JetStream API (the client's info) answers requests
 * one after another, behind the consumer creations of every follower, and under load its
 * answers came after the 5 s time-out. A replica may not have a new object yet: "absent" is
 * asked of the stream's leader before it is believed.
 */
async function objectMeta(os: ObjectStore, direct: DirectStreamAPI, name: string): Promise<z.infer<typeof ObjectMeta> | null> {
  const m = await direct.getMessage(OBJ_STREAM, { last_by_subj: `$O.${PACK_STORE}.M.${Base64UrlPaddedCodec.encode(name)}` });
  if (m !== null) return ObjectMeta.parse(m.json());
  const info = await os.info(name);
  return info === null ? null : ObjectMeta.parse(info);
}

/**
 * Reads an object by direct gets: one request for a one-chunk object (every pack; the meta
 * look-up aside), a few for a larger one. The client's own read creates an ordered push
 * consumer per object, and a destination prefetching dozens of packs at once on a busy host
 * created dozens of consumers: their creation timed out, or their first chunk never came in
 * 20 s (97 failed reads in an 8-run soak, several of them in a downtime). A direct get is a
 * request answered from the stream's store, with no consumer to create, place or delete.
 */
async function readObject(os: ObjectStore, direct: DirectStreamAPI, name: string): Promise<Uint8Array | null> {
  const info = await objectMeta(os, direct, name);
  if (info === null || info.deleted) return null;
  if (info.size === 0) return new Uint8Array(0);
  const subject = `$O.${PACK_STORE}.C.${info.nuid}`;
  const last = await direct.getMessage(OBJ_STREAM, { last_by_subj: subject });
  if (last === null) throw new ObjectIncompleteError(`object ${name}: no chunk of it is stored yet`);
  let chunks: StoredMsg[] = [last];
  if (info.chunks > 1) {
    // Its chunks were published one after another just before its last: look a little back.
    for (let span = info.chunks * 4 + 64; ; span *= 4) {
      const from = Math.max(1, last.seq - span);
      chunks = [];
      for (let seq = from; seq <= last.seq; ) {
        const m = await direct.getMessage(OBJ_STREAM, { seq, next_by_subj: subject });
        if (m === null || m.seq > last.seq) break;
        chunks.push(m);
        seq = m.seq + 1;
      }
      if (chunks.length >= info.chunks || from === 1) break;
    }
    if (chunks.length < info.chunks) throw new ObjectIncompleteError(`object ${name}: ${chunks.length} of its ${info.chunks} chunks are stored`);
    chunks = chunks.slice(-info.chunks);
  }
  const bytes = Buffer.concat(chunks.map((c) => c.data));
  if (bytes.byteLength !== info.size) throw new Error(`object ${name} is ${bytes.byteLength} bytes, its meta says ${info.size}`);
  const digest = `SHA-256=${createHash("sha256").update(bytes).digest("base64url")}`;
  if (digest.replace(/=+$/, "") !== info.digest.replace(/=+$/, "")) throw new Error(`object ${name} is corrupt: ${digest}, its meta says ${info.digest}`);
  return bytes;
}

/**
 * Runs a store operation, again on a transient error: after a node of a cluster dies, a
 * request for an object's chunks can go unanswered for a few seconds (a consumer placed on
 * the dead node), which failed a whole migration although the store still held everything.
 */
async function retried<T>(op: () => Promise<T>, log: Logger, what: string, attempts = 4): Promise<T> {
  for (let i = 1; ; i++) {
    const t0 = Date.now();
    try {
      return await op();
    } catch (err) {
      if (i >= attempts || !TRANSIENT.has((err as Error).name)) throw err;
      log.warn("object store operation failed; retrying", { what, attempt: i, ms: Date.now() - t0, error: err });
      await new Promise((r) => setTimeout(r, 500 * 2 ** (i - 1)));
    }
  }
}

/**
 * Object reads in flight on one connection. A direct get's answer is not flow-controlled: 300
 * 1 MB answers asked at once pile up in the server's buffer for a busy client past its
 * max_pending (64 MB), and the server closes the connection as a slow consumer; every answer
 * in flight is lost and ends in a time-out (645 in a 30-run soak). 16 packs ≈ 16 MiB.
 */
const READS_IN_FLIGHT = 16;

/** Runs at most `n` of the operations given to it at once, the rest in order of arrival. */
function limiter(n: number): <T>(op: () => Promise<T>) => Promise<T> {
  let running = 0;
  const queue: (() => void)[] = [];
  return async (op) => {
    if (running >= n) await new Promise<void>((r) => queue.push(r));
    else running++;
    try {
      return await op();
    } finally {
      const next = queue.shift();
      if (next) next();
      else running--;
    }
  };
}

export async function openPackStore(nc: NatsConnection, opts: { domain?: string; readTimeoutMs?: number; log?: Logger } = {}): Promise<PackStore> {
  const log = opts.log ?? createLogger({ component: "packStore" });
  // Each request of a read (meta, chunk: one message each) gives up after this long, and is
  // retried: an answer lost (a reconnect) costs this, not the 20 s a whole read once had.
  const timeout = opts.readTimeoutMs ?? 8_000;
  const js = jetstream(nc, opts.domain ? { domain: opts.domain } : {});
  const { direct } = await jetstreamManager(nc, { ...(opts.domain ? { domain: opts.domain } : {}), timeout });
  const os: ObjectStore = await new Objm(js).open(PACK_STORE);
  const reading = limiter(READS_IN_FLIGHT);
  return {
    async put(name, bytes) {
      return retried(async () => {
        const info = await os.info(name);
        if (info && !info.deleted) return false;
        await os.putBlob(meta(name), bytes);
        return true;
      }, log, `put ${name}`);
    },
    async get(name) {
      const bytes = await retried(() => reading(() => readObject(os, direct, name)), log, `get ${name}`);
      if (bytes === null) return null;
      const actual = packNameOf(bytes);
      if (actual !== name) throw new PagePackError(`pack ${name} is corrupt: its content hashes to ${actual}`);
      return bytes;
    },
    async remove(name) {
      await retried(() => os.delete(name), log, `remove ${name}`);
    },
    async putUnchecked(name, bytes) {
      await os.putBlob(meta(name), bytes);
    },
    async putObject(name, bytes) {
      await retried(() => os.putBlob(meta(name), bytes), log, `put ${name}`);
    },
    getObject: (name) => retried(() => reading(() => readObject(os, direct, name)), log, `get ${name}`),
  };
}
