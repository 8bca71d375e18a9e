/**
 * Collects the pages a host claimed into page packs (256 pages, ~1 MiB raw), stores each
 * pack under its content address, and announces it (pack stored: the keys it holds).
 * Writes run in the background; `drain` waits for all of them.
 */
import { packStored } from "../../schemas/index.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";
import { KEY_BYTES, PAGE_SIZE, keyHex } from "../dataplane/contentKey.ts";
import { encodePack } from "../dataplane/pagePack.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import { inSpan } from "../../infra/spans.ts";

export interface PackWriterOptions {
  migrationId: string;
  sourceHost: string;
  vm: string;
  tenant: string;
  publisher: EventPublisher;
  packs: PackStore;
  /** Pages per pack. @default 256 */
  packPages?: number;
}

export class PackWriter {
  /** Raw bytes of the pages packed, and their bytes once packed. */
  rawBytes = 0;
  storedBytes = 0;
  /** Bytes put on the link: packs and their announcements. */
  linkBytes = 0;
  pages = 0;
  private readonly packPages: number;
  private keys: Uint8Array;
  private data: Uint8Array;
  private count = 0;
  private writes: Promise<void>[] = [];

  constructor(private readonly o: PackWriterOptions) {
    this.packPages = o.packPages ?? 256;
    this.keys = new Uint8Array(this.packPages * KEY_BYTES);
    this.data = new Uint8Array(this.packPages * PAGE_SIZE);
  }

  add(key: Uint8Array, keyAt: number, page: Uint8Array): void {
    this.keys.set(key.subarray(keyAt, keyAt + KEY_BYTES), this.count * KEY_BYTES);
    this.data.set(page, this.count * PAGE_SIZE);
    this.count++;
    this.pages++;
    if (this.count === this.packPages) this.flush();
  }

  /** Starts writing what is collected as a pack. */
  flush(): void {
    if (this.count === 0) return;
    const keys = this.keys.subarray(0, this.count * KEY_BYTES);
    const pages = this.data.subarray(0, this.count * PAGE_SIZE);
    const n = this.count;
    this.keys = new Uint8Array(this.packPages * KEY_BYTES);
    this.data = new Uint8Array(this.packPages * PAGE_SIZE);
    this.count = 0;
    const o = this.o;
    const write = inSpan("pack pages", { "gangway.migration": o.migrationId, "gangway.vm": o.vm, "gangway.pages": n }, async () => {
      const pack = encodePack(keys, pages);
      await o.packs.put(pack.name, pack.bytes);
      const keyList = Array.from({ length: n }, (_, i) => keyHex(keys, i * KEY_BYTES));
      await o.publisher.publish(
        packStored,
        { migrationId: o.migrationId },
        { migrationId: o.migrationId, sourceHost: o.sourceHost, vm: o.vm, tenant: o.tenant, pack: pack.name, codec: pack.codec, keys: keyList, rawBytes: pack.rawBytes, storedBytes: pack.bytes.byteLength },
        { id: `${o.migrationId}-${o.vm}-${pack.name}` },
      );
      this.rawBytes += pack.rawBytes;
      this.storedBytes += pack.bytes.byteLength;
      this.linkBytes += pack.bytes.byteLength + 40 * n; // + the keys listed in the announcement
    });
    write.catch(() => undefined); // observed by drain()
    this.writes.push(write);
  }

  /** Flushes and waits until every pack is stored and announced. */
  async drain(): Promise<void> {
    this.flush();
    const writes = this.writes;
    this.writes = [];
    await Promise.all(writes);
  }
}
