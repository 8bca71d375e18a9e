/**
 * The digest of a memory image as a migration stream implies it: for every page of every
 * RAM block, the last content sent (its content key, or a zero/fill marker). The source
 * computes it from what it streamed, the destination from the memory its QEMU loaded, and
 * commit compares the two. Order-independent in what is recorded, ordered in the digest.
 */
import { createHash } from "node:crypto";
import { KEY_BYTES, PAGE_SIZE } from "./contentKey.ts";

const ENTRY = 1 + KEY_BYTES; // marker byte (0 fill page, 1 keyed page) + key or fill

export class ImageDigest {
  /** Per block: page index → entry bytes. */
  private readonly blocks: Uint8Array[];
  private readonly seen: Uint8Array[];
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
