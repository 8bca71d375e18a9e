/**
 * The digest of a memory image as a migration stream implies it: for every page of every
 * RAM block, the last content sent (its content key, or a zero/fill marker). The source
 * computes it from what it streamed, the destination from the memory its QEMU loaded, and
 * commit compares the two. Order-independent in what is recorded, ordered in the digest.
 */
import { createHash } from "node:crypto";
import { KEY_BYTES, PAGE_SIZE, uniformByte, type PageKeyer } from "./contentKey.ts";

const ENTRY = 1 + KEY_BYTES; // marker byte (0 fill page, 1 keyed page) + key or fill

export class ImageDigest {
  /** Per block: page index → entry bytes. */
  private readonly blocks: Uint8Array[];
  private readonly seen: Uint8Array[];
  /** Per block: pages recorded since track() (none before it is called). */
  private touched: Uint8Array[] | undefined;
  constructor(blockSizes: readonly number[]) {
    this.blocks = blockSizes.map((size) => new Uint8Array((size / PAGE_SIZE) * ENTRY));
    this.seen = blockSizes.map((size) => new Uint8Array(size / PAGE_SIZE));
  }
  private slot(block: number, offset: number): number {
    const arr = this.blocks[block];
    if (!arr) throw new RangeError(`no RAM block ${block}`);
    const page = offset / PAGE_SIZE;
    if (!Number.isInteger(page) || page * ENTRY >= arr.byteLength) throw new RangeError(`offset ${offset} outside block ${block}`);
    this.seen[block]![page] = 1;
    if (this.touched) this.touched[block]![page] = 1;
    return page * ENTRY;
  }
  /** A page whose bytes are all `fill` (zero pages: fill 0). */
  fill(block: number, offset: number, fill: number): void {
    const at = this.slot(block, offset);
    const arr = this.blocks[block]!;
    arr.fill(0, at, at + ENTRY);
    arr[at + 1] = fill;
  }
  /** A page with content key `key` (16 bytes at keyAt). */
  keyed(block: number, offset: number, key: Uint8Array, keyAt = 0): void {
    const at = this.slot(block, offset);
    const arr = this.blocks[block]!;
    arr[at] = 1;
    arr.set(key.subarray(keyAt, keyAt + KEY_BYTES), at + 1);
  }
  /**
   * From now on, remember which pages are recorded: a check of a RAM against the entries as
   * they are now then needs doing again only for those (see touchedOffsets).
   */
  track(): void {
    this.touched = this.seen.map((s) => new Uint8Array(s.length));
  }
  /** Byte offsets of the pages of `block` recorded since track(), ascending. */
  touchedOffsets(block: number): number[] {
    const t = this.touched?.[block];
    if (!t) throw new Error(`pages of block ${block} are not tracked`);
    const out: number[] = [];
    for (let i = 0; i < t.length; i++) if (t[i] === 1) out.push(i * PAGE_SIZE);
    return out;
  }
  /** An independent copy, untracked (the source's RAM image starts as a copy of what it sent). */
  clone(): ImageDigest {
    const c = new ImageDigest([]);
    c.blocks.push(...this.blocks.map((b) => b.slice()));
    c.seen.push(...this.seen.map((s) => s.slice()));
    return c;
  }
  /**
   * Sets a page's entry from the bytes it holds (as both ends classify them: uniform pages
   * by their fill byte, others by key). Returns whether the entry changed, i.e. whether
   * these bytes differ from what the image said the page held.
   */
  setFromBytes(block: number, offset: number, page: Uint8Array, keyer: PageKeyer, scratch: Uint8Array): boolean {
    const at = this.slot(block, offset);
    const arr = this.blocks[block]!;
    if (entryHolds(arr, at, page, keyer)) return false;
    const fill = uniformByte(page);
    if (fill !== undefined) {
      arr.fill(0, at, at + ENTRY);
      arr[at + 1] = fill;
      return true;
    }
    keyer.keyInto(page, scratch, 0);
    arr[at] = 1;
    arr.set(scratch.subarray(0, KEY_BYTES), at + 1);
    return true;
  }
  /** A copy of a block's entries, for checking its pages elsewhere (entryHolds, a worker). */
  entriesOf(block: number): Uint8Array {
    const arr = this.blocks[block];
    if (!arr) throw new RangeError(`no RAM block ${block}`);
    return arr.slice();
  }
  /** The first `pages` pages of a block were read (their entries checked elsewhere), as setFromBytes marks each. */
  markRead(block: number, pages: number): void {
    this.seen[block]?.fill(1, 0, pages);
  }
  /** Whether a page was recorded (sent) at all. */
  has(block: number, offset: number): boolean {
    return this.seen[block]?.[offset / PAGE_SIZE] === 1;
  }
  /** Pages recorded at least once. */
  pages(): number {
    let n = 0;
    for (const s of this.seen) for (const b of s) n += b;
    return n;
  }
  /** Pages of all blocks. */
  totalPages(): number {
    return this.seen.reduce((n, s) => n + s.length, 0);
  }
  digest(): string {
    const h = createHash("sha256");
    for (const b of this.blocks) h.update(b);
    return h.digest("hex");
  }
}

/** Bytes of one page's entry in a block's entries. */
export const ENTRY_BYTES = ENTRY;

/**
 * Whether `page` holds what the entry at `at` says: its fill byte, or its key. A keyed entry
 * whose first half still matches holds; one that does not differs for sure (the first half
 * is part of the key), so the full key is only ever computed to record a change.
 */
export function entryHolds(entries: Uint8Array, at: number, page: Uint8Array, keyer: PageKeyer): boolean {
  if (entries[at] === 1) return keyer.stillKeyed(page, entries, at + 1);
  const fill = uniformByte(page);
  return fill !== undefined && entries[at] === 0 && entries[at + 1] === fill && isZeroFrom(entries, at + 2, at + ENTRY);
}

function isZeroFrom(a: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (a[i] !== 0) return false;
  return true;
}
