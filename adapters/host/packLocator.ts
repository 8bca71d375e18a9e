/**
 * Where each page lives on the destination side: a page cache by content key (pages that
 * another VM of this or an earlier gang brought are not fetched again) and, behind it, the
 * page packs, found through the `gw.pack.*.stored` log. A fetched pack is checked page by
 * page against its keys before any of its pages is used: a corrupted or wrong-key pack can
 * never reach a VM.
 */
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import { packCorrupt, packStored } from "../../schemas/index.ts";
import { decodeMessage, type DecodeResult } from "../../infra/events/binding.ts";
import { deadLetterSink, liveDeadLetters, type DeadLetterSink } from "../../infra/events/deadLetter.ts";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { KEY_BYTES, PAGE_SIZE, keyFromHex, type PageKeyer } from "../dataplane/contentKey.ts";
import { KeyTable } from "../../kit/keyTable.ts";
import { decodePack, PagePackError } from "../dataplane/pagePack.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import { createLogger } from "../../infra/log.ts";

export class PageUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PageUnavailableError";
  }
}

export interface PageSource {
  /**
   * The page with this key (hex) for this tenant; waits for its pack to be stored. A key whose
   * pack was found damaged before `since` (an earlier migration's find, whose source will send
   * it again) waits for its new pack too; one found damaged since fails at once.
   */
  page(tenant: string, keyHexStr: string, keyer: PageKeyer, timeoutMs: number, since?: number): Promise<Buffer>;
  /**
   * The page with the key at `key[at…at+16)` if a fetched pack holds it, else undefined: the
   * common case of the destination's path, without a promise or a hex string per page.
   */
  cached(tenant: string, key: Uint8Array, at?: number): Buffer | undefined;
  /**
   * Fetches every pack a migration (or a preparation pass, "prep-<host>") stored or stores
   * for this tenant — of VM `vm` only if given — as soon as it is announced, so the
   * destination keeps pace with the source instead of fetching when the manifest asks.
   * Until stopPrefetch.
   */
  prefetch(migrationId: string, tenant: string, keyer: PageKeyer, vm?: string): void;
  /**
   * Fetches the packs that hold these keys (n × 16 bytes: a VM's content as its source host's
   * scans last saw it), in their order, and every pack preparation pass `passId` stores for VM
   * `vm` from now on — not the packs of earlier passes whose pages the VM no longer holds.
   * Until stopPrefetch(passId).
   */
  prefetchContent(passId: string, tenant: string, keyer: PageKeyer, vm: string, keys: Uint8Array): void;
  stopPrefetch(migrationId: string): void;
  /** Drops the cached pages (between migrations; the packs still hold them). */
  clearCache(): void;
  /** Packs fetched and their bytes (what crossed into the destination). */
  readonly stats: { packsFetched: number; bytesFetched: number; cacheHits: number };
  close(): Promise<void>;
}

/** A stored pack found damaged: who stored it (a migration or "prep-<host>") and why it fails. */
export interface CorruptPack {
  migrationId: string;
  tenant: string;
  pack: string;
  reason: string;
}

/**
 * Why a message on gw.pack.*.stored is not a pack announcement to act on, or undefined.
 * The subject's migration must be the one the data names (binding checks it too), and the
 * announcement must come from the host it says stored the pack.
 */
export function refusedAnnouncement(d: DecodeResult): string | undefined {
  if (!d.ok) return `unreadable pack announcement: ${d.reason}`;
  if (d.definition !== packStored || d.event.mode !== "structured") return `${d.event.type} is not a pack announcement`;
  const data = d.event.data as z.infer<typeof packStored.data>;
  if (d.event.source !== `gangway/host/${data.sourceHost}`) return `pack announcement of ${data.migrationId} sent by ${d.event.source}, not by its source host ${data.sourceHost}`;
  return undefined;
}

export interface PageSourceOptions {
  /** A damaged pack to report (remove, announce): the fetch that found it fails once this settles. */
  onCorrupt?: (c: CorruptPack) => void | Promise<void>;
  /** Where refused announcements go. @default gw.dlq.pack, published on `nc` as "gangway/host/<host>" */
  deadLetters?: DeadLetterSink;
  /** This host (the source of its dead letters). */
  host?: string;
}

export async function openPageSource(nc: NatsConnection, packs: PackStore, o: PageSourceOptions = {}): Promise<PageSource> {
  const dlog = createLogger({ component: "packLocator" });
  /** Pages of fetched packs, by tenant: key → slot (slab index × SLAB_PAGES + page in it). */
  const cache = new Map<string, KeyTable>();
  /** The page bytes of each fetched pack (nothing else writes them). */
  const slabs: Buffer[] = [];
  const SLAB_PAGES = 65536;
  const cachedPage = (tenant: string, key: Uint8Array, at = 0): Buffer | undefined => {
    const slot = cache.get(tenant)?.get(key, at);
    if (slot === undefined) return undefined;
    const page = slot % SLAB_PAGES;
    return slabs[(slot - page) / SLAB_PAGES]!.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  };
  // Which pack holds each key ever announced, by tenant: a key table (typed arrays) and pack
  // numbers, not a string per key — a long-lived destination learns millions of keys, and as a
  // Map of strings they made the agent grow past 1.8 GB in a soak and its collections slow.
  const located = new Map<string, KeyTable>();
  const packNames: string[] = [];
  const packNumbers = new Map<string, number>();
  const locate = (tenant: string, key: Uint8Array, at = 0): string | undefined => {
    const n = located.get(tenant)?.get(key, at);
    return n === undefined ? undefined : packNames[n];
  };
  const setLocated = (tenant: string, key: Uint8Array, pack: string) => {
    let n = packNumbers.get(pack);
    if (n === undefined) packNumbers.set(pack, (n = packNames.push(pack) - 1));
    (located.get(tenant) ?? located.set(tenant, new KeyTable(65536)).get(tenant)!).set(key, 0, n);
  };
  const scratchKey = Buffer.alloc(KEY_BYTES);
  const waiting = new Map<string, (() => void)[]>();
  const fetching = new Map<string, Promise<void>>();
  const stats = { packsFetched: 0, bytesFetched: 0, cacheHits: 0 };
  /**
   * Per migration (or preparation pass): what to prefetch, by tenant and VM ("" = every VM);
   * `sinceNs`: only packs announced from then on (what came before was chosen by content).
   */
  const prefetching = new Map<string, { tenant: string; vm: string; keyer: PageKeyer; sinceNs?: bigint }[]>();
  const wanted = (migrationId: string, tenant: string, vm: string) => prefetching.get(migrationId)?.find((w) => w.tenant === tenant && (w.vm === "" || w.vm === vm));
  /** False if already prefetched (this VM, or every VM of the tenant): nothing to add. */
  const registerPrefetch = (owner: string, w: { tenant: string; vm: string; keyer: PageKeyer; sinceNs?: bigint }): boolean => {
    if (wanted(owner, w.tenant, w.vm)) return false;
    (prefetching.get(owner) ?? prefetching.set(owner, []).get(owner)!).push(w);
    return true;
  };
  /** Packs announced so far, by the migration (or preparation pass) that stored them. */
  const packsOf = new Map<string, { tenant: string; vm: string; pack: string }[]>();
  /** Who announced each pack (the first announcement). */
  const storedBy = new Map<string, string>();
  /** Packs found damaged (or announced but gone), and when: not fetched again until announced anew. */
  const damaged = new Map<string, number>();
  // At most two prefetches at once: the manifest's own fetches must not queue behind many.
  const prefetchChain: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  let nextLane = 0;

  // Picks up where it was when its consumer is lost (a server restarted, a cluster node died).
  // Announcements of packs stored, and of packs found damaged (and removed) by any destination:
  // a locator that starts later must not send its keys to a pack that is gone.
  const messages = await StreamFollower.start(nc, { filter: "gw.pack.*.*" });
  const deadLetters = liveDeadLetters(o.deadLetters ?? deadLetterSink(jetstream(nc), `gangway/host/${o.host ?? "destination"}`, "pack-locator"));
  const follow = (async () => {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      if (d.ok && d.definition === packCorrupt && d.event.mode === "structured") {
        const c = d.event.data as z.infer<typeof packCorrupt.data>;
        if (d.event.source === `gangway/host/${c.reportedBy}` && !damaged.has(c.pack)) damaged.set(c.pack, Number(BigInt(m.info.timestampNanos) / 1_000_000n));
        continue;
      }
      const refused = refusedAnnouncement(d);
      if (refused) {
        deadLetters(m, refused);
        continue;
      }
      if (!d.ok || d.event.mode !== "structured") continue;
      const data = d.event.data as z.infer<typeof packStored.data>;
      const list = packsOf.get(data.migrationId) ?? packsOf.set(data.migrationId, []).get(data.migrationId)!;
      list.push({ tenant: data.tenant, vm: data.vm, pack: data.pack });
      if (!storedBy.has(data.pack)) storedBy.set(data.pack, data.migrationId);
      // Announced again after it was found damaged (and removed): stored anew, usable again.
      damaged.delete(data.pack);
      const pre = wanted(data.migrationId, data.tenant, data.vm);
      if (pre && (pre.sinceNs === undefined || BigInt(m.info.timestampNanos) >= pre.sinceNs)) queuePrefetch(data.migrationId, data.tenant, data.pack, pre.keyer);
      for (const k of data.keys) {
        scratchKey.write(k, "hex");
        // A key whose pack was found damaged moves to the pack that stores it again.
        const holder = locate(data.tenant, scratchKey);
        if (holder === undefined || damaged.has(holder)) setLocated(data.tenant, scratchKey, data.pack);
        if (waiting.size === 0) continue;
        const id = `${data.tenant}/${k}`;
        const w = waiting.get(id);
        if (w) {
          waiting.delete(id);
          for (const f of w) f();
        }
      }
    }
  })();

  function queuePrefetch(owner: string, tenant: string, pack: string, keyer: PageKeyer): void {
    const lane = nextLane++ % prefetchChain.length;
    // Still wanted when its turn comes: a prefetch stopped (its migrations ended, the cache
    // cleared) must not go on filling the cache with packs nobody asks for.
    prefetchChain[lane] = prefetchChain[lane]!.then(() => (prefetching.has(owner) ? fetchPack(tenant, pack, keyer).catch(() => undefined) : undefined));
  }

  // Its keys stay located on it, so that a page asked for fails at once (not after waiting for
  // an announcement that may never come); a later announcement of a key moves it.
  // The migration that met the damage fails only once the damage is reported (at most 5 s):
  // a rollback announced before the report let the next migration's look-ups be answered by
  // an index that had not heard of it yet ("present"), and the pages were never sent again.
  const reports = new Map<string, Promise<void>>();
  const reportDamage = (tenant: string, name: string, err: Error): Promise<void> => {
    if (damaged.has(name)) return reports.get(name) ?? Promise.resolve();
    damaged.set(name, Date.now());
    const report = Promise.race([
      Promise.resolve(o.onCorrupt?.({ migrationId: storedBy.get(name) ?? "unknown", tenant, pack: name, reason: err.message })).catch(() => undefined),
      new Promise<void>((r) => setTimeout(r, 5000).unref()),
    ]);
    reports.set(name, report);
    return report;
  };

  function fetchPack(tenant: string, name: string, keyer: PageKeyer): Promise<void> {
    if (damaged.has(name)) return (reports.get(name) ?? Promise.resolve()).then(() => Promise.reject(new PagePackError(`page pack ${name} was found damaged or missing`)));
    let f = fetching.get(name);
    if (!f) {
      f = (async () => {
        const t0 = Date.now();
        // The object store's own checksum may catch the damage first: that is a damaged pack
        // too (reported and removed like one) — if it holds on two more reads, since a read
        // served while a cluster node rejoins can be refused once (fault case 14).
        const bytes = await (async () => {
          for (let attempt = 1; ; attempt++) {
            try {
              return await packs.get(name);
            } catch (err) {
              if (!/corrupt object|digests do not match/.test((err as Error).message)) throw err;
              if (attempt === 3) throw new PagePackError(`pack ${name} is corrupt: the object store's checksum does not match its bytes`);
              dlog.warn("pack read refused by the object store's checksum; reading again", { pack: name, attempt });
              await new Promise((r) => setTimeout(r, 1000));
            }
          }
        })();
        const t1 = Date.now();
        if (!bytes) throw new PageUnavailableError(`page pack ${name} is announced but not in the store`);
        // Damage found here (a payload that does not decode, a page that does not match its
        // key) names the pack as the store's checks do.
        const corrupt = (reason: string) => new PagePackError(`pack ${name} is corrupt: ${reason}`);
        let pack: ReturnType<typeof decodePack>;
        try {
          pack = decodePack(bytes);
        } catch (err) {
          throw err instanceof PagePackError ? corrupt(err.message) : err;
        }
        stats.packsFetched++;
        stats.bytesFetched += bytes.byteLength;
        if (pack.count > SLAB_PAGES) throw corrupt(`it holds ${pack.count} pages, more than ${SLAB_PAGES}`);
        const check = new Uint8Array(KEY_BYTES);
        // The cached pages are views of the pack's own page bytes (a buffer of its own, nothing
        // else writes it): a copy per page was a 4 KiB allocation each, which made the
        // destination spend a fifth of its CPU allocating and collecting while it fell behind.
        const slab = Buffer.from(pack.pages.buffer, pack.pages.byteOffset, pack.count * PAGE_SIZE);
        const keys = Buffer.from(pack.keys.buffer, pack.keys.byteOffset, pack.keys.byteLength);
        for (let i = 0; i < pack.count; i++) {
          keyer.keyInto(slab.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), check, 0);
          if (keys.compare(check, 0, KEY_BYTES, i * KEY_BYTES, (i + 1) * KEY_BYTES) !== 0) {
            throw corrupt(`page ${i} does not match its key ${keys.toString("hex", i * KEY_BYTES, (i + 1) * KEY_BYTES)}`);
          }
        }
        // Only a pack whose every page matched is used at all.
        const table = cache.get(tenant) ?? cache.set(tenant, new KeyTable(4096)).get(tenant)!;
        const base = slabs.push(slab) - 1;
        for (let i = 0; i < pack.count; i++) table.set(keys, i * KEY_BYTES, base * SLAB_PAGES + i);
        dlog.debug("pack fetched and checked", { pack: name, getMs: t1 - t0, checkMs: Date.now() - t1, pages: pack.count, bytes: bytes.byteLength });
      })();
      // A failed fetch may be retried by a later request; a damaged pack is reported once.
      f = f.catch(async (err: Error) => {
        fetching.delete(name);
        if (err instanceof PagePackError) await reportDamage(tenant, name, err);
        // Announced but gone (removed as damaged): treated alike, without a report.
        else if (err instanceof PageUnavailableError && !damaged.has(name)) damaged.set(name, Date.now());
        throw err;
      });
      fetching.set(name, f);
    }
    return f;
  }

  return {
    stats,
    prefetch(migrationId, tenant, keyer, vm = "") {
      if (!registerPrefetch(migrationId, { tenant, vm, keyer })) return;
      for (const p of packsOf.get(migrationId) ?? []) if (p.tenant === tenant && (vm === "" || p.vm === vm)) queuePrefetch(migrationId, p.tenant, p.pack, keyer);
    },
    prefetchContent(passId, tenant, keyer, vm, keys) {
      if (!registerPrefetch(passId, { tenant, vm, keyer, sinceNs: BigInt(Date.now()) * 1_000_000n })) return;
      const queued = new Set<string>();
      for (let at = 0; at < keys.byteLength; at += KEY_BYTES) {
        if (cache.get(tenant)?.has(keys, at)) continue;
        const pack = locate(tenant, keys, at);
        if (pack === undefined || queued.has(pack)) continue;
        queued.add(pack);
        queuePrefetch(passId, tenant, pack, keyer);
      }
      dlog.debug("prefetching a VM's content", { passId, vm, keys: keys.byteLength / KEY_BYTES, packs: queued.size });
    },
    stopPrefetch(migrationId) {
      prefetching.delete(migrationId);
    },
    clearCache() {
      cache.clear();
      slabs.length = 0;
      fetching.clear();
    },
    cached(tenant, key, at = 0) {
      const hit = cachedPage(tenant, key, at);
      if (hit) stats.cacheHits++;
      return hit;
    },
    async page(tenant, k, keyer, timeoutMs, since = 0) {
      const id = `${tenant}/${k}`;
      const keyBytes = keyFromHex(k);
      const hit = cachedPage(tenant, keyBytes);
      if (hit) {
        stats.cacheHits++;
        return hit;
      }
      const holder = locate(tenant, keyBytes);
      const foundDamaged = holder !== undefined ? damaged.get(holder) : undefined;
      if (holder === undefined || (foundDamaged !== undefined && foundDamaged < since)) {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new PageUnavailableError(`no page pack holds key ${k} after ${timeoutMs} ms`)), timeoutMs);
          const list = waiting.get(id) ?? [];
          list.push(() => {
            clearTimeout(t);
            resolve();
          });
          waiting.set(id, list);
        });
      }
      const pack = locate(tenant, keyBytes)!;
      await fetchPack(tenant, pack, keyer);
      const page = cachedPage(tenant, keyBytes);
      if (!page) throw new PageUnavailableError(`page pack ${pack} does not hold key ${k}`);
      return page;
    },
    async close() {
      await messages.close();
      await follow.catch(() => undefined);
    },
  };
}
