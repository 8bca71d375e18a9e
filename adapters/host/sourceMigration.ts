/**
 * The source side of one VM's migration: takes the records QEMU's migration stream parses
 * into, keys every page, asks the dedup index about keys this gang has not met yet, packs
 * the pages this VM claimed, and publishes the VM's manifest (header, batches by round,
 * completion with the device state and the image digest). Look-ups of several batches are
 * in flight at once; manifest batches still go out in stream order.
 */
import { createHash } from "node:crypto";
import { KeyStatus, MAX_INLINE_DEVICE_STATE, manifestBatch, manifestCommand, manifestCompleted, manifestHeader, type ManifestCommand } from "../../schemas/index.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";
import type { MigrationCommand, StreamRecord, PageBatch } from "../qemu/stream/records.ts";
import { KEY_BYTES, PAGE_SIZE, uniformByte, type PageKeyer } from "../dataplane/contentKey.ts";
import { KeyTable } from "../../kit/keyTable.ts";
import { ImageDigest } from "../dataplane/imageDigest.ts";
import { ManifestWriter } from "../dataplane/manifestRecords.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import type { KeyResolver } from "./keyResolver.ts";
import { PackWriter } from "./packWriter.ts";

/** Counters of one VM's migration, under libvirt's names where one exists. */
export interface SourceProgress {
  vm: string;
  round: number;
  memory_total: number;
  /** Pages the stream carried so far (all rounds). */
  pages: number;
  /** Zero (and uniform) pages: one record, no data. */
  memory_constant: number;
  /** Pages referenced instead of sent: seen before in this gang or held by the destination. */
  pages_deduplicated: number;
  /** Pages this VM sent in packs. */
  pages_sent: number;
  /** Bytes of QEMU's own stream (what native migration would have carried). */
  native_bytes: number;
  /** Bytes this VM put on the link: packs, manifest, look-ups' share, device state. */
  bytes_on_link: number;
  /** Raw bytes of the pages it packed, before compression. */
  packed_raw_bytes: number;
  packed_bytes: number;
  /** Post-copy: pages sent again at the switch-over because the source's RAM differed. */
  pages_repaired: number;
}

export interface SourceMigrationOptions {
  migrationId: string;
  vm: string;
  tenant: string;
  sourceHost: string;
  records: AsyncIterable<StreamRecord>;
  publisher: EventPublisher;
  packs: PackStore;
  keyer: PageKeyer;
  resolver: KeyResolver;
  /** Keys this gang already resolved (shared by the gang's VMs on this host): key → KeyStatus. */
  gangKeys: KeyTable;
  /**
   * Keys this host knows are stored in a page pack (its preparation scans stored them):
   * referenced without asking the dedup index. Whoever finds such a pack damaged makes the
   * host forget them (see the agent), as the index does.
   */
  storedKeys?: KeyTable;
  /** Raw bytes QEMU has sent so far (from the proxy), for progress. */
  nativeBytes: () => number;
  onProgress?: (p: SourceProgress) => void;
  /** Pages per manifest batch. @default 4096 */
  batchPages?: number;
  /** Pages per page pack. @default 256 (1 MiB raw) */
  packPages?: number;
  /** A pre-copy pass ended (QEMU's stream wrapped around): its figures, for the dirty log. */
  onRound?: (r: RoundFigures) => void;
  /** Post-copy: a page went into the manifest after the switch-over; `sent`: as content, else by key only. */
  onPostcopyPage?: (block: string, offset: number, sent: boolean) => void;
  /** Post-copy: the manifest batches holding those pages are published. */
  onPostcopyFlushed?: () => void;
  /** A manifest message (batch or command) with this sequence number is published. */
  onPublished?: (seq: number) => void;
  /** While true, every parsed batch goes out at once (a switch-over is draining the pipeline). */
  lowLatency?: () => boolean;
  /**
   * Post-copy, at the switch-over: pages to send again before the device state (the stopped
   * source's RAM differs from what was sent and not discarded; see sourceRamProof.ts).
   */
  staleAtSwitchover?: (image: ImageDigest, blocks: { id: string; usedBytes: number }[], discarded: (block: number, offset: number) => boolean) => Promise<{ block: number; offset: number; page: Buffer }[]>;
  /**
   * QEMU's stream ended (the guest is stopped) and every page of it is in the image: what was
   * sent is final, though packs and the device state are still being stored. The source's
   * proof reads its RAM from here, while those finish.
   */
  onStreamEnd?: (sent: SentImage) => void;
  /**
   * The image as it is being built (from the RAM setup on): pages are recorded in it as they
   * are parsed. The source's proof starts reading its RAM against it when the guest stops.
   */
  onImage?: (sent: SentImage) => void;
}

/** What a source sent, page by page: final once QEMU's stream ended. */
export interface SentImage {
  /** The image the stream implies, with the RAM blocks as the header listed them. */
  image: ImageDigest;
  blocks: { id: string; usedBytes: number }[];
  /** Where a page was last carried: its pass and manifest sequence number (undefined: never). */
  origin(block: number, offset: number): { round: number; seq: number } | undefined;
}

/** One pre-copy pass as the source saw it. */
export interface RoundFigures {
  round: number;
  /** Pages the pass carried (zero, by key and as content). */
  pages: number;
  durationMs: number;
  /** Bytes of QEMU's stream during the pass. */
  nativeBytes: number;
  /** Bytes gangway put on the link for it. */
  linkBytes: number;
}

export interface SourceResult extends SentImage {
  progress: SourceProgress;
  digest: string;
  rounds: number;
  /** SHA-256 of the device state stored for the destination. */
  deviceStateDigest: string;
}

interface Prepared {
  batch: PageBatch;
  blockIndex: number;
  /** per page: fill byte, or -1 for keyed pages */
  fills: Int16Array;
  keys: Uint8Array;
  /** statuses of the keys that needed a look-up, by page index (255: no look-up needed) */
  statuses: Promise<Uint8Array>;
}

export async function runSourceMigration(o: SourceMigrationOptions): Promise<SourceResult> {
  const p: SourceProgress = {
    vm: o.vm, round: 0, memory_total: 0, pages: 0, memory_constant: 0, pages_deduplicated: 0, pages_sent: 0,
    native_bytes: 0, bytes_on_link: 0, packed_raw_bytes: 0, packed_bytes: 0, pages_repaired: 0,
  };
  const batchPages = o.batchPages ?? 4096;
  const ext = { migrationId: o.migrationId, vm: o.vm, tenant: o.tenant };
  const vmParams = { migrationId: o.migrationId, vm: o.vm };
  let blocks: { id: string; usedBytes: number }[] = [];
  let blockIndex = new Map<string, number>();
  let digest: ImageDigest | undefined;
  /** Per block and page: the pass (+1; 0 never) and manifest seq it was last carried in. */
  let origins: { round: Uint16Array; seq: Uint32Array }[] = [];
  const origin = (block: number, offset: number) => {
    const r = origins[block]?.round[offset / PAGE_SIZE];
    return r ? { round: r - 1, seq: origins[block]!.seq[offset / PAGE_SIZE]! } : undefined;
  };
  let configRaw: Buffer | undefined;
  let machine = "unknown";
  let ramSection = { id: 0, instance: 0, version: 4 };
  let headerSent = false;
  const deviceState: Buffer[] = [];
  /** Post-copy: pages discarded at the switch-over (they come again after it), per block. */
  const discarded: Uint8Array[] = [];
  /** Post-copy: the device state travelled in PACKAGED. */
  let packagedDigest: string | undefined;
  let manifestSeq = 0;
  const writer = new ManifestWriter(batchPages);
  const packer = new PackWriter({ migrationId: o.migrationId, sourceHost: o.sourceHost, vm: o.vm, tenant: o.tenant, publisher: o.publisher, packs: o.packs, ...(o.packPages ? { packPages: o.packPages } : {}) });
  /** Keys this VM claimed and has packed (or is packing), to never pack one twice. */
  const packedHere = new KeyTable(4096);
  /** After PACKAGED: the destination runs (or is about to), pages are faulted in. */
  let postcopy = false;
  let roundStart = { at: Date.now(), pages: 0, native: 0, link: 0 };

  const report = () => {
    p.native_bytes = o.nativeBytes();
    p.packed_raw_bytes = packer.rawBytes;
    p.packed_bytes = packer.storedBytes;
    o.onProgress?.({ ...p, bytes_on_link: p.bytes_on_link + packer.linkBytes });
  };

  const flushManifest = async (round: number, final: boolean) => {
    await flushDiscards();
    if (writer.count === 0 && !final) return;
    const { count, body } = writer.take();
    const seq = manifestSeq++;
    await o.publisher.publishBinary(manifestBatch, vmParams, { ...ext, round, seq, count, final }, body, { id: `${o.migrationId}-${o.vm}-m${seq}` });
    o.onPublished?.(seq);
    p.bytes_on_link += body.byteLength + 300;
  };

  const prepare = (batch: PageBatch): Prepared => {
    const bi = blockIndex.get(batch.block);
    if (bi === undefined) throw new Error(`page of unknown RAM block "${batch.block}"`);
    const fills = new Int16Array(batch.count);
    const keys = new Uint8Array(batch.count * KEY_BYTES);
    const ask: number[] = [];
    let d = 0;
    for (let i = 0; i < batch.count; i++) {
      if (batch.kinds[i] === 0) {
        fills[i] = batch.fills[i]!;
        continue;
      }
      const page = batch.data.subarray(d, d + PAGE_SIZE);
      d += PAGE_SIZE;
      const u = uniformByte(page);
      if (u !== undefined) {
        fills[i] = u;
        continue;
      }
      fills[i] = -1;
      o.keyer.keyInto(page, keys, i * KEY_BYTES);
      if (!o.gangKeys.has(keys, i * KEY_BYTES) && !o.storedKeys?.has(keys, i * KEY_BYTES)) ask.push(i);
    }
    let statuses: Promise<Uint8Array>;
    if (ask.length === 0) statuses = Promise.resolve(new Uint8Array(batch.count).fill(255));
    else {
      const askKeys = new Uint8Array(ask.length * KEY_BYTES);
      ask.forEach((i, j) => askKeys.set(keys.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES), j * KEY_BYTES));
      statuses = o.resolver.resolve(o.vm, o.tenant, askKeys).then((s) => {
        const all = new Uint8Array(batch.count).fill(255);
        ask.forEach((i, j) => (all[i] = s[j]!));
        return all;
      });
    }
    // Observed in finish(); until then a failure must not count as unhandled.
    statuses.catch(() => undefined);
    return { batch, blockIndex: bi, fills, keys, statuses };
  };

  const finish = async (pr: Prepared) => {
    const statuses = await pr.statuses;
    const { batch } = pr;
    let d = 0;
    for (let i = 0; i < batch.count; i++) {
      const offset = batch.offsets[i]!;
      const isNormal = batch.kinds[i] === 1;
      const page = isNormal ? batch.data.subarray(d, d + PAGE_SIZE) : undefined;
      if (isNormal) d += PAGE_SIZE;
      p.pages++;
      const origin = origins[pr.blockIndex]!;
      origin.round[offset / PAGE_SIZE] = Math.min(batch.round + 1, 0xffff);
      origin.seq[offset / PAGE_SIZE] = manifestSeq;
      const fill = pr.fills[i]!;
      if (fill >= 0) {
        writer.addZero(offset, pr.blockIndex, fill);
        digest!.fill(pr.blockIndex, offset, fill);
        p.memory_constant++;
      } else {
        const at = i * KEY_BYTES;
        // 255: the gang knew the key before this batch asked: someone else sends it.
        const status = statuses[i]!;
        if (status !== 255) o.gangKeys.set(pr.keys, at, status);
        const sendNow = status === KeyStatus.claimed && !packedHere.has(pr.keys, at);
        if (sendNow) {
          packedHere.set(pr.keys, at, 1);
          packer.add(pr.keys, i * KEY_BYTES, page!);
          p.pages_sent++;
        } else p.pages_deduplicated++;
        if (postcopy) o.onPostcopyPage?.(batch.block, offset, sendNow);
        writer.addPage(offset, pr.blockIndex, pr.keys, i * KEY_BYTES);
        digest!.keyed(pr.blockIndex, offset, pr.keys, i * KEY_BYTES);
      }
      if (writer.full) await flushManifest(batch.round, false);
    }
  };

  const inFlight: Prepared[] = [];
  let inFlightPages = 0;
  // Pages parsed but not yet in the manifest. Small, so QEMU feels the pipeline's real pace
  // through back-pressure: what is still in flight when it stops the guest is downtime
  // (measured on the demo: 16384 → downtime 8–9 s, 4096 → 4–5.7 s, 1024 → 3.9–5 s).
  const MAX_IN_FLIGHT_PAGES = 1024;
  let lastReport = 0;
  const drain = async () => {
    while (inFlight.length) {
      const pr = inFlight.shift()!;
      inFlightPages -= pr.batch.count;
      await finish(pr);
    }
  };
  /** Passes a command on in stream order: everything before it is in the manifest first. */
  /** Commands before the RAM setup travel in the manifest header (QEMU needs them before the RAM). */
  const preamble: ManifestCommand[] = [];
  const publishCommand = async (command: ManifestCommand) => {
    const seq = manifestSeq++;
    await o.publisher.publish(manifestCommand, vmParams, { migrationId: o.migrationId, vm: o.vm, seq, command }, { id: `${o.migrationId}-${o.vm}-m${seq}` });
    o.onPublished?.(seq);
    p.bytes_on_link += 300;
  };
  // QEMU sends the switch-over's discards 12 ranges at a time; one event carries a block's
  // run of them (the destination splits them again), which keeps the downtime short.
  let discards: Extract<ManifestCommand, { cmd: "postcopyRamDiscard" }> | undefined;
  const flushDiscards = async () => {
    const d = discards;
    discards = undefined;
    if (d) await publishCommand(d);
  };
  const forward = async (c: MigrationCommand) => {
    if (!headerSent) {
      if (c.cmd !== "openReturnPath" && c.cmd !== "postcopyAdvise" && c.cmd !== "ping") throw new Error(`migration command ${c.cmd} before the RAM setup is not supported through gangway`);
      preamble.push(c);
      return;
    }
    await drain();
    if (c.cmd === "postcopyRamDiscard") {
      const b = blockIndex.get(c.block);
      if (b !== undefined) {
        const d = (discarded[b] ??= new Uint8Array(blocks[b]!.usedBytes / PAGE_SIZE));
        for (const r of c.ranges) d.fill(1, Math.floor(r.start / PAGE_SIZE), Math.ceil((r.start + r.length) / PAGE_SIZE));
      }
    }
    if (c.cmd === "postcopyRamDiscard" && discards && discards.block === c.block && discards.version === c.version && discards.ranges.length < 4096) {
      discards.ranges.push(...c.ranges);
      return;
    }
    await flushManifest(p.round, false);
    if (c.cmd === "postcopyRamDiscard") {
      discards = { cmd: c.cmd, version: c.version, block: c.block, ranges: [...c.ranges] };
      return;
    }
    let command: ManifestCommand;
    switch (c.cmd) {
      case "packaged": {
        // Pages QEMU's stream left stale go first, as ordinary pages before LISTEN.
        const stale = (await o.staleAtSwitchover?.(digest!, blocks, (b, off) => discarded[b]?.[off / PAGE_SIZE] === 1)) ?? [];
        if (stale.length) {
          const key = new Uint8Array(KEY_BYTES);
          for (const r of stale) {
            o.keyer.keyInto(r.page, key, 0);
            packer.add(key, 0, r.page);
            writer.addPage(r.offset, r.block, key, 0);
            digest!.keyed(r.block, r.offset, key, 0);
            if (writer.full) await flushManifest(p.round, false);
          }
          p.pages_repaired += stale.length;
          await packer.drain();
          await flushManifest(p.round, false);
        }
        // Device state with LISTEN and RUN: too big for an event, so an object.
        const object = `packaged-${o.migrationId}-${o.vm}`;
        await o.packs.putObject(object, c.data);
        packagedDigest = createHash("sha256").update(c.data).digest("hex");
        p.bytes_on_link += c.data.byteLength;
        command = { cmd: "packaged", object, bytes: c.data.byteLength };
        break;
      }
      case "openReturnPath":
      case "ping":
      case "postcopyAdvise":
      case "switchoverStart":
        command = c;
        break;
      default:
        throw new Error(`migration command ${c.cmd} is not supported through gangway`);
    }
    await publishCommand(command);
    if (c.cmd === "packaged") postcopy = true;
  };

  for await (const r of o.records) {
    switch (r.type) {
      case "header":
        break;
      case "config":
        configRaw = r.raw;
        machine = r.config.machine || machine;
        break;
      case "ramSection":
        if (r.section === "start") ramSection = { id: r.sectionId, instance: r.instanceId, version: r.versionId };
        break;
      case "ramSetup":
        blocks = r.blocks.map((b) => ({ id: b.id, usedBytes: b.usedLength }));
        blockIndex = new Map(blocks.map((b, i) => [b.id, i]));
        digest = new ImageDigest(blocks.map((b) => b.usedBytes));
        origins = blocks.map((b) => ({ round: new Uint16Array(b.usedBytes / PAGE_SIZE), seq: new Uint32Array(b.usedBytes / PAGE_SIZE) }));
        o.onImage?.({ image: digest, blocks, origin });
        p.memory_total = blocks.reduce((n, b) => n + b.usedBytes, 0);
        await o.publisher.publish(manifestHeader, vmParams, {
          ...ext, sourceHost: o.sourceHost, machine, blocks, ramSetupWord: String(r.totalBytes), configRaw: (configRaw ?? Buffer.alloc(0)).toString("base64"), ramSection, commands: preamble,
        }, { id: `${o.migrationId}-${o.vm}-header` });
        headerSent = true;
        break;
      case "round": {
        // Manifest batches never span rounds: the destination keeps each round's order.
        await drain();
        await flushManifest(p.round, false);
        if (!postcopy && p.pages > roundStart.pages) {
          // Faults in post-copy come in any order; only pre-copy passes are rounds.
          const link = p.bytes_on_link + packer.linkBytes;
          o.onRound?.({ round: p.round, pages: p.pages - roundStart.pages, durationMs: Date.now() - roundStart.at, nativeBytes: o.nativeBytes() - roundStart.native, linkBytes: link - roundStart.link });
          roundStart = { at: Date.now(), pages: p.pages, native: o.nativeBytes(), link };
        }
        p.round = r.round;
        break;
      }
      case "pages": {
        if (!headerSent) throw new Error("page records before the RAM setup");
        const pr = prepare(r);
        inFlight.push(pr);
        inFlightPages += r.count;
        while (inFlightPages > MAX_IN_FLIGHT_PAGES) {
          const first = inFlight.shift()!;
          inFlightPages -= first.batch.count;
          await finish(first);
        }
        if (postcopy || o.lowLatency?.()) {
          // A guest waits on each faulted page (or a switch-over on the pipeline to drain): no batching across parser batches.
          await drain();
          packer.flush();
          await flushManifest(p.round, false);
          if (postcopy) o.onPostcopyFlushed?.();
        }
        if (Date.now() - lastReport > 250) {
          lastReport = Date.now();
          report();
        }
        break;
      }
      case "ramSectionEnd":
        break;
      case "device":
        deviceState.push(r.raw);
        break;
      case "command":
        await forward(r.command);
        break;
      case "eof":
        // The destination writes its own EOF after the device state.
        break;
      case "vmdesc":
        // Droppable: QEMU's own destination ignores it; not sent.
        break;
    }
  }
  while (inFlight.length) await finish(inFlight.shift()!);
  if (!digest) throw new Error("the stream ended before the RAM setup");
  o.onStreamEnd?.({ image: digest, blocks, origin });
  await packer.drain();
  await flushManifest(p.round, true);

  const state = Buffer.concat(deviceState);
  const stateName = `state-${o.migrationId}-${o.vm}`;
  // Post-copy sent the device state in PACKAGED: nothing is left for the end. A small one
  // rides in manifest.completed too, and its object is stored meanwhile (for the audit).
  const inline = state.byteLength > 0 && state.byteLength <= MAX_INLINE_DEVICE_STATE;
  const stored = state.byteLength > 0 ? o.packs.putObject(stateName, state) : Promise.resolve();
  stored.catch(() => undefined); // awaited below
  if (!inline) await stored;
  p.bytes_on_link += state.byteLength + (inline ? Math.ceil(state.byteLength / 3) * 4 : 0);
  p.packed_raw_bytes = packer.rawBytes;
  p.packed_bytes = packer.storedBytes;
  p.bytes_on_link += packer.linkBytes;
  const result: SourceResult = {
    progress: { ...p, native_bytes: o.nativeBytes() }, digest: digest.digest(), rounds: p.round, image: digest, blocks, origin,
    deviceStateDigest: state.byteLength === 0 && packagedDigest ? packagedDigest : createHash("sha256").update(state).digest("hex"),
  };
  await o.publisher.publish(manifestCompleted, vmParams, {
    migrationId: o.migrationId, vm: o.vm, deviceState: stateName, deviceStateBytes: state.byteLength, rounds: p.round, batches: manifestSeq, records: p.pages + p.pages_repaired, digest: result.digest,
    ...(inline ? { deviceStateInline: state.toString("base64") } : {}),
  }, { id: `${o.migrationId}-${o.vm}-completed` });
  await stored;
  o.onProgress?.(result.progress);
  return result;
}
