/**
 * Scans a VM's memory where it lives (the guest-RAM file) in the preparation phase: keys
 * every page, compares with the previous pass so only changed pages are looked at, asks the
 * dedup index about keys it has not met, and packs and stores the pages it claimed. The
 * destination side then already holds them when a migration comes. Each pass is announced
 * (scan batches of changed pages, then the pass's totals).
 */
import { KeyStatus, scanBatch, scanCompleted, SCAN_RECORD_BYTES } from "../../schemas/index.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";
import { KEY_BYTES, PAGE_SIZE, keyHex, uniformByte, type PageKeyer } from "../dataplane/contentKey.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import type { KeyResolver } from "./keyResolver.ts";
import { PackWriter } from "./packWriter.ts";
import { ramPages } from "../dataplane/ramFile.ts";
import { KeyTable } from "../../kit/keyTable.ts";

/** Per page: 1 marker byte (0 keyed, 1 fill) + key (or the fill byte). */
const ENTRY = 1 + KEY_BYTES;

export interface MemoryScanOptions {
  host: string;
  vm: string;
  tenant: string;
  ramPath: string;
  sizeBytes: number;
  keyer: PageKeyer;
  resolver: KeyResolver;
  publisher: EventPublisher;
  packs: PackStore;
  /** The previous pass's page table, if any (then only changed pages are looked at). */
  previous?: Uint8Array;
  pass: number;
  /**
   * Keys this host knows are held already; grows with the keys this pass stores, once its
   * packs are stored (a source migration references them without asking).
   */
  known: KeyTable;
  /** Checked between chunks: a pass stops early when the VM starts migrating (its stream is keyed then). */
  shouldStop?: () => boolean;
}

export interface MemoryScanResult {
  table: Uint8Array;
  pages: number;
  zeroPages: number;
  changedPages: number;
  pagesPreseeded: number;
  bytesSent: number;
}

const CHUNK_PAGES = 256;
const LOOKUP_PAGES = 4096;

export async function scanMemory(o: MemoryScanOptions): Promise<MemoryScanResult> {
  const t0 = performance.now();
  const pages = Math.floor(o.sizeBytes / PAGE_SIZE);
  const table = new Uint8Array(pages * ENTRY);
  const packer = new PackWriter({ migrationId: `prep-${o.host}`, sourceHost: o.host, vm: o.vm, tenant: o.tenant, publisher: o.publisher, packs: o.packs });
  let zeroPages = 0;
  let changed = 0;
  let batches = 0;
  let bytesSent = 0;
  // Changed, keyed pages waiting for a look-up: their keys and contents.
  let askKeys = new Uint8Array(LOOKUP_PAGES * KEY_BYTES);
  let askPages = new Uint8Array(LOOKUP_PAGES * PAGE_SIZE);
  let asked = 0;
  let records = new Uint8Array(LOOKUP_PAGES * SCAN_RECORD_BYTES);
  let recorded = 0;
  /** Keys this pass met: known to the host once its packs are stored. */
  const learned = new KeyTable(4096);

  const lookUp = async () => {
    if (asked === 0) return;
    const keys = askKeys.subarray(0, asked * KEY_BYTES);
    const statuses = await o.resolver.resolve(o.vm, o.tenant, keys);
    bytesSent += keys.byteLength;
    for (let i = 0; i < asked; i++) {
      const at = i * KEY_BYTES;
      if (statuses[i] !== KeyStatus.claimed || o.known.has(keys, at) || learned.has(keys, at)) continue;
      packer.add(keys, at, askPages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
      // Only what this pass stores itself becomes known: an answer "present" may predate the
      // index hearing that the pack holding it was found damaged (its follower lags), and a
      // known key is never asked about again.
      learned.set(keys, at, 1);
    }
    asked = 0;
    askKeys = new Uint8Array(LOOKUP_PAGES * KEY_BYTES);
    askPages = new Uint8Array(LOOKUP_PAGES * PAGE_SIZE);
  };
  const announce = async () => {
    if (recorded === 0) return;
    const body = records.slice(0, recorded * SCAN_RECORD_BYTES);
    await o.publisher.publishBinary(scanBatch, { host: o.host, vm: o.vm }, { host: o.host, vm: o.vm, tenant: o.tenant, pass: o.pass, seq: batches++, count: recorded }, body);
    bytesSent += body.byteLength;
    recorded = 0;
    records = new Uint8Array(LOOKUP_PAGES * SCAN_RECORD_BYTES);
  };

  for await (const { offset, page } of ramPages(o.ramPath, pages * PAGE_SIZE)) {
    const index = offset / PAGE_SIZE;
    if (index % CHUNK_PAGES === 0 && o.shouldStop?.()) break;
    const at = index * ENTRY;
    const fill = uniformByte(page);
    if (fill !== undefined) {
      table[at] = 1;
      table[at + 1] = fill;
      if (fill === 0) zeroPages++;
    } else o.keyer.keyInto(page, table, at + 1);
    if (o.previous && Buffer.compare(Buffer.from(o.previous.buffer, o.previous.byteOffset + at, ENTRY), Buffer.from(table.buffer, at, ENTRY)) === 0) continue;
    changed++;
    const rec = new DataView(records.buffer, recorded * SCAN_RECORD_BYTES, SCAN_RECORD_BYTES);
    rec.setBigUint64(0, BigInt(offset));
    if (fill === undefined) records.set(table.subarray(at + 1, at + ENTRY), recorded * SCAN_RECORD_BYTES + 8);
    if (++recorded === LOOKUP_PAGES) await announce();
    if (fill !== undefined || o.known.has(table, at + 1) || learned.has(table, at + 1)) continue;
    askKeys.set(table.subarray(at + 1, at + ENTRY), asked * KEY_BYTES);
    askPages.set(page, asked * PAGE_SIZE);
    if (++asked === LOOKUP_PAGES) await lookUp();
  }
  await lookUp();
  await announce();
  await packer.drain();
  learned.forEach((key) => o.known.set(key, 0, 1));
  bytesSent += packer.linkBytes;
  const sample: string[] = [];
  for (let at = 0; at < table.byteLength && sample.length < 8192; at += ENTRY) if (table[at] === 0 && table[at + 1] === 0) sample.push(keyHex(table, at + 1));
  const result: MemoryScanResult = { table, pages, zeroPages, changedPages: changed, pagesPreseeded: packer.pages, bytesSent };
  await o.publisher.publish(scanCompleted, { host: o.host, vm: o.vm }, {
    host: o.host, vm: o.vm, tenant: o.tenant, pass: o.pass, pages, zeroPages, changedPages: changed, batches, pagesPreseeded: packer.pages, sample, bytesSent, durationMs: Math.round(performance.now() - t0),
  });
  return result;
}
