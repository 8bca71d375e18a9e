/**
 * Wire constants of QEMU 7.2's migration stream (migration/savevm.c, migration/ram.c).
 * Enums are a const object plus a union type of the same name.
 */

/** "QEVM", the first four bytes of every stream. */
export const STREAM_MAGIC = 0x5145564d;
/** The only stream version QEMU has written since 2.x (version 2 was never loadable). */
export const STREAM_VERSION = 3;
/** Target page size of x86: RAM records carry whole 4 KiB pages. */
export const PAGE_SIZE = 4096;
/** Low bits of a RAM record's be64 that hold flags instead of the page offset. */
export const PAGE_FLAG_MASK = PAGE_SIZE - 1;
/** Version of the "ram" section that QEMU 7.2 writes and accepts. */
export const RAM_SECTION_VERSION = 4;
/** The idstr of the RAM section. */
export const RAM_IDSTR = "ram";
/** QEMU refuses a PACKAGED blob above 16 MiB (MAX_VM_CMD_PACKAGED_SIZE). */
export const MAX_PACKAGED_SIZE = 1 << 24;

/** Top-level record type bytes (QEMU_VM_*). */
export const RecordTag = {
  eof: 0x00,
  sectionStart: 0x01,
  sectionPart: 0x02,
  sectionEnd: 0x03,
  sectionFull: 0x04,
  subsection: 0x05,
  vmdesc: 0x06,
  configuration: 0x07,
  command: 0x08,
  sectionFooter: 0x7e,
} as const;
export type RecordTag = (typeof RecordTag)[keyof typeof RecordTag];

/** The four kinds of section header. */
export const SectionType = { start: "start", part: "part", end: "end", full: "full" } as const;
export type SectionType = (typeof SectionType)[keyof typeof SectionType];

export const sectionTypeOfTag: Readonly<Record<number, SectionType>> = {
  [RecordTag.sectionStart]: SectionType.start,
  [RecordTag.sectionPart]: SectionType.part,
  [RecordTag.sectionEnd]: SectionType.end,
  [RecordTag.sectionFull]: SectionType.full,
};
export const tagOfSectionType: Readonly<Record<SectionType, number>> = {
  start: RecordTag.sectionStart,
  part: RecordTag.sectionPart,
  end: RecordTag.sectionEnd,
  full: RecordTag.sectionFull,
};

/** Flags in the low 12 bits of a RAM record (RAM_SAVE_FLAG_*). */
export const RamFlag = {
  /** Obsolete since QEMU 1.x; never written. */
  full: 0x01,
  zero: 0x02,
  memSize: 0x04,
  page: 0x08,
  eos: 0x10,
  continue: 0x20,
  xbzrle: 0x40,
  hook: 0x80,
  compressPage: 0x100,
  /** QEMU 8.0+; never valid in a 7.2 stream. */
  multifdFlush: 0x200,
} as const;
export type RamFlag = (typeof RamFlag)[keyof typeof RamFlag];

/** Human names for flags, used in error messages. */
export const ramFlagNames: Readonly<Record<number, string>> = {
  [RamFlag.full]: "FULL",
  [RamFlag.zero]: "ZERO",
  [RamFlag.memSize]: "MEM_SIZE",
  [RamFlag.page]: "PAGE",
  [RamFlag.eos]: "EOS",
  [RamFlag.continue]: "CONTINUE",
  [RamFlag.xbzrle]: "XBZRLE",
  [RamFlag.hook]: "HOOK",
  [RamFlag.compressPage]: "COMPRESS",
  [RamFlag.multifdFlush]: "MULTIFD_FLUSH",
};

/** Command numbers (enum qemu_vm_cmd in 7.2). */
export const CommandId = {
  openReturnPath: 1,
  ping: 2,
  postcopyAdvise: 3,
  postcopyListen: 4,
  postcopyRun: 5,
  postcopyRamDiscard: 6,
  packaged: 7,
  enableColo: 8,
  postcopyResume: 9,
  recvBitmap: 10,
  /** QEMU 10.0+ (send-switchover-start, on for 10.0 machine types): the source is stopping. */
  switchoverStart: 11,
} as const;
export type CommandId = (typeof CommandId)[keyof typeof CommandId];

/** How a page travels in the stream. */
export const PageKind = {
  /** A ZERO record: one fill byte (QEMU 7.2 always writes 0, and memsets any value). */
  fill: 0,
  /** A PAGE record: 4096 bytes of content. */
  normal: 1,
} as const;
export type PageKind = (typeof PageKind)[keyof typeof PageKind];

/** Names a set of RAM flags, e.g. "XBZRLE (0x40)". */
export function describeRamFlags(flags: number): string {
  const names: string[] = [];
  for (let bit = 1; bit <= PAGE_FLAG_MASK; bit <<= 1) {
    if (flags & bit) names.push(`${ramFlagNames[bit] ?? "UNKNOWN"} (0x${bit.toString(16)})`);
  }
  return names.join(" | ") || "none";
}
