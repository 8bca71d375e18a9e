import { describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import { createPageKeyer, keyHex, KEY_BYTES, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { PackWriter } from "../../adapters/host/packWriter.ts";
import { openPageSource } from "../../adapters/host/packLocator.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { startTestNats } from "../helpers/nats.ts";

describe("pack store reads", () => {
  it("reads objects of one and of several chunks whole by direct gets, among other objects' chunks, with no consumer", async () => {
    await using nats = await startTestNats();
    const store = await openPackStore(nats.nc, { readTimeoutMs: 5_000 });
    const big = randomBytes(5 * 1024 * 1024 + 123); // three chunks of 2 MiB
    const small = randomBytes(300_000);
    // Written side by side, so that their chunks interleave in the stream.
    await Promise.all([store.putObject("state-big", big), store.putObject("state-small", small), store.putObject("state-big2", randomBytes(4 * 1024 * 1024 + 1))]);
    await store.putObject("state-big", Buffer.from(big).reverse()); // written again: new chunks, the old purged
    expect(Buffer.from((await store.getObject("state-big"))!).equals(Buffer.from(big).reverse())).toBe(true);
    expect(Buffer.from((await store.getObject("state-small"))!).equals(small)).toBe(true);
    expect(await store.getObject("state-absent")).toBeNull();
    const jsm = await jetstreamManager(nats.nc);
    expect((await jsm.streams.info("OBJ_gw-packs")).state.consumer_count).toBe(0);
  }, 60_000);

  it("many reads asked at once do not overflow the server's buffer for the client (a slow consumer loses them all)", async () => {
    // 24 MB of pending answers at most (the default is 64 MB, which a busy client meets sooner or later).
    await using nats = await startTestNats({ extraConfig: "max_pending: 24MB" });
    const store = await openPackStore(nats.nc, { readTimeoutMs: 5_000 });
    const objects = Array.from({ length: 60 }, () => randomBytes(1_000_000));
    for (const [i, o] of objects.entries()) await store.putObject(`obj-${i}`, o);
    let disconnected = false;
    void (async () => {
      for await (const st of nats.nc.status()) if (st.type === "disconnect") disconnected = true;
    })();
    const got = await Promise.all(objects.map((_, i) => store.getObject(`obj-${i}`)));
    got.forEach((g, i) => expect(Buffer.from(g!).equals(objects[i]!), `object ${i}`).toBe(true));
    expect(disconnected).toBe(false);
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

  it("prefetches a preparation pass's packs of the VMs asked for only, and hands their pages out synchronously", async () => {
    await using nats = await startTestNats();
    const store = await openPackStore(nats.nc);
    const keyer = createPageKeyer("t1");
    const pub = createPublisher(jetstream(nats.nc), "gangway/host/hostA");
    const stored = async (vm: string) => {
      const writer = new PackWriter({ migrationId: "prep-hostA", sourceHost: "hostA", vm, tenant: "t1", publisher: pub, packs: store, packPages: 32 });
      const keys = new Uint8Array(64 * KEY_BYTES);
      const pages: Buffer[] = [];
      for (let i = 0; i < 64; i++) {
        const page = randomBytes(PAGE_SIZE);
        keyer.keyInto(page, keys, i * KEY_BYTES);
        writer.add(keys, i * KEY_BYTES, page);
        pages.push(page);
      }
      await writer.drain();
      return { keys, pages };
    };
    const a = await stored("vmA");
    const b = await stored("vmB");
    const source = await openPageSource(nats.nc, store);
    try {
      source.prefetch("prep-hostA", "t1", keyer, "vmA");
      source.prefetch("prep-hostA", "t1", keyer, "vmA"); // asked twice: fetched once
      const deadline = Date.now() + 20_000;
      while (source.stats.packsFetched < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
      expect(source.stats.packsFetched).toBe(2);
      a.pages.forEach((p, i) => expect(source.cached("t1", a.keys, i * KEY_BYTES)?.equals(p), `vmA page ${i}`).toBe(true));
      expect(source.cached("t1", b.keys, 0)).toBeUndefined();
      // Another tenant's table is another table.
      expect(source.cached("t2", a.keys, 0)).toBeUndefined();
      source.prefetch("prep-hostA", "t1", keyer);
      while (source.stats.packsFetched < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(source.cached("t1", b.keys, 63 * KEY_BYTES)?.equals(b.pages[63]!)).toBe(true);
    } finally {
      await source.close();
    }
  }, 60_000);
});
