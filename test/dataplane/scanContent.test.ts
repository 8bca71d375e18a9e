/**
 * A destination prefetches the packs holding a VM's content as the source's scans last saw
 * it: after a second pass replaced half of the VM's pages, the pack holding only replaced
 * pages is not fetched; a full pass begins the content anew; a batch from another host's
 * name is refused to the dead-letter subject.
 */
import { describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { openPackStore, type PackStore } from "../../adapters/dataplane/packStore.ts";
import { createPageKeyer, KEY_BYTES, PAGE_SIZE, type PageKeyer } from "../../adapters/dataplane/contentKey.ts";
import { PackWriter } from "../../adapters/host/packWriter.ts";
import { openPageSource } from "../../adapters/host/packLocator.ts";
import { followScanContent } from "../../adapters/host/scanContent.ts";
import { createPublisher, type EventPublisher } from "../../infra/events/publisher.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { scanBatch, SCAN_RECORD_BYTES } from "../../schemas/index.ts";
import { startTestNats } from "../helpers/nats.ts";

/** One scan pass of `vm`: pages at `first…` stored in packs of 32, announced as a scan batch. */
async function pass(pub: EventPublisher, store: PackStore, keyer: PageKeyer, vm: string, passNo: number, first: number, count: number, zeroAt?: number) {
  const writer = new PackWriter({ migrationId: "prep-hostA", sourceHost: "hostA", vm, tenant: "t1", publisher: pub, packs: store, packPages: 32 });
  const keys = new Uint8Array(count * KEY_BYTES);
  const records = new Uint8Array(count * SCAN_RECORD_BYTES);
  const view = new DataView(records.buffer);
  for (let i = 0; i < count; i++) {
    view.setBigUint64(i * SCAN_RECORD_BYTES, BigInt((first + i) * PAGE_SIZE));
    if (first + i === zeroAt) continue; // a uniform page: all-zero key, no pack
    const page = randomBytes(PAGE_SIZE);
    keyer.keyInto(page, keys, i * KEY_BYTES);
    records.set(keys.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES), i * SCAN_RECORD_BYTES + 8);
    writer.add(keys, i * KEY_BYTES, page);
  }
  await pub.publishBinary(scanBatch, { host: "hostA", vm }, { host: "hostA", vm, tenant: "t1", pass: passNo, seq: 0, count }, records);
  await writer.drain();
  return keys;
}

describe("scan content", () => {
  it("prefetches only the packs holding the VM's current pages", async () => {
    await using nats = await startTestNats();
    const store = await openPackStore(nats.nc);
    const keyer = createPageKeyer("t1");
    const pub = createPublisher(jetstream(nats.nc), "gangway/host/hostA");
    const first = await pass(pub, store, keyer, "vmA", 0, 0, 64); // packs P1 (pages 0–31), P2 (32–63)
    const second = await pass(pub, store, keyer, "vmA", 1, 0, 32, 5); // P3: pages 0–31 anew, page 5 now zero
    const content = await followScanContent(nats.nc);
    const source = await openPageSource(nats.nc, store);
    try {
      const c = await content.contentOf("hostA", "vmA", 10_000);
      expect(c?.pass).toBe(1);
      expect(c!.keys.byteLength).toBe(63 * KEY_BYTES); // page 5 is uniform: no key
      expect(Buffer.from(c!.keys.subarray(0, KEY_BYTES)).equals(second.subarray(0, KEY_BYTES))).toBe(true);
      expect(Buffer.from(c!.keys.subarray(62 * KEY_BYTES)).equals(first.subarray(63 * KEY_BYTES))).toBe(true);
      // Wait until the locator has heard of all three packs, then prefetch by content.
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        try {
          await source.page("t1", Buffer.from(second.subarray(0, KEY_BYTES)).toString("hex"), keyer, 100);
          break;
        } catch {
          /* not announced yet */
        }
      }
      source.clearCache();
      const before = source.stats.packsFetched;
      source.prefetchContent("prep-hostA", "t1", keyer, "vmA", c!.keys);
      while (source.stats.packsFetched - before < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
      expect(source.stats.packsFetched - before).toBe(2); // P2 and P3, not P1
      expect(source.cached("t1", first, 0)).toBeUndefined();
      expect(source.cached("t1", first, 40 * KEY_BYTES)).toBeDefined();
      expect(source.cached("t1", second, 31 * KEY_BYTES)).toBeDefined();
      // A pack this pass stores from now on comes too; a stopped prefetch fetches nothing more.
      await pass(pub, store, keyer, "vmA", 2, 64, 16);
      while (source.stats.packsFetched - before < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(source.stats.packsFetched - before).toBe(3);
      source.stopPrefetch("prep-hostA");
      await pass(pub, store, keyer, "vmA", 3, 80, 16);
      await new Promise((r) => setTimeout(r, 500));
      expect(source.stats.packsFetched - before).toBe(3);
      // A full pass begins anew: the VM now holds only its 8 pages.
      await pass(pub, store, keyer, "vmA", 0, 0, 8);
      const fresh = await content.contentOf("hostA", "vmA", 10_000);
      expect(fresh?.pass).toBe(0);
      expect(fresh!.keys.byteLength).toBe(8 * KEY_BYTES);
    } finally {
      await source.close();
      await content.close();
    }
  }, 60_000);

  it("refuses a batch published under another host's name to the dead-letter subject", async () => {
    await using nats = await startTestNats();
    const content = await followScanContent(nats.nc, { host: "hostB" });
    try {
      const forged = createPublisher(jetstream(nats.nc), "gangway/host/hostZ");
      await forged.publishBinary(scanBatch, { host: "hostA", vm: "vmA" }, { host: "hostA", vm: "vmA", tenant: "t1", pass: 0, seq: 0, count: 1 }, new Uint8Array(SCAN_RECORD_BYTES).fill(7));
      expect(await content.contentOf("hostA", "vmA", 10_000)).toBeUndefined();
      const reasons: string[] = [];
      const deadline = Date.now() + 10_000;
      while (reasons.length === 0 && Date.now() < deadline) {
        for await (const e of readEvents(nats.nc, { filter: "gw.dlq.>" })) if (e.result.ok && e.result.event.mode === "structured") reasons.push(String((e.result.event.data as { reason: string }).reason));
        if (!reasons.length) await new Promise((r) => setTimeout(r, 200));
      }
      expect(reasons).toEqual([expect.stringMatching(/scan batch of hostA sent by gangway\/host\/hostZ/)]);
    } finally {
      await content.close();
    }
  }, 60_000);
});
