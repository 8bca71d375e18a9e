import { describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import { createPageKeyer, keyHex, KEY_BYTES, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { PackWriter } from "../../adapters/host/packWriter.ts";
import { openPageSource } from "../../adapters/host/packLocator.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { startTestNats } from "../helpers/nats.ts";

describe("pack store reads", () => {
  it("reads an object of more than 16 chunks (3 MiB) whole and quickly", async () => {
    await using nats = await startTestNats();
    const store = await openPackStore(nats.nc, { readTimeoutMs: 5_000 });
    const big = randomBytes(3 * 1024 * 1024 + 123);
    await store.putObject("state-big", big);
    const t0 = Date.now();
    const got = await store.getObject("state-big");
    expect(Date.now() - t0).toBeLessThan(4_000);
    expect(Buffer.from(got!).equals(big)).toBe(true);
    expect(await store.getObject("state-absent")).toBeNull();
  }, 60_000);

  it("gives every page of fetched packs by key, each its own bytes", async () => {
    await using nats = await startTestNats();
    const store = await openPackStore(nats.nc);
    const keyer = createPageKeyer("t1");
    const pub = createPublisher(jetstream(nats.nc), "gangway/host/hostA");
    const writer = new PackWriter({ migrationId: "mig-x", sourceHost: "hostA", vm: "vm1", tenant: "t1", publisher: pub, packs: store, packPages: 64 });
    const pages: Buffer[] = [];
    const keys: string[] = [];
    for (let i = 0; i < 200; i++) {
      const page = randomBytes(PAGE_SIZE);
      const key = new Uint8Array(KEY_BYTES);
      keyer.keyInto(page, key, 0);
      writer.add(key, 0, page);
      pages.push(page);
      keys.push(keyHex(key));
    }
    await writer.drain();
    const source = await openPageSource(nats.nc, store);
    try {
      const got = await Promise.all(keys.map((k) => source.page("t1", k, keyer, 10_000)));
      got.forEach((p, i) => expect(p.equals(pages[i]!)).toBe(true));
      expect(source.stats.packsFetched).toBe(4);
    } finally {
      await source.close();
    }
  }, 60_000);
});
