/**
 * The destination's prefetch, against a real nats-server: of what a preparation pass stored
 * before, only the newest packs come ahead of need, and a stopped prefetch fetches nothing
 * more (before, every pack a host's scans ever stored was fetched at every migration, and
 * went on filling the cache after it ended).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { startTestNats, eventually, type TestNats } from "../helpers/nats.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { createPageKeyer, keyHex, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { encodePack } from "../../adapters/dataplane/pagePack.ts";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import { openPageSource } from "../../adapters/host/packLocator.ts";
import { packStored } from "../../schemas/index.ts";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => {
  await nats[Symbol.asyncDispose]();
});

const keyer = createPageKeyer("t1");

async function storePack(by: string) {
  const packs = await openPackStore(nats.nc);
  const pages = [new Uint8Array(randomBytes(PAGE_SIZE)), new Uint8Array(randomBytes(PAGE_SIZE))];
  const keys = new Uint8Array(32);
  pages.forEach((p, i) => keyer.keyInto(p, keys, i * 16));
  const body = new Uint8Array(2 * PAGE_SIZE);
  pages.forEach((p, i) => body.set(p, i * PAGE_SIZE));
  const pack = encodePack(keys, body);
  await packs.put(pack.name, pack.bytes);
  await createPublisher(jetstream(nats.nc), "gangway/host/hA").publish(packStored, { migrationId: by }, {
    migrationId: by, sourceHost: "hA", vm: "v1", tenant: "t1", pack: pack.name, codec: pack.codec, keys: [0, 1].map((i) => keyHex(keys, i * 16)), rawBytes: pack.rawBytes, storedBytes: pack.bytes.byteLength,
  });
  return { name: pack.name, keys: [0, 1].map((i) => keyHex(keys, i * 16)) };
}

describe("pack locator prefetch (real nats-server)", () => {
  it("fetches only the newest packs of what was stored before, and nothing once stopped", async () => {
    const stored: { name: string; keys: string[] }[] = [];
    for (let i = 0; i < 4; i++) stored.push(await storePack("prep-hA"));
    const source = await openPageSource(nats.nc, await openPackStore(nats.nc), { host: "hB" });
    try {
      // The locator has read the four announcements (a page of the oldest is found by key).
      await eventually(async () => (await source.page("t1", stored[0]!.keys[0]!, keyer, 5000).then(() => true)) || undefined, 10_000, "announcements read");
      source.clearCache();
      const before = source.stats.packsFetched;
      source.prefetch("prep-hA", "t1", keyer, { maxPacks: 1 });
      await eventually(async () => source.stats.packsFetched > before || undefined, 10_000, "the newest pack prefetched");
      await new Promise((r) => setTimeout(r, 500));
      expect(source.stats.packsFetched - before).toBe(1);
      // The newest pack's pages are at hand without a fetch.
      const hits = source.stats.cacheHits;
      await source.page("t1", stored[3]!.keys[1]!, keyer, 1000);
      expect(source.stats.cacheHits).toBe(hits + 1);
      source.stopPrefetch("prep-hA");
      await storePack("prep-hA");
      await new Promise((r) => setTimeout(r, 1000));
      expect(source.stats.packsFetched - before).toBe(1);
    } finally {
      await source.close();
    }
  }, 30_000);
});
