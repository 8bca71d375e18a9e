/**
 * The page-pack store: a JetStream object store, content-addressed. Uses node's SHA-256
 * for the store's checksums (the client's default pure-JS one runs at ~60 MB/s here).
 */
import { jetstream } from "@nats-io/jetstream";
import { Objm, setSha256Backend, type ObjectStore } from "@nats-io/obj";
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

/** Errors of a server that is briefly unable to answer (a cluster electing leaders). */
const TRANSIENT = new Set(["TimeoutError", "NoRespondersError", "JetStreamNotEnabled"]);

/**
 * Reads an object, giving up after `timeoutMs`: the client reads chunks through a push
 * consumer and waits for them without a limit, so a read that stalls (a paused or lost
 * server) would hold a destination for good. The read is cancelled (its consumer stops) and
 * fails as a time-out, which is retried.
 */
async function readObject(os: ObjectStore, name: string, timeoutMs: number, log: Logger): Promise<Uint8Array | null> {
  const t0 = Date.now();
  const r = await os.get(name);
  if (r === null) return null;
  const reader = r.data.getReader();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void reader.cancel().catch(() => undefined);
  }, timeoutMs);
  try {
    const parts: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.byteLength;
    }
    log.debug("object read", { name, ms: Date.now() - t0, chunks: parts.length, bytes: size, expected: r.info.size, timedOut });
    if (timedOut) {
      log.warn("object read timed out", { name, ms: Date.now() - t0, chunks: parts.length, bytes: size, expected: r.info.size });
      const e = new Error(`reading object ${name} took longer than ${timeoutMs} ms`);
      e.name = "TimeoutError";
      throw e;
    }
    const err = await r.error;
    if (err) throw err;
    return Buffer.concat(parts, size);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs a store operation, again on a transient error: after a node of a cluster dies, a
 * request for an object's chunks can go unanswered for a few seconds (a consumer placed on
 * the dead node), which failed a whole migration although the store still held everything.
 */
async function retried<T>(op: () => Promise<T>, log: Logger, what: string, attempts = 4): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= attempts || !TRANSIENT.has((err as Error).name)) throw err;
      log.warn("object store operation failed; retrying", { what, attempt: i, error: err });
      await new Promise((r) => setTimeout(r, 500 * 2 ** (i - 1)));
    }
  }
}

export async function openPackStore(nc: NatsConnection, opts: { domain?: string; readTimeoutMs?: number; log?: Logger } = {}): Promise<PackStore> {
  const log = opts.log ?? createLogger({ component: "packStore" });
  const readTimeoutMs = opts.readTimeoutMs ?? 20_000;
  const js = jetstream(nc, opts.domain ? { domain: opts.domain } : {});
  const os: ObjectStore = await new Objm(js).open(PACK_STORE);
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
      const bytes = await retried(() => readObject(os, name, readTimeoutMs, log), log, `get ${name}`);
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
    getObject: (name) => retried(() => readObject(os, name, readTimeoutMs, log), log, `get ${name}`),
  };
}
