/**
 * Incremental parser of QEMU 7.2's migration stream (pre-copy and post-copy, version 3).
 *
 * `StreamParser` is synchronous and push-based: feed it chunks as they arrive, take the
 * records it completed, and tell it when the input ends. It holds only the bytes of the
 * record it is in the middle of (a page, or one device section), never the stream.
 * `parseStream` (stream.ts) wraps it as an async iterator with back-pressure.
 *
 * Page records are the hot path: they are read straight from the input chunk into
 * column slabs (pageSlab.ts) and handed out in batches; everything else goes through
 * the general, chunk-boundary-safe path.
 */
import { ByteQueue } from "./byteQueue.ts";
import { decodeCommand } from "./commands.ts";
import { decodeConfig, measureConfig } from "./config.ts";
import {
  MAX_PACKAGED_SIZE,
  PAGE_FLAG_MASK,
  PAGE_SIZE,
  PageKind,
  RAM_IDSTR,
  RAM_SECTION_VERSION,
  RamFlag,
  RecordTag,
  STREAM_MAGIC,
  STREAM_VERSION,
  sectionTypeOfTag,
  type SectionType,
} from "./constants.ts";
import { scanForFooter, type ScanContext } from "./deviceScan.ts";
import {
  BadMagicError,
  DeviceSectionTooLargeError,
  MalformedCommandError,
  MalformedRamSetupError,
  PageOutOfRangeError,
  SectionFooterError,
  TrailingDataError,
  TruncatedStreamError,
  UnknownRamBlockError,
  UnknownSectionError,
  UnknownSectionTypeError,
  UnsupportedRamFlagError,
  UnsupportedVersionError,
} from "./errors.ts";
import { DataSlab, MetaSlab } from "./pageSlab.ts";
import type { RamBlockInfo, StreamRecord } from "./records.ts";

/** Parser options. */
export interface ParseOptions {
  /** Most pages in one `pages` record. @default 1024 */
  maxBatchPages?: number;
  /** Largest opaque device section accepted before giving up on finding its footer. @default 67108864 (64 MiB) */
  maxDeviceSectionBytes?: number;
}

/** What a nested (PACKAGED) parse inherits from the stream around it. */
export interface NestedContext {
  ramSectionId?: number;
  blocks?: RamBlockInfo[];
  startedSections?: Iterable<number>;
}

const State = {
  header: 0,
  config: 1,
  top: 2,
  ramBody: 3,
  ramFooter: 4,
  device: 5,
  afterEof: 6,
  done: 7,
} as const;
type State = (typeof State)[keyof typeof State];

/** Flags a page or control record may carry; anything else is rejected. */
const SUPPORTED_FLAGS = RamFlag.zero | RamFlag.memSize | RamFlag.page | RamFlag.eos | RamFlag.continue;
const PAGE_CONT = RamFlag.page | RamFlag.continue;
const ZERO_CONT = RamFlag.zero | RamFlag.continue;
const TWO32 = 4294967296;
/** Returned by a step that needs more input. */
const MORE = false;

interface OpenSection {
  idstr: string;
  instanceId: number;
  versionId: number;
}

export class StreamParser {
  private readonly q = new ByteQueue();
  private readonly out: StreamRecord[] = [];
  private readonly maxBatch: number;
  private readonly maxDevice: number;
  private readonly nested: boolean;
  private state: State;
  private ended = false;

  // ram section and block state
  private ramSectionId = -1;
  private ramInstance = 0;
  private ramVersion = 0;
  private currentSection = -1;
  private eosOffset = 0;
  private blocks: RamBlockInfo[] = [];
  private readonly blockIndex = new Map<string, number>();
  /** Block of the last page record (CONTINUE refers to it; persists across sections as in QEMU). */
  private curBlock = -1;
  private postcopyAdvised = false;
  private ignoreShared = false;

  // rounds: the (block index, offset) of the last page
  private round = 0;
  private lastBlock = -1;
  private lastOffset = -1;

  // open batch
  private meta: MetaSlab;
  private dataSlab: DataSlab;
  private batchOpen = false;
  private batchBlock = -1;
  private batchStart = 0;
  private batchDataStart = 0;
  private batchOffset = 0;

  // sections other than ram
  private readonly startedSections = new Set<number>();
  private readonly sectionInfo = new Map<number, OpenSection>();
  private readonly scanCtx: ScanContext;
  private device: { section: SectionType; sectionId: number; info: OpenSection; headerLen: number; scanFrom: number } | undefined;

  constructor(options: ParseOptions = {}, nested?: NestedContext) {
    this.maxBatch = Math.max(1, options.maxBatchPages ?? 1024);
    this.maxDevice = options.maxDeviceSectionBytes ?? 64 * 1024 * 1024;
    this.nested = nested !== undefined;
    this.state = this.nested ? State.top : State.header;
    this.meta = new MetaSlab(this.maxBatch);
    this.dataSlab = new DataSlab(this.maxBatch);
    this.scanCtx = { startedSections: this.startedSections, maxSectionId: 0x10000 };
    if (nested) {
      if (nested.ramSectionId !== undefined) {
        this.ramSectionId = nested.ramSectionId;
        this.startedSections.add(nested.ramSectionId);
      }
      if (nested.blocks) this.setBlocks(nested.blocks);
      for (const id of nested.startedSections ?? []) this.startedSections.add(id);
    }
  }

  /** Bytes pushed so far. */
  get bytesIn(): number {
    return this.q.offset + this.q.length;
  }

  /** Bytes consumed into completed records so far. */
  get bytesParsed(): number {
    return this.q.offset;
  }

  /** The RAM blocks announced by the setup (empty before it). */
  get ramBlocks(): readonly RamBlockInfo[] {
    return this.blocks;
  }

  /** True once the stream is complete (EOF seen, and VMDESC if any). */
  get complete(): boolean {
    return this.state === State.done || (this.state === State.afterEof && this.q.length === 0);
  }

  /** Appends input and parses as far as it goes. Records are taken with drain(). */
  push(chunk: Buffer): void {
    if (this.ended) throw new Error("StreamParser.push after end()");
    this.q.push(chunk);
    this.run();
  }

  /** Emits the open page batch, if any (call when the input would make you wait). */
  flush(): void {
    this.closeBatch();
  }

  /** The input ended: completes the stream or throws TruncatedStreamError. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.run();
    this.closeBatch();
    const s = this.state;
    if (s === State.done || (s === State.afterEof && this.q.length === 0)) return;
    if (this.nested && s === State.top && this.q.length === 0) return;
    throw new TruncatedStreamError(this.describeIncomplete(), this.q.offset + this.q.length);
  }

  /** Records completed since the last drain, in stream order. */
  drain(): StreamRecord[] {
    if (this.out.length === 0) return [];
    return this.out.splice(0, this.out.length);
  }

  // ---------------------------------------------------------------------------------

  private run(): void {
    for (;;) {
      let progressed: boolean;
      switch (this.state) {
        case State.header:
          progressed = this.readHeader();
          break;
        case State.config:
          progressed = this.readConfig();
          break;
        case State.top:
          progressed = this.readTop();
          break;
        case State.ramBody:
          progressed = this.readRamBody();
          break;
        case State.ramFooter:
          progressed = this.readRamFooter();
          break;
        case State.device:
          progressed = this.readDevice();
          break;
        case State.afterEof:
          progressed = this.readAfterEof();
          break;
        case State.done:
          if (this.q.length > 0) throw new TrailingDataError(this.q.offset);
          return;
      }
      if (!progressed) return;
    }
  }

  private readHeader(): boolean {
    const q = this.q;
    if (q.length < 4) return MORE;
    const magic = q.u32(0);
    if (magic !== STREAM_MAGIC) throw new BadMagicError(magic);
    if (q.length < 8) return MORE;
    const version = q.u32(4);
    if (version !== STREAM_VERSION) throw new UnsupportedVersionError("stream", version, STREAM_VERSION, 4);
    this.out.push({ type: "header", version, offset: 0 });
    q.skip(8);
    this.state = State.config;
    return true;
  }

  private readConfig(): boolean {
    const q = this.q;
    if (q.length < 1) return MORE;
    if (q.byteAt(0) !== RecordTag.configuration) {
      // Optional: QEMU skips it for some old machine types.
      this.state = State.top;
      return true;
    }
    const len = measureConfig(q, this.ended);
    if (len < 0) return MORE;
    const offset = q.offset;
    const raw = Buffer.from(q.take(len)); // small; copied so it never pins an input chunk
    const config = decodeConfig(raw, offset);
    if (config.capabilities?.includes("x-ignore-shared")) this.ignoreShared = true;
    this.out.push({ type: "config", config, raw, offset });
    this.state = State.top;
    return true;
  }

  private readTop(): boolean {
    const q = this.q;
    if (q.length < 1) return MORE;
    const tag = q.byteAt(0);
    const offset = q.offset;
    switch (tag) {
      case RecordTag.sectionStart:
      case RecordTag.sectionFull: {
        if (q.length < 6) return MORE;
        const len = q.byteAt(5);
        const headerLen = 6 + len + 8;
        if (q.length < headerLen) return MORE;
        const sectionId = q.u32(1);
        const idstr = q.peek(6, len).toString("latin1");
        const instanceId = q.u32(6 + len);
        const versionId = q.u32(6 + len + 4);
        const section = sectionTypeOfTag[tag];
        if (idstr === RAM_IDSTR) {
          if (versionId !== RAM_SECTION_VERSION) {
            throw new UnsupportedVersionError("ram section", versionId, RAM_SECTION_VERSION, offset + 6 + len + 4);
          }
          this.ramSectionId = sectionId;
          this.ramInstance = instanceId;
          this.ramVersion = versionId;
          this.startedSections.add(sectionId);
          q.skip(headerLen);
          this.enterRam(section, sectionId, offset);
          return true;
        }
        const info = { idstr, instanceId, versionId };
        if (tag === RecordTag.sectionStart) {
          this.startedSections.add(sectionId);
          this.sectionInfo.set(sectionId, info);
        }
        this.device = { section, sectionId, info, headerLen, scanFrom: headerLen };
        this.state = State.device;
        return true;
      }
      case RecordTag.sectionPart:
      case RecordTag.sectionEnd: {
        if (q.length < 5) return MORE;
        const sectionId = q.u32(1);
        const section = sectionTypeOfTag[tag];
        if (sectionId === this.ramSectionId) {
          q.skip(5);
          this.enterRam(section, sectionId, offset);
          return true;
        }
        if (!this.startedSections.has(sectionId)) throw new UnknownSectionError(sectionId, offset);
        const info = this.sectionInfo.get(sectionId) ?? { idstr: "", instanceId: 0, versionId: 0 };
        this.device = { section, sectionId, info, headerLen: 5, scanFrom: 5 };
        this.state = State.device;
        return true;
      }
      case RecordTag.command:
        return this.readCommand();
      case RecordTag.eof:
        q.skip(1);
        this.out.push({ type: "eof", offset });
        this.state = this.nested ? State.done : State.afterEof;
        return true;
      default:
        throw new UnknownSectionTypeError(tag, offset);
    }
  }

  private enterRam(section: SectionType, sectionId: number, offset: number): void {
    this.out.push({ type: "ramSection", section, sectionId, instanceId: this.ramInstance, versionId: this.ramVersion, offset });
    this.currentSection = sectionId;
    this.state = State.ramBody;
  }

  private readCommand(): boolean {
    const q = this.q;
    if (q.length < 5) return MORE;
    const offset = q.offset;
    const id = q.u16(1);
    const len = q.u16(3);
    if (q.length < 5 + len) return MORE;
    const { command, blobLength } = decodeCommand(id, q.peek(5, len), offset);
    if (command.cmd === "packaged") {
      if (blobLength > MAX_PACKAGED_SIZE) {
        throw new MalformedCommandError("packaged", `blob of ${blobLength} bytes exceeds ${MAX_PACKAGED_SIZE}`, offset);
      }
      if (q.length < 5 + len + blobLength) return MORE;
      command.data = Buffer.from(q.peek(5 + len, blobLength));
    }
    if (command.cmd === "postcopyAdvise") this.postcopyAdvised = true;
    q.skip(5 + len + blobLength);
    this.out.push({ type: "command", command, offset });
    return true;
  }

  private readAfterEof(): boolean {
    const q = this.q;
    if (q.length < 1) {
      if (this.ended) this.state = State.done;
      return this.ended;
    }
    const offset = q.offset;
    if (q.byteAt(0) !== RecordTag.vmdesc) throw new TrailingDataError(offset);
    if (q.length < 5) return MORE;
    const len = q.u32(1);
    if (q.length < 5 + len) return MORE;
    const json = Buffer.from(q.peek(5, len));
    q.skip(5 + len);
    this.out.push({ type: "vmdesc", json, offset });
    this.state = State.done;
    return true;
  }

  private readDevice(): boolean {
    const q = this.q;
    const dev = this.device!;
    const r = scanForFooter(q, dev.sectionId, dev.scanFrom, this.scanCtx, this.ended);
    if ("end" in r) {
      // The same limit whether the footer came in this chunk or a later one: a footer found
      // beyond it is refused as a scan that passed it would be.
      if (r.end - 5 > this.maxDevice) throw new DeviceSectionTooLargeError(dev.info.idstr, this.maxDevice, q.offset);
      const offset = q.offset;
      const raw = Buffer.from(q.take(r.end));
      this.out.push({
        type: "device",
        section: dev.section,
        sectionId: dev.sectionId,
        idstr: dev.info.idstr,
        instanceId: dev.info.instanceId,
        versionId: dev.info.versionId,
        raw,
        offset,
      });
      this.device = undefined;
      this.state = State.top;
      return true;
    }
    dev.scanFrom = Math.max(dev.headerLen, r.resumeAt);
    if (dev.scanFrom > this.maxDevice) throw new DeviceSectionTooLargeError(dev.info.idstr, this.maxDevice, q.offset);
    return MORE;
  }

  private readRamFooter(): boolean {
    const q = this.q;
    if (q.length < 5) return MORE;
    const offset = q.offset;
    const tag = q.byteAt(0);
    if (tag !== RecordTag.sectionFooter) {
      throw new SectionFooterError(`found 0x${tag.toString(16).padStart(2, "0")} instead of 0x7e`, this.currentSection, offset);
    }
    const id = q.u32(1);
    if (id !== this.currentSection) throw new SectionFooterError(`footer names section ${id}`, this.currentSection, offset);
    q.skip(5);
    this.out.push({ type: "ramSectionEnd", sectionId: this.currentSection, offset: this.eosOffset });
    this.state = State.top;
    return true;
  }

  // --- RAM records -------------------------------------------------------------------

  private readRamBody(): boolean {
    for (;;) {
      if (this.batchOpen) this.fastPages();
      const r = this.readRamRecord();
      if (r === 0) return MORE;
      if (r === 2) return true; // EOS: section body done
    }
  }

  /**
   * The hot loop: CONTINUE page and zero records of the open batch's block, read from
   * the head chunk while they lie wholly in it. Anything else (a block name, a new
   * round, a full slab, a record across chunks, EOS, an error) is left to readRamRecord.
   */
  private fastPages(): void {
    const q = this.q;
    const buf = q.head;
    if (buf === undefined) return;
    const start = q.pos;
    const end = buf.length;
    const base = q.offset - start; // stream offset of buf[0]
    const meta = this.meta;
    const slab = this.dataSlab;
    const { offsets, positions, kinds, fills, named } = meta;
    const data = slab.data;
    const cap = meta.capacity;
    const blockLen = this.blocks[this.batchBlock].usedLength;
    let last = this.lastOffset;
    let i = meta.used;
    let d = slab.used;
    const dCap = data.length;
    let pos = start;
    while (end - pos >= 9 && i < cap) {
      const lo = buf.readUInt32BE(pos + 4);
      const flags = lo & PAGE_FLAG_MASK;
      const off = buf.readUInt32BE(pos) * TWO32 + (lo - flags);
      if (off <= last || off + PAGE_SIZE > blockLen) break;
      if (flags === PAGE_CONT) {
        if (end - pos < 8 + PAGE_SIZE || d + PAGE_SIZE > dCap) break;
        buf.copy(data, d, pos + 8, pos + 8 + PAGE_SIZE);
        d += PAGE_SIZE;
        kinds[i] = PageKind.normal;
        fills[i] = 0;
        positions[i] = base + pos + 8;
        pos += 8 + PAGE_SIZE;
      } else if (flags === ZERO_CONT) {
        kinds[i] = PageKind.fill;
        fills[i] = buf[pos + 8];
        positions[i] = base + pos + 8;
        pos += 9;
      } else {
        break;
      }
      offsets[i] = off;
      named[i] = 0;
      last = off;
      i++;
    }
    if (pos === start) return;
    meta.used = i;
    slab.used = d;
    this.lastOffset = last;
    q.skip(pos - start);
    if (i === cap) this.closeBatch();
  }

  /** One RAM record through the general path: 0 = need more input, 1 = consumed, 2 = EOS consumed. */
  private readRamRecord(): 0 | 1 | 2 {
    const q = this.q;
    if (q.length < 8) return 0;
    const offset = q.offset;
    const hi = q.u32(0);
    const lo = q.u32(4);
    const flags = lo & PAGE_FLAG_MASK;
    const value = hi * TWO32 + (lo - flags);
    const unsupported = flags & ~SUPPORTED_FLAGS;
    if (unsupported !== 0) throw new UnsupportedRamFlagError(unsupported, offset);
    const kind = flags & ~RamFlag.continue;
    switch (kind) {
      case RamFlag.eos:
        this.closeBatch();
        q.skip(8);
        this.eosOffset = offset;
        this.state = State.ramFooter;
        return 2;
      case RamFlag.memSize:
        this.closeBatch();
        return this.readRamSetup(value, offset);
      case RamFlag.page:
      case RamFlag.zero:
        return this.readPage(kind, flags, value, offset);
      default:
        throw new UnsupportedRamFlagError(flags, offset);
    }
  }

  private readPage(kind: number, flags: number, pageOffset: number, offset: number): 0 | 1 {
    const q = this.q;
    let p = 8;
    let block: number;
    const named = (flags & RamFlag.continue) === 0;
    if (named) {
      if (q.length < 9) return 0;
      const len = q.byteAt(8);
      if (q.length < 9 + len) return 0;
      const name = q.peek(9, len).toString("latin1");
      const idx = this.blockIndex.get(name);
      if (idx === undefined) throw new UnknownRamBlockError(name, offset);
      block = idx;
      p = 9 + len;
    } else {
      if (this.curBlock < 0) throw new UnknownRamBlockError(undefined, offset);
      block = this.curBlock;
    }
    const payload = kind === RamFlag.page ? PAGE_SIZE : 1;
    if (q.length < p + payload) return 0;
    const info = this.blocks[block];
    if (pageOffset + PAGE_SIZE > info.usedLength) throw new PageOutOfRangeError(info.id, pageOffset, info.usedLength, offset);

    const newRound = this.round === 0 || block < this.lastBlock || (block === this.lastBlock && pageOffset <= this.lastOffset);
    if (this.batchOpen && (newRound || block !== this.batchBlock)) this.closeBatch();
    if (newRound) {
      this.round++;
      this.out.push({ type: "round", round: this.round, offset });
    }
    if (this.meta.used === this.meta.capacity || (kind === RamFlag.page && this.dataSlab.free < PAGE_SIZE)) this.closeBatch();
    if (!this.batchOpen) this.openBatch(block, offset);

    const meta = this.meta;
    const i = meta.used;
    meta.offsets[i] = pageOffset;
    meta.positions[i] = offset + p;
    meta.named[i] = named ? 1 : 0;
    if (kind === RamFlag.page) {
      const slab = this.dataSlab;
      q.copyOut(p, slab.data, slab.used, PAGE_SIZE);
      slab.used += PAGE_SIZE;
      meta.kinds[i] = PageKind.normal;
      meta.fills[i] = 0;
    } else {
      meta.kinds[i] = PageKind.fill;
      meta.fills[i] = q.byteAt(p);
    }
    meta.used = i + 1;
    q.skip(p + payload);
    this.curBlock = block;
    this.lastBlock = block;
    this.lastOffset = pageOffset;
    if (meta.used === meta.capacity) this.closeBatch();
    return 1;
  }

  /** The MEM_SIZE record: be64 total, then per block u8 len + idstr + be64 used_length (+ optional fields). */
  private readRamSetup(total: number, offset: number): 0 | 1 {
    const q = this.q;
    const blocks: RamBlockInfo[] = [];
    let p = 8;
    let remaining = total;
    while (remaining > 0) {
      if (q.length < p + 1) return 0;
      const len = q.byteAt(p);
      if (len === 0) throw new MalformedRamSetupError("empty block name", offset + p);
      if (q.length < p + 1 + len + 8) return 0;
      const id = q.peek(p + 1, len).toString("latin1");
      const usedLength = q.u64(p + 1 + len);
      p += 1 + len + 8;
      const block: RamBlockInfo = { id, usedLength };
      if (this.postcopyAdvised) {
        // Sent only for blocks whose page size differs from the host's; an idstr length
        // byte is never 0 and EOS is 0x10, so a power of two ≥ 4 KiB here is a page size.
        if (q.length < p + 8) return 0;
        const v = q.u64(p);
        if (v >= PAGE_SIZE && (v & (v - 1)) === 0 && q.byteAt(p) === 0) {
          block.pageSize = v;
          p += 8;
        }
      }
      if (this.ignoreShared) {
        if (q.length < p + 8) return 0;
        block.addr = q.u64(p);
        p += 8;
      }
      if (usedLength === 0 || usedLength % PAGE_SIZE !== 0 || usedLength > remaining) {
        throw new MalformedRamSetupError(`block "${id}" of ${usedLength} bytes does not fit the announced total ${total}`, offset);
      }
      remaining -= usedLength;
      blocks.push(block);
    }
    q.skip(p);
    this.setBlocks(blocks);
    this.out.push({ type: "ramSetup", totalBytes: total, blocks, offset });
    return 1;
  }

  private setBlocks(blocks: RamBlockInfo[]): void {
    // A second RAM setup (found by fuzzing: a duplicated MEM_SIZE record) may announce
    // fewer or other blocks. curBlock/lastBlock are indexes into the old list, so a
    // CONTINUE record after it read this.blocks[curBlock] === undefined (a TypeError, not
    // a MigrationStreamError). Carry them over by block name; a block no longer announced
    // makes CONTINUE an UnknownRamBlockError.
    const remap = (i: number) => (i < 0 ? -1 : blocks.findIndex((b) => b.id === this.blocks[i]?.id));
    this.curBlock = remap(this.curBlock);
    this.lastBlock = remap(this.lastBlock);
    this.blocks = blocks;
    this.blockIndex.clear();
    blocks.forEach((b, i) => this.blockIndex.set(b.id, i));
  }

  // --- batches -------------------------------------------------------------------

  private openBatch(block: number, offset: number): void {
    // Start a fresh slab rather than a tiny batch at the end of one.
    if (this.meta.capacity - this.meta.used < this.maxBatch / 4 || this.meta.used === this.meta.capacity) {
      this.meta = new MetaSlab(this.maxBatch);
    }
    if (this.dataSlab.free < PAGE_SIZE * Math.max(1, this.maxBatch / 4)) this.dataSlab = new DataSlab(this.maxBatch);
    this.batchOpen = true;
    this.batchBlock = block;
    this.batchStart = this.meta.used;
    this.batchDataStart = this.dataSlab.used;
    this.batchOffset = offset;
  }

  private closeBatch(): void {
    if (!this.batchOpen) return;
    this.batchOpen = false;
    const m = this.meta;
    const a = this.batchStart;
    const b = m.used;
    if (b === a) return;
    this.out.push({
      type: "pages",
      block: this.blocks[this.batchBlock].id,
      round: this.round,
      count: b - a,
      offsets: m.offsets.subarray(a, b),
      kinds: m.kinds.subarray(a, b),
      fills: m.fills.subarray(a, b),
      named: m.named.subarray(a, b),
      positions: m.positions.subarray(a, b),
      data: this.dataSlab.data.subarray(this.batchDataStart, this.dataSlab.used),
      offset: this.batchOffset,
    });
  }

  private describeIncomplete(): string {
    const at = this.q.offset;
    switch (this.state) {
      case State.header:
        return "the stream header";
      case State.config:
        return `the configuration record at byte ${at}`;
      case State.top:
        return this.q.length === 0 ? `the stream before EOF (next record expected at byte ${at})` : `the record at byte ${at}`;
      case State.ramBody:
        return `a RAM record at byte ${at} (section ${this.currentSection})`;
      case State.ramFooter:
        return `the footer of RAM section ${this.currentSection} at byte ${at}`;
      case State.device:
        return `device section "${this.device?.info.idstr ?? ""}" (section ${this.device?.sectionId}) starting at byte ${at}`;
      default:
        return `the VMDESC record at byte ${at}`;
    }
  }
}
