/**
 * The destination side of one VM's migration: follows the VM's manifest on the stream and
 * rebuilds a valid QEMU migration stream from it, page contents coming from the local page
 * cache or the page packs. It is a generator of stream records, so the destination proxy
 * writes each manifest batch into QEMU as soon as its pages are at hand: the destination
 * loads while the source is still sending.
 */
import { createHash } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import { ManifestKind, manifestBatch, manifestCommand, manifestCompleted, manifestHeader } from "../../schemas/index.ts";
import { decodeMessage, type DecodeResult } from "../../infra/events/binding.ts";
import { deadLetterSink, type DeadLetterSink, type ReceivedMessage } from "../../infra/events/deadLetter.ts";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { PAGE_SIZE, fillPage, keyHex, type PageKeyer } from "../dataplane/contentKey.ts";
import { ImageDigest } from "../dataplane/imageDigest.ts";
import { readManifestRecords } from "../dataplane/manifestRecords.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import type { MigrationCommand, PageBatch, StreamRecord } from "../qemu/stream/records.ts";
import { ManifestOrder, hostSource } from "./manifestOrder.ts";
import type { PageSource } from "./packLocator.ts";
import { testFault } from "./testFaults.ts";
import { createLogger } from "../../infra/log.ts";
const dlog = createLogger({ component: "targetMigration" });

export type ManifestHeader = z.infer<typeof manifestHeader.data>;
export type ManifestCompleted = z.infer<typeof manifestCompleted.data>;
type ManifestCommandData = z.infer<typeof manifestCommand.data>;

export class ManifestError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ManifestError";
  }
}

export interface TargetMigrationOptions {
  nc: NatsConnection;
  migrationId: string;
  vm: string;
  tenant: string;
  keyer: PageKeyer;
  pages: PageSource;
  packs: PackStore;
  /** Give up when nothing arrives for this long. @default 150000 (KubeVirt's progressTimeout) */
  progressTimeoutMs?: number;
  onProgress?: (p: { round: number; pages: number; batches: number }) => void;
  /** Post-copy: PACKAGED was handed on (QEMU loads the devices, then waits for `cont`). */
  onSwitchover?: () => void;
  /** Stop reading when this settles (the VM was decided on this host, say rolled back). */
  ended?: Promise<unknown>;
  /** The migration's source host: a manifest header from another host is foreign. @default any host, as its header says */
  sourceHost?: string;
  /** This host, as the source of its dead letters. @default "gangway/host/destination" */
  host?: string;
  /** Where refused manifest messages go. @default gw.dlq.manifest, published on `nc` */
  deadLetters?: DeadLetterSink;
  /** The events stream's sequence to read from (before the migration's first manifest message). @default the stream's start */
  fromSeq?: number;
}

/** What the rebuild learned, for the commit proof once QEMU has loaded the stream. */
export interface TargetState {
  header?: ManifestHeader;
  completed?: ManifestCompleted;
  /** The image as delivered (last content per page). */
  delivered?: ImageDigest;
  pagesWritten: number;
  /** The last manifest sequence number whose records QEMU has been handed (-1: none yet). */
  seqWritten?: number;
  /** The last manifest sequence number read from the stream (its pages may still be fetched). */
  seqRead?: number;
  /** What the rebuild waits on now (for whoever asks why a migration stands still). */
  waitingFor?: string;
  /** SHA-256 of the device state handed to QEMU (post-copy: the PACKAGED blob). */
  deviceStateDigest?: string;
  /** Post-copy: PACKAGED (device state, LISTEN, RUN) was handed to QEMU. */
  postcopy?: boolean;
  /** Pages the destination QEMU holds, per block (1 byte per page): what a fault need not fetch. */
  held?: Uint8Array[];
  /** Post-copy: pages written after the switch-over, and repeats dropped (QEMU would die of one). */
  pagesAfterSwitchover?: number;
  duplicatesDropped?: number;
  /** The events stream's sequence of the last manifest message read (later facts come after it). */
  streamSeq?: number;
}

/** Pages the destination does not hold yet, with the first ranges of them (bytes of `block`). */
export function missingPages(state: TargetState, maxRanges = 64): { pages: number; block: string; ranges: { offset: number; length: number }[] } {
  const blocks = state.header?.blocks ?? [];
  let pages = 0;
  const ranges: { offset: number; length: number }[] = [];
  let firstBlock = blocks[0]?.id ?? "unknown";
  (state.held ?? []).forEach((held, b) => {
    for (let i = 0; i < held.length; i++) {
      if (held[i]) continue;
      if (pages === 0) firstBlock = blocks[b]!.id;
      pages++;
      if (blocks[b]!.id !== firstBlock) continue;
      const last = ranges[ranges.length - 1];
      if (last && last.offset + last.length === i * PAGE_SIZE) last.length += PAGE_SIZE;
      else if (ranges.length < maxRanges) ranges.push({ offset: i * PAGE_SIZE, length: PAGE_SIZE });
    }
  });
  return { pages, block: firstBlock, ranges };
}

/** Reads the VM's manifest events in order, with a progress time-out. */
async function* manifestEvents(o: TargetMigrationOptions): AsyncGenerator<{ d: DecodeResult; m: ReceivedMessage }> {
  // A dead agent's consumer goes 15 s after its last pull, not the client's default 5 min;
  // one lost with its server (a cluster node died) is replaced where it stopped.
  const messages = await StreamFollower.start(o.nc, { filter: `gw.manifest.${o.migrationId}.${o.vm}.>`, inactiveThresholdMs: 15_000, ...(o.fromSeq ? { fromSeq: o.fromSeq } : {}) });
  const timeout = o.progressTimeoutMs ?? 150_000;
  let last = Date.now();
  const timer = setInterval(() => {
    if (Date.now() - last > timeout) messages.stop(new ManifestError(`no manifest progress for ${Math.round(timeout / 1000)} s`));
  }, 500);
  // A rollback must not leave the reader waiting for a source that is gone (until the time-out).
  void o.ended?.then(() => messages.stop(new ManifestError("the migration ended on this host")));
  try {
    for await (const m of messages) {
      last = Date.now();
      yield { d: decodeMessage(m.subject, m.data, m.headers), m };
    }
    throw new ManifestError("manifest stream ended before the source completed");
  } finally {
    clearInterval(timer);
    // The server keeps an ordered consumer for minutes after its client stops reading.
    await messages.close();
  }
}

export async function* targetRecords(o: TargetMigrationOptions, state: TargetState): AsyncGenerator<StreamRecord> {
  let blocks: ManifestHeader["blocks"] = [];
  let ram = { id: 0, instance: 0, version: 4 };
  let batches = 0;
  let round = 0;
  state.waitingFor = "the manifest";
  // Packs found damaged before this migration will be sent again: their keys are waited for.
  const startedAt = Date.now();
  const order = new ManifestOrder(o.migrationId, o.vm, o.sourceHost);
  const deadLetters = o.deadLetters ?? deadLetterSink(jetstream(o.nc), hostSource(o.host ?? "destination"), "target-migration");
  for await (const { d, m } of manifestEvents(o)) {
    if (m.seq !== undefined) state.streamSeq = m.seq;
    if (d.ok && !ManifestOrder.reads(d.event.type)) continue;
    // A message that does not belong here (unreadable, foreign, out of sequence) changes
    // nothing: it is dead-lettered, and the rebuild waits for the one that does.
    const refused = d.ok ? order.admit(d.event) : `unreadable manifest event: ${d.reason}`;
    if (refused) {
      deadLetters(m, `${o.migrationId}/${o.vm}: ${refused}`, "manifest");
      continue;
    }
    if (!d.ok) continue;
    const ev = d.event;
    if (ev.type === manifestHeader.type) {
      const h = ev.data as ManifestHeader;
      state.header = h;
      blocks = h.blocks;
      ram = h.ramSection;
      state.delivered = new ImageDigest(blocks.map((b) => b.usedBytes));
      state.held = blocks.map((b) => new Uint8Array(Math.ceil(b.usedBytes / PAGE_SIZE)));
      const raw = Buffer.from(h.configRaw, "base64");
      yield { type: "header", offset: 0, version: 3 };
      // The config record is passed on as the source sent it (machine name and subsections).
      yield { type: "config", offset: 0, config: { machine: h.machine }, raw };
      for (const command of h.commands) if (command.cmd !== "packaged") yield { type: "command", offset: 0, command };
      yield { type: "ramSection", offset: 0, section: "start", sectionId: ram.id, instanceId: ram.instance, versionId: ram.version };
      yield { type: "ramSetup", offset: 0, totalBytes: Number(h.ramSetupWord), blocks: blocks.map((b) => ({ id: b.id, usedLength: b.usedBytes })) };
      yield { type: "ramSectionEnd", offset: 0, sectionId: ram.id };
    } else if (ev.type === manifestBatch.type && ev.mode === "binary") {
      if (!state.delivered) throw new ManifestError("manifest batch before its header");
      const ext = ev.ext as { count: number; round: number; final: boolean };
      state.seqRead = Number((ev.ext as { seq: number }).seq);
      round = ext.round;
      const recs = [...readManifestRecords(ev.data, ext.count)];
      // Pages of packs fetched already are taken where they lie; the others are fetched at
      // once, each pack once for all its pages.
      const views: (Uint8Array | undefined)[] = new Array(recs.length);
      const missing = new Map<string, Promise<Buffer>>();
      const missingAt: number[] = [];
      for (let n = 0; n < recs.length; n++) {
        const r = recs[n]!;
        if (r.kind !== ManifestKind.page) continue;
        const v = o.pages.cached(o.tenant, ev.data, r.keyAt);
        if (v) {
          views[n] = v;
          continue;
        }
        missingAt.push(n);
        const k = keyHex(ev.data, r.keyAt);
        if (!missing.has(k)) missing.set(k, o.pages.page(o.tenant, k, o.keyer, o.progressTimeoutMs ?? 150_000, startedAt));
      }
      if (missing.size) {
        state.waitingFor = `the ${missing.size} pages of manifest seq ${state.seqRead}`;
        const tw = Date.now();
        const got = new Map<string, Buffer>();
        await Promise.all([...missing].map(async ([k, p]) => got.set(k, await p)));
        for (const n of missingAt) views[n] = got.get(keyHex(ev.data, recs[n]!.keyAt));
        dlog.debug("manifest batch: its pages are at hand", { vm: o.vm, seq: state.seqRead, round, records: recs.length, fetched: missing.size, waitMs: Date.now() - tw, final: ext.final });
      }
      state.waitingFor = `QEMU to take manifest seq ${state.seqRead}`;
      if (recs.length) yield { type: "ramSection", offset: 0, section: "part", sectionId: ram.id, instanceId: ram.instance, versionId: ram.version };
      // One page batch per run of records in the same block.
      let i = 0;
      while (i < recs.length) {
        let j = i;
        while (j < recs.length && recs[j]!.block === recs[i]!.block) j++;
        // Indices into recs (and views) of this run's records.
        const run = Array.from({ length: j - i }, (_, n) => i + n);
        const b = recs[i]!.block;
        const block = blocks[b];
        if (!block) throw new ManifestError(`manifest names RAM block ${b}, the header has ${blocks.length}`);
        const held = state.held![b]!;
        if (state.postcopy) {
          // After LISTEN each page may reach QEMU once: a repeat (a replayed or forged
          // record) would make its UFFDIO_COPY fail and kill the destination VM.
          const fresh = run.filter((x) => {
            const page = recs[x]!.offset / PAGE_SIZE;
            if (held[page]) return false;
            held[page] = 1; // a repeat within this run is a repeat too
            return true;
          });
          state.duplicatesDropped = (state.duplicatesDropped ?? 0) + run.length - fresh.length;
          state.pagesAfterSwitchover = (state.pagesAfterSwitchover ?? 0) + fresh.length;
          run.splice(0, run.length, ...fresh);
          if (run.length === 0) {
            i = j;
            continue;
          }
        }
        // A uniform non-zero page goes to QEMU as a normal page: QEMU's own source never sends
        // a ZERO record with another fill byte (7.2 loads one; later versions refuse it).
        const batch: PageBatch = {
          type: "pages", offset: 0, block: block.id, round: ext.round, count: run.length,
          offsets: new Float64Array(run.length), kinds: new Uint8Array(run.length), fills: new Uint8Array(run.length),
          named: new Uint8Array(run.length), positions: new Float64Array(run.length), data: EMPTY, views: [],
        };
        for (let n = 0; n < run.length; n++) {
          const r = recs[run[n]!]!;
          if (r.offset + PAGE_SIZE > block.usedBytes) throw new ManifestError(`manifest page at ${r.offset} is outside block ${block.id} (${block.usedBytes} bytes)`);
          batch.offsets[n] = r.offset;
          held[r.offset / PAGE_SIZE] = 1;
          batch.named[n] = n === 0 ? 1 : 0;
          if (r.kind === ManifestKind.page) {
            batch.kinds[n] = 1;
            batch.views!.push(views[run[n]!]!);
            state.delivered!.keyed(b, r.offset, ev.data, r.keyAt);
          } else if (r.fill !== 0) {
            batch.kinds[n] = 1;
            batch.views!.push(fillPage(r.fill));
            state.delivered!.fill(b, r.offset, r.fill);
          } else {
            batch.kinds[n] = 0;
            batch.fills[n] = 0;
            state.delivered!.fill(b, r.offset, 0);
          }
        }
        state.pagesWritten += run.length;
        yield batch;
        i = j;
      }
      if (recs.length) yield { type: "ramSectionEnd", offset: 0, sectionId: ram.id };
      state.seqWritten = Number((ev.ext as { seq: number }).seq);
      state.waitingFor = `the manifest after seq ${state.seqWritten}`;
      batches++;
      o.onProgress?.({ round, pages: state.pagesWritten, batches });
    } else if (ev.type === manifestCommand.type) {
      if (!state.held) throw new ManifestError("migration command before the manifest header");
      const c = (ev.data as ManifestCommandData).command;
      let command: MigrationCommand;
      if (c.cmd === "packaged") {
        const data = await o.packs.getObject(c.object);
        if (!data || data.byteLength !== c.bytes) throw new ManifestError(`packaged device state ${c.object} is missing or has the wrong size`);
        command = { cmd: "packaged", data: Buffer.from(data) };
        state.deviceStateDigest = createHash("sha256").update(data).digest("hex");
      } else command = c;
      if (c.cmd === "postcopyRamDiscard") {
        // Re-dirtied since sent: QEMU drops them, and they come again after the switch-over.
        const b = blocks.findIndex((x) => x.id === c.block);
        if (b < 0) throw new ManifestError(`discard names RAM block ${c.block}, not in the header`);
        const held = state.held[b]!;
        for (const r of c.ranges) held.fill(0, Math.floor(r.start / PAGE_SIZE), Math.ceil((r.start + r.length) / PAGE_SIZE));
      }
      if (command.cmd === "postcopyRamDiscard") {
        // As QEMU frames them: at most 12 ranges per command.
        for (let i = 0; i < command.ranges.length; i += 12) yield { type: "command", offset: 0, command: { ...command, ranges: command.ranges.slice(i, i + 12) } };
      } else yield { type: "command", offset: 0, command };
      state.seqWritten = (ev.data as ManifestCommandData).seq;
      state.waitingFor = `the manifest after seq ${state.seqWritten}`;
      if (c.cmd === "packaged") {
        state.postcopy = true;
        o.onSwitchover?.();
      }
    } else if (ev.type === manifestCompleted.type) {
      const c = ev.data as ManifestCompleted;
      state.completed = c;
      if (!state.header) throw new ManifestError("manifest completed without a header");
      // Post-copy sent the device state in PACKAGED; only the end of the RAM is left.
      state.waitingFor = "the device state";
      const td = Date.now();
      const other = testFault("swap-device-state", o.vm);
      const device = other ? await otherDeviceState(o.packs, c.deviceState.replace(new RegExp(`-${o.vm}$`), `-${other}`))
        : c.deviceStateInline !== undefined ? Buffer.from(c.deviceStateInline, "base64")
        : c.deviceStateBytes > 0 ? await o.packs.getObject(c.deviceState) : Buffer.alloc(0);
      // What this destination loads, for the commit to compare with what its source stored.
      if (device && c.deviceStateBytes > 0) state.deviceStateDigest = createHash("sha256").update(device).digest("hex");
      dlog.debug("device state read", { vm: o.vm, bytes: c.deviceStateBytes, inline: c.deviceStateInline !== undefined, ms: Date.now() - td });
      state.waitingFor = "QEMU to take the device state and the end of the stream";
      if (!device || (device.byteLength !== c.deviceStateBytes && !other)) throw new ManifestError(`device state ${c.deviceState} is missing or has the wrong size`);
      yield { type: "ramSection", offset: 0, section: "end", sectionId: ram.id, instanceId: ram.instance, versionId: ram.version };
      yield { type: "ramSectionEnd", offset: 0, sectionId: ram.id };
      if (device.byteLength > 0) yield { type: "device", offset: 0, section: "full", sectionId: 0, idstr: "", instanceId: 0, versionId: 0, raw: Buffer.from(device) };
      yield { type: "eof", offset: 0 };
      return;
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** A test fault: another VM's device state, once its source stored it. */
async function otherDeviceState(packs: PackStore, name: string): Promise<Uint8Array | undefined> {
  for (let i = 0; i < 600; i++) {
    const d = await packs.getObject(name);
    if (d) return d;
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}
