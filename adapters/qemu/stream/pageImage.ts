/**
 * The guest RAM a stream implies: for every page, the last content sent (a fill byte or
 * 4096 bytes). Where the bytes live is a PageStore: in memory, or as positions in the
 * stream file (then the image costs ~9 bytes per page and the file is read back once).
 */
import { closeSync, openSync, readSync } from "node:fs";
import { PAGE_SIZE, PageKind } from "./constants.ts";
import { UnknownRamBlockError } from "./errors.ts";
import type { PageBatch, RamBlockInfo } from "./records.ts";

/** Keeps the content of normal pages. */
export interface PageStore {
  /** Remembers page `page` of block `block`: its bytes are at batch.data[dataOffset..+4096], its stream position is given. */
  put(block: number, page: number, batch: PageBatch, dataOffset: number, position: number): void;
  /** Copies the page's bytes into target[targetOffset..+4096]. */
  read(block: number, page: number, target: Buffer, targetOffset: number): void;
  /** Releases what the store holds (file handles). */
  close(): void;
}

/** Page bytes in memory, in 16 MiB segments allocated as pages arrive. */
export class MemoryPageStore implements PageStore {
  private static readonly SEGMENT_PAGES = 4096;
  private readonly segments: (Buffer | undefined)[][];
  constructor(blocks: readonly RamBlockInfo[]) {
    this.segments = blocks.map((b) => new Array(Math.ceil(b.usedLength / PAGE_SIZE / MemoryPageStore.SEGMENT_PAGES)));
  }
  put(block: number, page: number, batch: PageBatch, dataOffset: number): void {
    const segs = this.segments[block];
    const s = Math.floor(page / MemoryPageStore.SEGMENT_PAGES);
    let seg = segs[s];
    if (!seg) seg = segs[s] = Buffer.allocUnsafeSlow(MemoryPageStore.SEGMENT_PAGES * PAGE_SIZE);
    batch.data.copy(seg, (page % MemoryPageStore.SEGMENT_PAGES) * PAGE_SIZE, dataOffset, dataOffset + PAGE_SIZE);
  }
  read(block: number, page: number, target: Buffer, targetOffset: number): void {
    const seg = this.segments[block][Math.floor(page / MemoryPageStore.SEGMENT_PAGES)]!;
    const at = (page % MemoryPageStore.SEGMENT_PAGES) * PAGE_SIZE;
    seg.copy(target, targetOffset, at, at + PAGE_SIZE);
  }
  close(): void {}
}

/** Page bytes left in the stream file: remembers where each page's last content is. */
export class FilePageStore implements PageStore {
  private readonly positions: Float64Array[];
  private fd: number | undefined;
  constructor(
    private readonly path: string,
    blocks: readonly RamBlockInfo[],
  ) {
    this.positions = blocks.map((b) => new Float64Array(b.usedLength / PAGE_SIZE));
  }
  put(block: number, page: number, _batch: PageBatch, _dataOffset: number, position: number): void {
    this.positions[block][page] = position;
  }
  read(block: number, page: number, target: Buffer, targetOffset: number): void {
    this.fd ??= openSync(this.path, "r");
    const n = readSync(this.fd, target, targetOffset, PAGE_SIZE, this.positions[block][page]);
    if (n !== PAGE_SIZE) throw new Error(`${this.path} changed while re-encoding: short read at byte ${this.positions[block][page]}`);
  }
  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

const UNSET = 0;
const FILL = 1;
const NORMAL = 2;

/** Last content of every page, by block. */
export class PageImage {
  private readonly state: Uint8Array[];
  private readonly fill: Uint8Array[];
  private readonly index = new Map<string, number>();
  constructor(
    readonly blocks: readonly RamBlockInfo[],
    private readonly store: PageStore,
  ) {
    this.state = blocks.map((b) => new Uint8Array(b.usedLength / PAGE_SIZE));
    this.fill = blocks.map((b) => new Uint8Array(b.usedLength / PAGE_SIZE));
    blocks.forEach((b, i) => this.index.set(b.id, i));
  }

  private blockOf(id: string): number {
    const b = this.index.get(id);
    if (b === undefined) throw new UnknownRamBlockError(id, 0);
    return b;
  }

  /** Records a batch: each page's content replaces what was there. */
  apply(batch: PageBatch): void {
    const b = this.blockOf(batch.block);
    const state = this.state[b];
    const fill = this.fill[b];
    let d = 0;
    for (let i = 0; i < batch.count; i++) {
      const page = batch.offsets[i] / PAGE_SIZE;
      if (batch.kinds[i] === PageKind.normal) {
        this.store.put(b, page, batch, d, batch.positions[i]);
        state[page] = NORMAL;
        d += PAGE_SIZE;
      } else {
        state[page] = FILL;
        fill[page] = batch.fills[i];
      }
    }
  }

  /** A post-copy RAM_DISCARD: the destination drops these pages, so they read as zero until sent again. */
  discard(block: string, start: number, length: number): void {
    const b = this.blockOf(block);
    const first = Math.floor(start / PAGE_SIZE);
    const end = Math.min(this.state[b].length, Math.ceil((start + length) / PAGE_SIZE));
    this.state[b].fill(FILL, first, end);
    this.fill[b].fill(0, first, end);
  }

  /** Pages by kind over the whole image. */
  counts(): { fill: number; normal: number; unset: number } {
    let fill = 0;
    let normal = 0;
    let unset = 0;
    for (const s of this.state) {
      for (let i = 0; i < s.length; i++) {
        if (s[i] === FILL) fill++;
        else if (s[i] === NORMAL) normal++;
        else unset++;
      }
    }
    return { fill, normal, unset };
  }

  /** Every page sent, in (block, offset) order, as batches of at most maxPages (round 1). */
  *batches(maxPages = 1024): Generator<PageBatch> {
    for (let b = 0; b < this.blocks.length; b++) {
      const state = this.state[b];
      const fill = this.fill[b];
      let i = 0;
      while (i < state.length) {
        // Size the next batch first, so its arrays are allocated exactly.
        let n = 0;
        let normals = 0;
        let j = i;
        for (; j < state.length && n < maxPages; j++) {
          if (state[j] === UNSET) continue;
          n++;
          if (state[j] === NORMAL) normals++;
        }
        if (n === 0) break;
        const batch: PageBatch = {
          type: "pages",
          offset: 0,
          block: this.blocks[b].id,
          round: 1,
          count: n,
          offsets: new Float64Array(n),
          kinds: new Uint8Array(n),
          fills: new Uint8Array(n),
          named: new Uint8Array(n),
          positions: new Float64Array(n),
          data: Buffer.allocUnsafe(normals * PAGE_SIZE),
        };
        batch.named[0] = 1;
        let k = 0;
        let d = 0;
        for (let p = i; p < j; p++) {
          if (state[p] === UNSET) continue;
          batch.offsets[k] = p * PAGE_SIZE;
          if (state[p] === NORMAL) {
            batch.kinds[k] = PageKind.normal;
            this.store.read(b, p, batch.data, d);
            d += PAGE_SIZE;
          } else {
            batch.kinds[k] = PageKind.fill;
            batch.fills[k] = fill[p];
          }
          k++;
        }
        yield batch;
        i = j;
      }
    }
  }

  close(): void {
    this.store.close();
  }
}
