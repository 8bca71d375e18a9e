/**
 * The proof against real memory: a VM's guest RAM (block m0, a memory-backend file whose
 * offsets are the stream's) is read while its QEMU is stopped, and every page's entry of an
 * image digest is set from the bytes it holds. Pages whose bytes differ from what the image
 * said are handed to `onDiffer`: at the source, pages QEMU's stream never carried in their
 * last state (QEMU 7.2's TCG loses dirty bits); at the destination, pages QEMU did not load
 * as they were delivered.
 */
import { open } from "node:fs/promises";
import { KEY_BYTES, PAGE_SIZE, type PageKeyer } from "./contentKey.ts";
import type { ImageDigest } from "./imageDigest.ts";
import type { RamChecker } from "./ramCheck.ts";

const CHUNK = 256 * PAGE_SIZE;

export interface RamReadResult {
  /** Pages read. */
  pages: number;
  /** Pages whose bytes differed from the image's entry. */
  differing: number;
  /** Offset of the first of them. */
  firstDiffering?: number;
  durationMs: number;
}

/**
 * Reads `sizeBytes` of `ramPath` into block `block` of `image`. `onDiffer` gets each
 * differing page (valid only during the call: copy it to keep it).
 */
export async function readRamInto(o: {
  image: ImageDigest;
  block: number;
  ramPath: string;
  sizeBytes: number;
  keyer: PageKeyer;
  onDiffer?: (offset: number, page: Buffer) => void;
  /** Workers to check the pages on (the few that differ are then read here again). */
  checker?: RamChecker;
}): Promise<RamReadResult> {
  const started = performance.now();
  if (o.checker) {
    const differing = await o.checker.differing({ ramPath: o.ramPath, tenant: o.keyer.tenant, sizeBytes: o.sizeBytes, entries: o.image.entriesOf(o.block) })
      .catch(() => undefined); // no worker to do it: read it all here
    if (differing) return readPagesInto({ ...o, offsets: differing, startedAt: started });
  }
  const fh = await open(o.ramPath, "r");
  const scratch = new Uint8Array(KEY_BYTES);
  const result: RamReadResult = { pages: 0, differing: 0, durationMs: 0 };
  try {
    const chunk = Buffer.allocUnsafe(CHUNK);
    const size = Math.floor(o.sizeBytes / PAGE_SIZE) * PAGE_SIZE;
    for (let off = 0; off < size; off += CHUNK) {
      const want = Math.min(CHUNK, size - off);
      const { bytesRead } = await fh.read(chunk, 0, want, off);
      if (bytesRead < want) throw new Error(`RAM file ${o.ramPath} ends at ${off + bytesRead} bytes, block has ${size}`);
      // One chunk at a time without an await per page (0.3 ms of keying per chunk).
      for (let p = 0; p < bytesRead; p += PAGE_SIZE) {
        const page = chunk.subarray(p, p + PAGE_SIZE);
        result.pages++;
        if (!o.image.setFromBytes(o.block, off + p, page, o.keyer, scratch)) continue;
        if (result.differing++ === 0) result.firstDiffering = off + p;
        o.onDiffer?.(off + p, page);
      }
    }
  } finally {
    await fh.close();
  }
  result.durationMs = Math.round(performance.now() - started);
  return result;
}

/**
 * Reads only the pages at `offsets` (ascending) into `image`: those that may differ from their
 * entries (found by a check elsewhere, or recorded since the RAM was checked); every other
 * page of the block is known to hold its entry.
 */
export async function readPagesInto(o: Parameters<typeof readRamInto>[0] & { offsets: readonly number[]; startedAt?: number }): Promise<RamReadResult> {
  const started = o.startedAt ?? performance.now();
  const offsets = o.offsets;
  const result: RamReadResult = { pages: Math.floor(o.sizeBytes / PAGE_SIZE), differing: 0, durationMs: 0 };
  o.image.markRead(o.block, result.pages);
  const scratch = new Uint8Array(KEY_BYTES);
  const page = Buffer.allocUnsafe(PAGE_SIZE);
  const fh = await open(o.ramPath, "r");
  try {
    for (const offset of offsets) {
      const { bytesRead } = await fh.read(page, 0, PAGE_SIZE, offset);
      if (bytesRead < PAGE_SIZE) throw new Error(`RAM file ${o.ramPath} ends before the page at ${offset}`);
      if (!o.image.setFromBytes(o.block, offset, page, o.keyer, scratch)) continue;
      if (result.differing++ === 0) result.firstDiffering = offset;
      o.onDiffer?.(offset, page);
    }
  } finally {
    await fh.close();
  }
  result.durationMs = Math.round(performance.now() - started);
  return result;
}

/** Writes pages into a paused VM's RAM file (the file is QEMU's shared mapping of its RAM). */
export async function writeRamPages(ramPath: string, pages: readonly { offset: number; page: Uint8Array }[]): Promise<void> {
  if (pages.length === 0) return;
  const fh = await open(ramPath, "r+");
  try {
    for (const p of pages) {
      const { bytesWritten } = await fh.write(p.page, 0, PAGE_SIZE, p.offset);
      if (bytesWritten !== PAGE_SIZE) throw new Error(`short write of the page at ${p.offset} into ${ramPath}`);
    }
  } finally {
    await fh.close();
  }
}
