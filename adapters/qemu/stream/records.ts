/**
 * The typed records of a migration stream, as the parser yields them and the encoder
 * takes them. They follow the wire closely enough that encoding what was parsed gives
 * the same bytes back (see encoder.ts), and group pages in batches because one object
 * per 4 KiB page is far too slow at ~1 GB/s.
 */
import type { PageKind, SectionType } from "./constants.ts";

/** One RAM block as the "ram" setup (MEM_SIZE record) announces it. */
export interface RamBlockInfo {
  /** The block's idstr, e.g. "m0", "pc.bios", "/rom@etc/acpi/tables". */
  id: string;
  /** used_length in bytes (a multiple of 4096). */
  usedLength: number;
  /** Present only in post-copy streams, for a block whose page size differs from the host's (huge pages). */
  pageSize?: number;
  /** Present only with the x-ignore-shared capability: the block's guest address. */
  addr?: number;
}

/** What the CONFIGURATION record says. */
export interface StreamConfig {
  /** Machine type name, e.g. "pc-i440fx-7.2". The destination must be the same. */
  machine: string;
  /** From the "configuration/target-page-bits" subsection, when present. */
  targetPageBits?: number;
  /** From the "configuration/capabilities" subsection (validated capabilities), when present. */
  capabilities?: string[];
  /** From the "configuration/uuid" subsection, when present. */
  uuid?: Buffer;
}

/** Common to every record: where it starts in the stream. */
interface At {
  /** Byte offset of the record's first byte, counted from the stream's first byte. */
  offset: number;
}

/** be32 magic + be32 version. */
export interface HeaderRecord extends At {
  type: "header";
  version: number;
}

/** The CONFIGURATION record (tag 0x07), kept verbatim in `raw` (tag included). */
export interface ConfigRecord extends At {
  type: "config";
  config: StreamConfig;
  raw: Buffer;
}

/** A section header of the "ram" section (START, PART or END); its records follow. */
export interface RamSectionRecord extends At {
  type: "ramSection";
  section: SectionType;
  sectionId: number;
  /** From the START header (repeated here for PART and END). */
  instanceId: number;
  /** From the START header (repeated here for PART and END). */
  versionId: number;
}

/** The MEM_SIZE record: total RAM and the block list. */
export interface RamSetupRecord extends At {
  type: "ramSetup";
  /** Sum of the blocks' used_length, as sent (be64 with flag MEM_SIZE). */
  totalBytes: number;
  blocks: RamBlockInfo[];
}

/**
 * A new pass over guest RAM begins. QEMU does not mark rounds; the parser infers them:
 * within one pass QEMU sends pages in strictly increasing (block index in the setup,
 * page offset) order, so a page whose (block index, offset) is not greater than the
 * previous page's starts a new round. Round 1 starts at the first page.
 */
export interface RoundRecord extends At {
  type: "round";
  round: number;
}

/**
 * Consecutive page records of one RAM block within one round. Column arrays, one entry
 * per page; the contents of the normal pages are packed in `data` in page order.
 *
 * Lifetime: every array and `data` belong to the record; the parser never writes to
 * them again (several batches may share one underlying ArrayBuffer slab, which stays
 * alive while any of them is referenced).
 */
export interface PageBatch extends At {
  type: "pages";
  /** RAM block idstr. */
  block: string;
  /** Round number (1-based), see RoundRecord. */
  round: number;
  /** Number of pages. */
  count: number;
  /** Byte offset of each page within its block (multiple of 4096). */
  offsets: Float64Array;
  /** PageKind of each page. */
  kinds: Uint8Array;
  /** Fill byte of each fill (ZERO) page; 0 for normal pages. */
  fills: Uint8Array;
  /** 1 where the record named its block (CONTINUE clear), 0 where it used CONTINUE. */
  named: Uint8Array;
  /** Stream offset of each page's payload (its fill byte or its 4096 content bytes). */
  positions: Float64Array;
  /** Contents of the normal pages in order, 4096 bytes each. */
  data: Buffer;
  /**
   * Instead of `data` (encoder input only): a view of each normal page where it already lies
   * (a page pack's slab), so the page is copied once, into the encoded stream.
   */
  views?: Uint8Array[];
}

/** EOS (be64 0x10) closing a ram section, and the section footer. */
export interface RamSectionEndRecord extends At {
  type: "ramSectionEnd";
  sectionId: number;
}

/**
 * A non-ram section, passed on opaquely: `raw` holds its exact bytes from the header's
 * tag through its footer. Where one ends is found by its footer (0x7E + be32 section
 * id) followed by a well-formed next record (see deviceScan.ts).
 */
export interface DeviceSectionRecord extends At {
  type: "device";
  section: SectionType;
  sectionId: number;
  /** From the header (START/FULL) or the START that opened the section (PART/END); "" if unknown. */
  idstr: string;
  instanceId: number;
  versionId: number;
  raw: Buffer;
}

/** A COMMAND record (tag 0x08). */
export interface CommandRecord extends At {
  type: "command";
  command: MigrationCommand;
}

/** QEMU_VM_EOF: the end of the state proper. */
export interface EofRecord extends At {
  type: "eof";
}

/** The optional VMDESC after EOF: JSON describing the device state (droppable). */
export interface VmdescRecord extends At {
  type: "vmdesc";
  json: Buffer;
}

export type StreamRecord =
  | HeaderRecord
  | ConfigRecord
  | RamSectionRecord
  | RamSetupRecord
  | RoundRecord
  | PageBatch
  | RamSectionEndRecord
  | DeviceSectionRecord
  | CommandRecord
  | EofRecord
  | VmdescRecord;

export type StreamRecordType = StreamRecord["type"];

/** A range to discard within a RAM block (bytes). */
export interface DiscardRange {
  start: number;
  length: number;
}

/** The migration commands of QEMU 7.2, typed. Post-copy ones pass through unchanged. */
export type MigrationCommand =
  | { cmd: "openReturnPath" }
  | { cmd: "ping"; value: number }
  /** Fields absent when the command had no payload (dirty-bitmap post-copy only). */
  | { cmd: "postcopyAdvise"; pageSizeSummary?: number; targetPageSize?: number }
  | { cmd: "postcopyListen" }
  | { cmd: "postcopyRun" }
  | { cmd: "postcopyRamDiscard"; version: number; block: string; ranges: DiscardRange[] }
  /** A nested stream (no header): LISTEN, the device sections, PING, RUN. See parsePackaged. */
  | { cmd: "packaged"; data: Buffer }
  | { cmd: "enableColo" }
  | { cmd: "postcopyResume" }
  | { cmd: "recvBitmap"; block: string }
  | { cmd: "switchoverStart" };

export type MigrationCommandName = MigrationCommand["cmd"];

/** Iterates the pages of a batch with their data (a subarray of batch.data, or undefined for fill pages). Convenient, not fast. */
export function* pagesOf(batch: PageBatch): Generator<{ offset: number; kind: PageKind; fill: number; data: Buffer | undefined }> {
  let d = 0;
  for (let i = 0; i < batch.count; i++) {
    const kind = batch.kinds[i] as PageKind;
    if (kind === 1) {
      yield { offset: batch.offsets[i], kind, fill: 0, data: batch.data.subarray(d, d + 4096) };
      d += 4096;
    } else {
      yield { offset: batch.offsets[i], kind, fill: batch.fills[i], data: undefined };
    }
  }
}
