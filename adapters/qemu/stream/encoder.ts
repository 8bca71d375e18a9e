/**
 * Writes records back as a valid QEMU 7.2 migration stream. With the default options,
 * encoding the records a parse produced gives back the parsed bytes exactly.
 */
import { writeU64, encodeCommand } from "./commands.ts";
import { PAGE_SIZE, PageKind, RAM_IDSTR, RamFlag, RecordTag, STREAM_MAGIC, tagOfSectionType } from "./constants.ts";
import { EncoderStateError } from "./errors.ts";
import type { PageBatch, RamSectionRecord, RamSetupRecord, StreamRecord } from "./records.ts";

/** How page records name their RAM block. */
export const ContinueMode = {
  /** As parsed (each batch's `named` column); names the block anyway where CONTINUE would be wrong. */
  preserve: "preserve",
  /** CONTINUE whenever the block is the previous page record's, as QEMU does. */
  auto: "auto",
  /** Always name the block. */
  never: "never",
} as const;
export type ContinueMode = (typeof ContinueMode)[keyof typeof ContinueMode];

/** Encoder options. */
export interface EncodeOptions {
  /** How page records name their block. @default "preserve" */
  continueMode?: ContinueMode;
  /** Write VMDESC records; QEMU only skips over it, so a proxy may drop it. @default true */
  vmdesc?: boolean;
}

const EOS_AND_FOOTER_LEN = 8 + 5;
const TWO32 = 4294967296;

export class StreamEncoder {
  private readonly mode: ContinueMode;
  private readonly vmdesc: boolean;
  /** Block of the previous page record, for CONTINUE. */
  private lastBlock: string | undefined;
  private openRam: number | undefined;
  /** A section header waiting to be joined to what follows it (one write instead of two). */
  private held: Buffer | undefined;
  private readonly names = new Map<string, Buffer>();
  /** Bytes produced so far. */
  bytesOut = 0;

  constructor(options: EncodeOptions = {}) {
    this.mode = options.continueMode ?? ContinueMode.preserve;
    this.vmdesc = options.vmdesc ?? true;
  }

  /** Bytes for one record, to be written now (empty when held to join the next record). */
  encode(record: StreamRecord): Buffer[] {
    const inRam = this.openRam !== undefined;
    switch (record.type) {
      case "pages":
        if (!inRam) throw new EncoderStateError("a pages record outside a ram section");
        return this.emit(this.encodePages(record));
      case "ramSetup":
        if (!inRam) throw new EncoderStateError("a ramSetup record outside a ram section");
        return this.emit(encodeRamSetup(record));
      case "ramSectionEnd": {
        if (!inRam) throw new EncoderStateError("a ramSectionEnd record with no open ram section");
        const b = Buffer.allocUnsafe(EOS_AND_FOOTER_LEN);
        writeU64(b, 0, RamFlag.eos);
        b[8] = RecordTag.sectionFooter;
        b.writeUInt32BE(this.openRam!, 9);
        this.openRam = undefined;
        return this.emit(b);
      }
      case "round":
        return [];
      default:
        break;
    }
    if (inRam) throw new EncoderStateError(`a ${record.type} record inside open ram section ${this.openRam}`);
    switch (record.type) {
      case "header": {
        const b = Buffer.allocUnsafe(8);
        b.writeUInt32BE(STREAM_MAGIC, 0);
        b.writeUInt32BE(record.version, 4);
        return this.emit(b);
      }
      case "config":
        return this.emit(record.raw);
      case "ramSection":
        this.openRam = record.sectionId;
        this.held = this.held ? Buffer.concat([this.held, encodeRamSectionHeader(record)]) : encodeRamSectionHeader(record);
        return [];
      case "device":
        return this.emit(record.raw);
      case "command":
        return this.emit(encodeCommand(record.command));
      case "eof":
        return this.emit(Buffer.of(RecordTag.eof));
      case "vmdesc": {
        if (!this.vmdesc) return this.emit(undefined);
        const b = Buffer.allocUnsafe(5);
        b[0] = RecordTag.vmdesc;
        b.writeUInt32BE(record.json.length, 1);
        return this.emit(b, record.json);
      }
    }
  }

  /** Whatever is still held; throws if a ram section was left open. */
  finish(): Buffer[] {
    if (this.openRam !== undefined) throw new EncoderStateError(`ram section ${this.openRam} was never closed`);
    return this.emit(undefined);
  }

  private emit(a: Buffer | undefined, b?: Buffer): Buffer[] {
    const out: Buffer[] = [];
    if (this.held) {
      // Join a held header to a small record; put it in front of a big one as its own piece.
      if (a && a.length <= 65536) a = Buffer.concat([this.held, a]);
      else out.push(this.held);
      this.held = undefined;
    }
    if (a && a.length > 0) out.push(a);
    if (b && b.length > 0) out.push(b);
    for (const x of out) this.bytesOut += x.length;
    return out;
  }

  private nameBytes(block: string): Buffer {
    let n = this.names.get(block);
    if (!n) {
      n = Buffer.from(block, "latin1");
      this.names.set(block, n);
    }
    return n;
  }

  private encodePages(batch: PageBatch): Buffer {
    const { count, offsets, kinds, fills, data, views } = batch;
    const name = this.nameBytes(batch.block);
    const nameCost = 1 + name.length;
    // Which records name their block.
    const namedCol = new Uint8Array(count);
    let prev = this.lastBlock;
    for (let i = 0; i < count; i++) {
      let nm: boolean;
      if (this.mode === ContinueMode.never) nm = true;
      else if (this.mode === ContinueMode.auto) nm = prev !== batch.block;
      else nm = batch.named[i] === 1 || prev !== batch.block;
      namedCol[i] = nm ? 1 : 0;
      prev = batch.block;
    }
    let size = 0;
    let normals = 0;
    for (let i = 0; i < count; i++) {
      if (kinds[i] === PageKind.normal) normals++;
      if (namedCol[i]) size += nameCost;
    }
    size += count * 9 + normals * (PAGE_SIZE - 1);
    if (views ? views.length < normals : data.length < normals * PAGE_SIZE) throw new EncoderStateError(`pages batch has ${normals} normal pages but ${views ? `${views.length} page views` : `${data.length} data bytes`}`);
    const heldLen = this.held?.length ?? 0;
    const out = Buffer.allocUnsafe(heldLen + size);
    if (this.held) {
      this.held.copy(out, 0);
      this.held = undefined;
    }
    let p = heldLen;
    let d = 0;
    for (let i = 0; i < count; i++) {
      const off = offsets[i];
      const normal = kinds[i] === PageKind.normal;
      const nm = namedCol[i] === 1;
      const flags = (normal ? RamFlag.page : RamFlag.zero) | (nm ? 0 : RamFlag.continue);
      if (off < TWO32) {
        out.writeUInt32BE(0, p);
        out.writeUInt32BE(off + flags, p + 4);
      } else {
        out.writeUInt32BE(Math.floor(off / TWO32), p);
        out.writeUInt32BE((off % TWO32) + flags, p + 4);
      }
      p += 8;
      if (nm) {
        out[p] = name.length;
        name.copy(out, p + 1);
        p += nameCost;
      }
      if (normal) {
        if (views) {
          const v = views[d++]!;
          if (v.byteLength !== PAGE_SIZE) throw new EncoderStateError(`page view of ${v.byteLength} bytes, not ${PAGE_SIZE}`);
          out.set(v, p);
        } else {
          data.copy(out, p, d, d + PAGE_SIZE);
          d += PAGE_SIZE;
        }
        p += PAGE_SIZE;
      } else {
        out[p++] = fills[i];
      }
    }
    if (count > 0) this.lastBlock = batch.block;
    return out;
  }
}

function encodeRamSectionHeader(r: RamSectionRecord): Buffer {
  const tag = tagOfSectionType[r.section];
  if (tag === RecordTag.sectionPart || tag === RecordTag.sectionEnd) {
    const b = Buffer.allocUnsafe(5);
    b[0] = tag;
    b.writeUInt32BE(r.sectionId, 1);
    return b;
  }
  const b = Buffer.allocUnsafe(6 + RAM_IDSTR.length + 8);
  b[0] = tag;
  b.writeUInt32BE(r.sectionId, 1);
  b[5] = RAM_IDSTR.length;
  b.write(RAM_IDSTR, 6, "latin1");
  b.writeUInt32BE(r.instanceId, 6 + RAM_IDSTR.length);
  b.writeUInt32BE(r.versionId, 10 + RAM_IDSTR.length);
  return b;
}

function encodeRamSetup(r: RamSetupRecord): Buffer {
  let size = 8;
  for (const b of r.blocks) size += 1 + Buffer.byteLength(b.id, "latin1") + 8 + (b.pageSize !== undefined ? 8 : 0) + (b.addr !== undefined ? 8 : 0);
  const out = Buffer.allocUnsafe(size);
  writeU64(out, 0, r.totalBytes + RamFlag.memSize);
  let p = 8;
  for (const b of r.blocks) {
    const len = out.write(b.id, p + 1, "latin1");
    out[p] = len;
    p += 1 + len;
    writeU64(out, p, b.usedLength);
    p += 8;
    if (b.pageSize !== undefined) {
      writeU64(out, p, b.pageSize);
      p += 8;
    }
    if (b.addr !== undefined) {
      writeU64(out, p, b.addr);
      p += 8;
    }
  }
  return out;
}

/** Encodes records as they come; one or more buffers per record, written promptly. */
export async function* encodeStream(records: AsyncIterable<StreamRecord> | Iterable<StreamRecord>, options: EncodeOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const enc = new StreamEncoder(options);
  for await (const r of records) yield* enc.encode(r);
  yield* enc.finish();
}

/** Encodes a complete list of records into one buffer (tests, small streams). */
export function encodeRecords(records: Iterable<StreamRecord>, options: EncodeOptions = {}): Buffer {
  const enc = new StreamEncoder(options);
  const parts: Buffer[] = [];
  for (const r of records) parts.push(...enc.encode(r));
  parts.push(...enc.finish());
  return Buffer.concat(parts);
}
