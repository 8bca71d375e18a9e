/**
 * Column storage for page batches. Batches are views into slabs that are filled once
 * and never rewritten, so a batch handed out stays valid for as long as it is held,
 * while the parser allocates per slab (~1 ms of pages) instead of per batch or page.
 */
import { PAGE_SIZE } from "./constants.ts";

export class MetaSlab {
  readonly offsets: Float64Array;
  readonly positions: Float64Array;
  readonly kinds: Uint8Array;
  readonly fills: Uint8Array;
  readonly named: Uint8Array;
  used = 0;
  constructor(readonly capacity: number) {
    this.offsets = new Float64Array(capacity);
    this.positions = new Float64Array(capacity);
    // One buffer for the three byte columns: fewer allocations.
    const bytes = new Uint8Array(capacity * 3);
    this.kinds = bytes.subarray(0, capacity);
    this.fills = bytes.subarray(capacity, 2 * capacity);
    this.named = bytes.subarray(2 * capacity, 3 * capacity);
  }
}

export class DataSlab {
  readonly data: Buffer;
  used = 0;
  constructor(pages: number) {
    // allocUnsafeSlow: a dedicated, unpooled buffer; every byte handed out is written first.
    this.data = Buffer.allocUnsafeSlow(pages * PAGE_SIZE);
  }
  get free(): number {
    return this.data.length - this.used;
  }
}
