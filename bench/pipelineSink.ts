/**
 * The benchmark's stand-in for the destination QEMU: what the source stream carried (parsed
 * from the very bytes the source QEMU sends: the last content of every page, and the device
 * sections) is the expectation, and every page the destination pipeline writes is checked
 * against it as the records arrive. A page that differs, a page never delivered, or device
 * state that differs fails with a PageCheckError naming the VM, block and offset.
 */
import { createReadStream } from "node:fs";
import { PAGE_SIZE, PageKind } from "../adapters/qemu/stream/constants.ts";
import type { PageBatch, RamBlockInfo, StreamRecord } from "../adapters/qemu/stream/records.ts";
import { parseStream } from "../adapters/qemu/stream/stream.ts";

export class PageCheckError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PageCheckError";
  }
}
export const isPageCheckError = (e: unknown): e is PageCheckError => e instanceof PageCheckError;

const UNSET = 0;
const FILL = 1;
const NORMAL = 2;

interface BlockExpectation {
  info: RamBlockInfo;
  kind: Uint8Array;
  fill: Uint8Array;
  bytes: Buffer;
  seen: Uint8Array;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** Is every byte of `page` equal to `b`? */
function allBytes(page: Buffer, b: number): boolean {
  for (let i = 0; i < page.length; i++) if (page[i] !== b) return false;
  return true;
}

export class Expectation {
  private readonly blocks = new Map<string, BlockExpectation>();
  private device: Buffer[] = [];
  private received: Buffer[] = [];
  private checked = 0;

  private constructor(readonly vm: string) {}

  /** What the source stream in `path` carries. */
  static async fromStreamFile(vm: string, path: string): Promise<Expectation> {
    const e = new Expectation(vm);
    for await (const r of parseStream(createReadStream(path))) e.learn(r);
    return e;
  }

  private learn(r: StreamRecord): void {
    if (r.type === "ramSetup") {
      for (const info of r.blocks) {
        const pages = info.usedLength / PAGE_SIZE;
        this.blocks.set(info.id, { info, kind: new Uint8Array(pages), fill: new Uint8Array(pages), bytes: Buffer.alloc(info.usedLength), seen: new Uint8Array(pages) });
      }
    } else if (r.type === "pages") {
      const b = this.blocks.get(r.block)!;
      let d = 0;
      // The last content sent for a page is what the destination must end up with.
      for (let i = 0; i < r.count; i++) {
        const p = r.offsets[i]! / PAGE_SIZE;
        if (r.kinds[i] === PageKind.normal) {
          b.kind[p] = NORMAL;
          r.data.copy(b.bytes, p * PAGE_SIZE, d, d + PAGE_SIZE);
          d += PAGE_SIZE;
        } else {
          b.kind[p] = FILL;
          b.fill[p] = r.fills[i]!;
        }
      }
    } else if (r.type === "device") this.device.push(r.raw);
  }

  /** Pages the source stream carried. */
  get pagesExpected(): number {
    let n = 0;
    for (const b of this.blocks.values()) for (let i = 0; i < b.kind.length; i++) if (b.kind[i] !== UNSET) n++;
    return n;
  }

  get pagesChecked(): number {
    return this.checked;
  }

  /** Checks a batch the destination wrote, page by page. */
  check(batch: PageBatch): void {
    const b = this.blocks.get(batch.block);
    if (!b) throw new PageCheckError(`${this.vm}: the destination wrote pages of block ${batch.block}, which the source stream does not have`);
    let d = 0;
    for (let i = 0; i < batch.count; i++) {
      const off = batch.offsets[i]!;
      const p = off / PAGE_SIZE;
      const where = `${this.vm}: page ${batch.block}+${hex(off)}`;
      if (p >= b.kind.length || b.kind[p] === UNSET) throw new PageCheckError(`${where} was written by the destination but never carried by the source stream`);
      // Compared by the bytes the guest gets: a fill record and a page of that byte are the same page.
      const want = b.kind[p] === NORMAL ? b.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE) : undefined;
      if (batch.kinds[i] === PageKind.normal) {
        const got = batch.data.subarray(d, d + PAGE_SIZE);
        d += PAGE_SIZE;
        const ok = want ? got.equals(want) : allBytes(got, b.fill[p]!);
        if (!ok) {
          let at = 0;
          while (at < PAGE_SIZE && got[at] === (want ? want[at] : b.fill[p])) at++;
          throw new PageCheckError(`${where} differs from what the source stream carried (first at byte ${at}: ${hex(got[at]!)}, expected ${hex(want ? want[at]! : b.fill[p]!)})`);
        }
      } else {
        const f = batch.fills[i]!;
        if (want ? !allBytes(want, f) : b.fill[p] !== f) throw new PageCheckError(`${where} arrived as a page of byte ${hex(f)}; the source stream carried ${want ? "other content" : `a page of byte ${hex(b.fill[p]!)}`}`);
      }
      if (!b.seen[p]) {
        b.seen[p] = 1;
        this.checked++;
      }
    }
  }

  /** The destination's RAM setup must list the source's blocks, in order, with their sizes. */
  checkSetup(blocks: RamBlockInfo[]): void {
    const want = [...this.blocks.values()].map((b) => `${b.info.id}:${b.info.usedLength}`).join(",");
    const got = blocks.map((b) => `${b.id}:${b.usedLength}`).join(",");
    if (got !== want) throw new PageCheckError(`${this.vm}: the destination's RAM setup lists ${got}; the source's listed ${want}`);
  }

  deviceSection(raw: Buffer): void {
    this.received.push(raw);
  }

  /** After the destination's stream ended: every page there, the device state as sent. */
  finish(): { pagesChecked: number; pagesExpected: number; deviceBytesChecked: number } {
    let missing = 0;
    let first: string | undefined;
    for (const b of this.blocks.values()) {
      for (let p = 0; p < b.kind.length; p++) {
        if (b.kind[p] === UNSET || b.seen[p]) continue;
        missing++;
        first ??= `${b.info.id}+${hex(p * PAGE_SIZE)}`;
      }
    }
    if (missing) throw new PageCheckError(`${this.vm}: ${missing} page(s) the source stream carried never reached the destination's stream (first: ${first})`);
    const want = Buffer.concat(this.device);
    const got = Buffer.concat(this.received);
    if (!got.equals(want)) throw new PageCheckError(`${this.vm}: the device state the destination wrote (${got.length} bytes) differs from the source's (${want.length} bytes)`);
    return { pagesChecked: this.checked, pagesExpected: this.pagesExpected, deviceBytesChecked: got.length };
  }
}
