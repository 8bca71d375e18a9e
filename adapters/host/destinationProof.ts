/**
 * The destination's proof, against the source's real memory. Once its QEMU has loaded the
 * stream (paused, never run), the destination reads its RAM file back and keys every page —
 * what QEMU loaded, not what gangway meant to deliver. Meanwhile the source reads its own
 * stopped RAM and says what differs from what it sent (manifest verified): those pages are
 * written into the paused VM's RAM file (QEMU's shared mapping of its memory) and read back.
 * The digest that results is what the commit compares with the source's RAM digest.
 */
import { open } from "node:fs/promises";
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import { ManifestKind, MANIFEST_RECORD_BYTES, manifestVerified } from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { deadLetterSink } from "../../infra/events/deadLetter.ts";
import { jetstream } from "@nats-io/jetstream";
import { hostSource } from "./manifestOrder.ts";
import { KEY_BYTES, PAGE_SIZE, keyHex, type PageKeyer } from "../dataplane/contentKey.ts";
import { readManifestRecords } from "../dataplane/manifestRecords.ts";
import type { RamChecker } from "../dataplane/ramCheck.ts";
import { readRamInto, writeRamPages } from "../dataplane/ramProof.ts";
import { startRamDump } from "../dataplane/ramDump.ts";
import type { PageSource } from "./packLocator.ts";
import type { TargetState } from "./targetMigration.ts";
import { testFault } from "./testFaults.ts";

type Verified = z.infer<typeof manifestVerified.extensions>;

export interface DestinationProof {
  /** Digest of the image the destination holds (RAM read back after the repairs). */
  digest: string;
  expected: number;
  delivered: number;
  pagesRepaired: number;
  /** Pages QEMU holds otherwise than gangway delivered them, and the first of them. */
  loadDiffering: number;
  firstLoadDiffering?: string;
  /** What the source said of its memory. */
  source: { ramDigest: string; sentDigest: string; deviceStateDigest: string; differing: number; firstDiffering?: string; readMs: number };
  readMs: number;
  /** How long the proof waited for the source's after its own read-back, and for its dump (0 without). */
  sourceWaitMs: number;
  dumpWaitMs: number;
}

/**
 * The source's proof for this VM: the first one from its source host. Anything else on the
 * subject (unreadable, of another type, VM or migration, from another host) is dead-lettered.
 */
async function sourceProof(o: { nc: NatsConnection; migrationId: string; vm: string; sourceHost?: string; host?: string; timeoutMs: number; ended?: Promise<unknown>; fromSeq?: number }): Promise<{ ext: Verified; body: Uint8Array }> {
  const { migrationId, vm } = o;
  const deadLetters = deadLetterSink(jetstream(o.nc), hostSource(o.host ?? "destination"), "destination-proof");
  // From the last manifest message read: the proof comes after the stream it proves, and a
  // follower from the stream's start would scan all of it first (seconds, in the downtime).
  const messages = await StreamFollower.start(o.nc, { filter: manifestVerified.subject({ migrationId, vm }), inactiveThresholdMs: 15_000, ...(o.fromSeq ? { fromSeq: o.fromSeq } : {}) });
  const timer = setTimeout(() => messages.stop(new Error(`the source did not prove its memory within ${Math.round(o.timeoutMs / 1000)} s`)), o.timeoutMs);
  void o.ended?.then(() => messages.stop(new Error("the migration ended on this host")));
  try {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      const refused = !d.ok ? `unreadable source proof: ${d.reason}`
        : d.event.type !== manifestVerified.type || d.event.mode !== "binary" ? `${d.event.type} on the source proof's subject`
        : (d.event.ext as Verified).migrationId !== migrationId || (d.event.ext as Verified).vm !== vm ? "a source proof of another migration or VM"
        : o.sourceHost && d.event.source !== hostSource(o.sourceHost) ? `a source proof sent by ${d.event.source}, not by the source host ${o.sourceHost}`
        : undefined;
      if (refused || !d.ok || d.event.mode !== "binary") {
        deadLetters(m, `${migrationId}/${vm}: ${refused}`, "manifest");
        continue;
      }
      return { ext: d.event.ext as Verified, body: d.event.data };
    }
    throw new Error("the source's proof stream ended");
  } finally {
    clearTimeout(timer);
    await messages.close();
  }
}

export async function proveDestination(o: {
  nc: NatsConnection;
  migrationId: string;
  vm: string;
  tenant: string;
  state: TargetState;
  ramPath: string;
  keyer: PageKeyer;
  pages: PageSource;
  timeoutMs: number;
  ended?: Promise<unknown>;
  /** The migration's source host (a proof from another is refused) and this host. */
  sourceHost?: string;
  host?: string;
  /** Waits are said here (what the destination waits for). */
  onWait?: (what: string) => void;
  /** Workers for the RAM read. */
  checker?: RamChecker;
}): Promise<DestinationProof> {
  const img = o.state.delivered;
  const header = o.state.header;
  if (!img || !header) throw new Error("nothing was delivered");
  const m0 = header.blocks.findIndex((b) => b.id === "m0");
  if (m0 < 0) throw new Error("the manifest has no RAM block m0: the destination's memory cannot be proved");
  const fromSource = sourceProof({ ...o, ...(o.state.streamSeq ? { fromSeq: o.state.streamSeq } : {}) });
  fromSource.catch(() => undefined); // awaited below
  o.onWait?.("the read-back of the image");
  if (testFault("alter-loaded-page", o.vm) !== undefined) await alterPage(o.ramPath, 0x300000);
  const dump = await startRamDump(o.ramPath, o.migrationId, o.vm, "destination");
  // The other blocks (ROMs) are not files: they count as delivered.
  const read = await readRamInto({ image: img, block: m0, ramPath: o.ramPath, sizeBytes: header.blocks[m0]!.usedBytes, keyer: o.keyer, ...(o.checker ? { checker: o.checker } : {}) });
  o.onWait?.("the source's proof of its memory");
  const waitFrom = performance.now();
  const { ext, body } = await fromSource;
  const sourceWaitMs = Math.round(performance.now() - waitFrom);
  const repairs: { offset: number; page: Uint8Array }[] = [];
  const readBack: { offset: number; page: Uint8Array }[] = [];
  if (ext.count > 0) {
    o.onWait?.(`the ${ext.count} repaired pages`);
    // Pages carried in the proof are checked against their keys like a pack's.
    const inlineAt = ext.count * MANIFEST_RECORD_BYTES;
    const check = new Uint8Array(KEY_BYTES);
    let i = 0;
    for (const r of readManifestRecords(body, ext.count)) {
      if (r.kind !== ManifestKind.page || r.block !== m0) throw new Error(`repair record for block ${r.block} (only m0 is repaired)`);
      if (r.offset + PAGE_SIZE > header.blocks[m0]!.usedBytes) throw new Error(`repair record at ${r.offset} is outside block m0`);
      if (ext.inline) {
        const page = body.subarray(inlineAt + i * PAGE_SIZE, inlineAt + (i + 1) * PAGE_SIZE);
        o.keyer.keyInto(page, check, 0);
        if (Buffer.compare(check, body.subarray(r.keyAt, r.keyAt + KEY_BYTES)) !== 0) throw new Error(`repaired page ${i} in the source's proof does not match its key ${keyHex(body, r.keyAt)}`);
        repairs.push({ offset: r.offset, page });
      } else repairs.push({ offset: r.offset, page: await o.pages.page(o.tenant, keyHex(body, r.keyAt), o.keyer, o.timeoutMs) });
      i++;
    }
    await writeRamPages(o.ramPath, repairs);
    // Read back what the file holds now (not what was meant to be written).
    const scratch = new Uint8Array(KEY_BYTES);
    const fh = await open(o.ramPath, "r");
    try {
      for (const r of repairs) {
        const again = Buffer.allocUnsafe(PAGE_SIZE);
        await fh.read(again, 0, PAGE_SIZE, r.offset);
        img.setFromBytes(m0, r.offset, again, o.keyer, scratch);
        readBack.push({ offset: r.offset, page: again });
      }
    } finally {
      await fh.close();
    }
  }
  const dumpFrom = performance.now();
  await dump?.finish(readBack);
  const dumpWaitMs = Math.round(performance.now() - dumpFrom);
  return {
    digest: img.digest(), expected: img.totalPages(), delivered: img.pages(), pagesRepaired: repairs.length,
    loadDiffering: read.differing, ...(read.firstDiffering !== undefined ? { firstLoadDiffering: `m0+0x${read.firstDiffering.toString(16)}` } : {}),
    source: {
      ramDigest: ext.sourceramdigest, sentDigest: ext.sentdigest, deviceStateDigest: ext.devicestatedigest, differing: ext.differing, readMs: ext.readms,
      ...(ext.firstdiffering ? { firstDiffering: ext.firstdiffering } : {}),
    },
    readMs: read.durationMs, sourceWaitMs, dumpWaitMs,
  };
}

/** A test fault: one byte of one page changed in the loaded RAM. */
async function alterPage(ramPath: string, offset: number): Promise<void> {
  const fh = await open(ramPath, "r+");
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset + 9);
    b[0] = b[0]! ^ 0xa5;
    await fh.write(b, 0, 1, offset + 9);
  } finally {
    await fh.close();
  }
}
