/**
 * The source's proof against its real memory, and the repair pass. Once the source QEMU has
 * stopped the guest for the switch-over, its RAM file holds the truth. QEMU 7.2's TCG can
 * leave a page out of its last pass (after a dirty-bitmap sync its fast path does not reset
 * the TLB's not-dirty flags, so later guest stores through the TLB set no dirty bit; fixed
 * upstream in 9.0): the stream then implies an older page than the guest holds, natively
 * too. So the RAM is read and keyed like the stream's pages; every page whose bytes differ
 * from what was sent goes once more (packed like any page), and the destination writes those
 * into its paused VM before it proves what it holds. The event says all three facts: the
 * RAM's digest, the digest of what was sent (stream, then repairs), the device state's.
 */
import { manifestVerified } from "../../schemas/index.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";
import { KEY_BYTES, type PageKeyer } from "../dataplane/contentKey.ts";
import type { ImageDigest } from "../dataplane/imageDigest.ts";
import { ManifestWriter } from "../dataplane/manifestRecords.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import type { RamChecker } from "../dataplane/ramCheck.ts";
import { readPagesInto, readRamInto, type RamReadResult } from "../dataplane/ramProof.ts";
import { startRamDump } from "../dataplane/ramDump.ts";
import type { SentImage, SourceResult } from "./sourceMigration.ts";
import { PackWriter } from "./packWriter.ts";
import { testFault } from "./testFaults.ts";

/** Repairs up to this many pages travel in the proof's body as well (~0.5 MiB, under NATS's 1 MB payload). */
export const MAX_INLINE_REPAIRS = 128;
/** The most pages one repair pass carries; more means something else is wrong (never seen: a handful). */
export const MAX_REPAIR_PAGES = 16384;

export interface SourceRamProof {
  sourceRamDigest: string;
  sentDigest: string;
  pagesRepaired: number;
  /** The first page whose RAM differed from the stream: block+offset and the pass it was last sent in. */
  firstDiffering?: string;
  /** The first differing pages, with the pass and manifest message that last carried each (for the log). */
  differing: { offset: string; pass?: number; seq?: number }[];
  readMs: number;
}

/** The stopped source's RAM, read against what was sent (the heavy half of the proof). */
export interface SourceRamRead {
  m0: number;
  /** The image of what the RAM holds. */
  ram: ImageDigest;
  repairs: { offset: number; page: Buffer }[];
  listed: SourceRamProof["differing"];
  read: RamReadResult;
}

/** The check of the stopped RAM begun when the guest stopped, against the image sent by then. */
export interface RamCheckAtStop {
  /** Pages whose RAM did not hold the image's entry then (undefined: the check failed; read it all). */
  differing: Promise<number[] | undefined>;
  startedAt: number;
}

/**
 * Starts the RAM check at the stop: the guest's RAM holds still from then on, while QEMU's
 * last pass and the pipeline's tail (most of a downtime) still go on. The image keeps
 * changing meanwhile, so it is tracked: only the pages recorded since need checking again
 * once it is final (readSourceRam), with a handful of reads instead of the whole RAM.
 */
export function checkRamAtStop(o: { ramPath: string; sent: SentImage; keyer: PageKeyer; checker?: RamChecker }): RamCheckAtStop | undefined {
  const m0 = o.sent.blocks.findIndex((b) => b.id === "m0");
  if (m0 < 0 || !o.checker) return undefined;
  const entries = o.sent.image.entriesOf(m0);
  o.sent.image.track();
  const startedAt = performance.now();
  const differing = o.checker.differing({ ramPath: o.ramPath, tenant: o.keyer.tenant, sizeBytes: o.sent.blocks[m0]!.usedBytes, entries }).catch(() => undefined);
  return { differing, startedAt };
}

/**
 * Reads the stopped source's RAM against the image sent. It may start as soon as QEMU's
 * stream ended (the image is final then), while the last packs and the device state are
 * still being stored: the read is the longest part of the proof, and the guest is stopped.
 * With a check begun at the stop, only the pages it found differing and those recorded
 * since are read.
 */
export async function readSourceRam(o: { migrationId: string; vm: string; ramPath: string; sent: SentImage; keyer: PageKeyer; repair: boolean; checker?: RamChecker; atStop?: RamCheckAtStop }): Promise<SourceRamRead> {
  const m0 = o.sent.blocks.findIndex((b) => b.id === "m0");
  if (m0 < 0) throw new Error("the stream has no RAM block m0 (the VM's memory-backend file): its memory cannot be proved");
  const dump = await startRamDump(o.ramPath, o.migrationId, o.vm, "source");
  const ram = o.sent.image.clone();
  const repairs: { offset: number; page: Buffer }[] = [];
  const listed: SourceRamProof["differing"] = [];
  const onDiffer = (offset: number, page: Buffer) => {
    if (o.repair && repairs.length < MAX_REPAIR_PAGES) repairs.push({ offset, page: Buffer.from(page) });
    if (listed.length < 64) {
      const origin = o.sent.origin(m0, offset);
      listed.push({ offset: `m0+0x${offset.toString(16)}`, ...(origin ? { pass: origin.round, seq: origin.seq } : {}) });
    }
  };
  const ramRead = { image: ram, block: m0, ramPath: o.ramPath, sizeBytes: o.sent.blocks[m0]!.usedBytes, keyer: o.keyer, onDiffer };
  const atStop = await o.atStop?.differing;
  const read = atStop
    ? await readPagesInto({ ...ramRead, offsets: mergeOffsets(atStop, o.sent.image.touchedOffsets(m0)), startedAt: o.atStop!.startedAt })
    : await readRamInto({ ...ramRead, ...(o.checker ? { checker: o.checker } : {}) });
  await dump?.finish();
  return { m0, ram, repairs, listed, read };
}

/** Two ascending lists of offsets as one, each offset once. */
function mergeOffsets(a: readonly number[], b: readonly number[]): number[] {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i]! <= b[j]!) ? a[i++]! : b[j++]!;
    if (out[out.length - 1] !== next) out.push(next);
  }
  return out;
}

/** The proof: the RAM read (started early, or here), its repairs stored, then announced. */
export async function proveSourceRam(o: {
  migrationId: string;
  vm: string;
  tenant: string;
  sourceHost: string;
  /** The VM's RAM file (block m0). */
  ramPath: string;
  sent: SourceResult;
  keyer: PageKeyer;
  publisher: EventPublisher;
  packs: PackStore;
  /** Post-copy: the destination runs already; differences are reported, not repaired. */
  repair: boolean;
  /** The RAM read, if it began when the stream ended. */
  reading?: Promise<SourceRamRead>;
}): Promise<SourceRamProof> {
  const { m0, ram, repairs, listed, read } = await (o.reading ?? readSourceRam(o));
  const sentAfterRepair = o.sent.image.clone();
  let firstDiffering: string | undefined;
  if (read.firstDiffering !== undefined) {
    const origin = o.sent.origin(m0, read.firstDiffering);
    firstDiffering = `m0+0x${read.firstDiffering.toString(16)} (${origin ? `last sent in pass ${origin.round}, manifest seq ${origin.seq}` : "never sent"})`;
  }
  const records = new ManifestWriter(Math.max(1, repairs.length));
  // Only the test fault skip-repair leaves them out (to show that QEMU's stream alone differs).
  const repaired = repairs.length > 0 && read.differing <= MAX_REPAIR_PAGES && testFault("skip-repair", o.vm) === undefined ? repairs : [];
  const packer = new PackWriter({ migrationId: o.migrationId, sourceHost: o.sourceHost, vm: o.vm, tenant: o.tenant, publisher: o.publisher, packs: o.packs });
  const key = new Uint8Array(KEY_BYTES);
  for (const r of repaired) {
    o.keyer.keyInto(r.page, key, 0);
    packer.add(key, 0, r.page);
    records.addPage(r.offset, m0, key, 0);
    sentAfterRepair.keyed(m0, r.offset, key, 0);
  }
  // A few pages (the usual handful) ride in the proof itself: the destination, paused in the
  // downtime, need not wait for their pack's put, announcement and fetch. The pack is stored
  // all the same (the audit resolves every key to a stored page), meanwhile.
  const inline = repaired.length > 0 && repaired.length <= MAX_INLINE_REPAIRS;
  if (!inline) {
    packer.flush();
    await packer.drain();
  }
  const proof: SourceRamProof = {
    sourceRamDigest: ram.digest(), sentDigest: sentAfterRepair.digest(), pagesRepaired: records.count, readMs: read.durationMs, differing: listed,
    ...(firstDiffering ? { firstDiffering } : {}),
  };
  const { count, body: recordBytes } = records.take();
  const body = inline ? Buffer.concat([recordBytes, ...repaired.map((r) => r.page)]) : recordBytes;
  await o.publisher.publishBinary(manifestVerified, { migrationId: o.migrationId, vm: o.vm }, {
    migrationId: o.migrationId, vm: o.vm, tenant: o.tenant, count, sourceramdigest: proof.sourceRamDigest, sentdigest: proof.sentDigest,
    devicestatedigest: o.sent.deviceStateDigest, differing: read.differing, readms: read.durationMs, ...(firstDiffering ? { firstdiffering: firstDiffering } : {}), inline,
  }, body, { id: `${o.migrationId}-${o.vm}-verified` });
  if (inline) {
    packer.flush();
    await packer.drain();
  }
  return proof;
}

/**
 * Post-copy: at the switch-over (the guest stopped, the destination not yet resumed) the pages
 * the destination already holds whose bytes differ from the stopped source's RAM — sent, not
 * discarded since (a discarded page comes again after the resume), yet different: QEMU lost
 * their dirty bits. They go to the destination before the device state, as ordinary pages.
 */
export async function stalePagesAtSwitchover(o: { ramPath: string; image: ImageDigest; blocks: { id: string; usedBytes: number }[]; discarded: (block: number, offset: number) => boolean; keyer: PageKeyer; checker?: RamChecker }): Promise<{ block: number; offset: number; page: Buffer }[]> {
  const m0 = o.blocks.findIndex((b) => b.id === "m0");
  if (m0 < 0) return [];
  const out: { block: number; offset: number; page: Buffer }[] = [];
  await readRamInto({
    image: o.image.clone(), block: m0, ramPath: o.ramPath, sizeBytes: o.blocks[m0]!.usedBytes, keyer: o.keyer, ...(o.checker ? { checker: o.checker } : {}),
    onDiffer: (offset, page) => {
      if (out.length < MAX_REPAIR_PAGES && o.image.has(m0, offset) && !o.discarded(m0, offset)) out.push({ block: m0, offset, page: Buffer.from(page) });
    },
  });
  return out;
}
