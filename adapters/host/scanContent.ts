/**
 * What each VM holds as its host's preparation scans last saw it: per host and VM, the key of
 * every page by offset, kept from the scan batches (a full pass replaces what came before, a
 * later pass changes the pages it names). A destination prefetches the packs holding exactly
 * these keys: not every pack the source host's scans ever stored for the VM — a dirtying guest
 * leaves a new pack behind at every pass, and fetching them all made each migration of a soak
 * slower than the one before.
 */
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { scanBatch, SCAN_RECORD_BYTES } from "../../schemas/index.ts";
import { decodeMessage, type DecodeResult } from "../../infra/events/binding.ts";
import { deadLetterSink, liveDeadLetters, type DeadLetterSink } from "../../infra/events/deadLetter.ts";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { KEY_BYTES, PAGE_SIZE } from "../dataplane/contentKey.ts";

export interface VmContent {
  tenant: string;
  /** The keys of the VM's keyed pages (uniform pages need no pack), n × 16 bytes, by offset. */
  keys: Uint8Array;
  /** The scan pass they come from. */
  pass: number;
}

export interface ScanContent {
  /**
   * The VM's content as `host`'s scans last saw it, or undefined if none was seen. Waits (at
   * most `waitMs`) until the follower has read what the stream held when asked, so that an
   * agent just started does not answer from half the history.
   */
  contentOf(host: string, vm: string, waitMs?: number): Promise<VmContent | undefined>;
  close(): Promise<void>;
}

export interface ScanContentOptions {
  /** Where refused batches go. @default gw.dlq.scan, published as "gangway/host/<host>" */
  deadLetters?: DeadLetterSink;
  host?: string;
}

/** A VM's page table: 16 key bytes per page and whether the page is keyed (else uniform). */
interface Table {
  tenant: string;
  pass: number;
  keys: Uint8Array;
  keyed: Uint8Array;
}

/** Why a message on gw.scan.*.*.batch is not a scan batch to learn from, or undefined. */
export function refusedScanBatch(d: DecodeResult): string | undefined {
  if (!d.ok) return `unreadable scan batch: ${d.reason}`;
  if (d.definition !== scanBatch || d.event.mode !== "binary") return `${d.event.type} is not a scan batch`;
  const host = String(d.event.ext["host"]);
  if (d.event.source !== `gangway/host/${host}`) return `scan batch of ${host} sent by ${d.event.source}`;
  return undefined;
}

export async function followScanContent(nc: NatsConnection, o: ScanContentOptions = {}): Promise<ScanContent> {
  const tables = new Map<string, Table>();
  const messages = await StreamFollower.start(nc, { filter: "gw.scan.*.*.batch" });
  const deadLetters = liveDeadLetters(o.deadLetters ?? deadLetterSink(jetstream(nc), `gangway/host/${o.host ?? "destination"}`, "scan-content"));
  const follow = (async () => {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      const refused = refusedScanBatch(d);
      if (refused || !d.ok || d.event.mode !== "binary") {
        if (refused) deadLetters(m, refused);
        continue;
      }
      const ext = d.event.ext as { host: string; vm: string; tenant: string; pass: number; seq: number; count: number };
      const id = `${ext.host}/${ext.vm}`;
      let t = tables.get(id);
      // A full pass (the first after a start or a move) begins the table anew.
      if (!t || (ext.pass === 0 && ext.seq === 0) || t.tenant !== ext.tenant) tables.set(id, (t = { tenant: ext.tenant, pass: ext.pass, keys: new Uint8Array(0), keyed: new Uint8Array(0) }));
      t.pass = ext.pass;
      const body = d.event.data;
      const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
      for (let i = 0; i < ext.count; i++) {
        const at = i * SCAN_RECORD_BYTES;
        const page = Number(view.getBigUint64(at)) / PAGE_SIZE;
        if (!Number.isInteger(page)) continue;
        if (page >= t.keyed.length) grow(t, page + 1);
        const key = body.subarray(at + 8, at + SCAN_RECORD_BYTES);
        // An all-zero key marks a uniform page (memoryScanner): no pack holds it.
        t.keyed[page] = key.some((b) => b !== 0) ? 1 : 0;
        t.keys.set(key, page * KEY_BYTES);
      }
    }
  })();

  return {
    async contentOf(host, vm, waitMs = 3_000) {
      const deadline = Date.now() + waitMs;
      while (Date.now() < deadline && (await messages.unread().catch(() => 0)) > 0) await new Promise((r) => setTimeout(r, 50));
      const t = tables.get(`${host}/${vm}`);
      if (!t) return undefined;
      let n = 0;
      for (let p = 0; p < t.keyed.length; p++) n += t.keyed[p]!;
      const keys = new Uint8Array(n * KEY_BYTES);
      let at = 0;
      for (let p = 0; p < t.keyed.length; p++) {
        if (!t.keyed[p]) continue;
        keys.set(t.keys.subarray(p * KEY_BYTES, (p + 1) * KEY_BYTES), at);
        at += KEY_BYTES;
      }
      return { tenant: t.tenant, keys, pass: t.pass };
    },
    async close() {
      await messages.close();
      await follow.catch(() => undefined);
    },
  };
}

function grow(t: Table, pages: number): void {
  const size = Math.max(pages, t.keyed.length * 2, 4096);
  const keys = new Uint8Array(size * KEY_BYTES);
  keys.set(t.keys);
  const keyed = new Uint8Array(size);
  keyed.set(t.keyed);
  t.keys = keys;
  t.keyed = keyed;
}
