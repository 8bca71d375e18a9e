/**
 * One error class per way a migration stream can be wrong. Each carries the byte
 * offset (from the first byte of the stream) where the problem was found, says it in
 * its message, takes ErrorOptions so a cause survives, and has a predicate.
 */
import { describeRamFlags } from "./constants.ts";

/** Common base, so callers can catch "anything wrong with the stream" at once. */
export class MigrationStreamError extends Error {
  /** Byte offset in the stream where the problem was found. */
  readonly offset: number;
  constructor(message: string, offset: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "MigrationStreamError";
    this.offset = offset;
  }
}

/** The stream does not start with "QEVM". */
export class BadMagicError extends MigrationStreamError {
  readonly found: number;
  constructor(found: number, options?: ErrorOptions) {
    super(`not a QEMU migration stream: magic 0x${hex(found, 8)} at byte 0, expected 0x5145564d ("QEVM")`, 0, options);
    this.name = "BadMagicError";
    this.found = found;
  }
}

/** A stream (or ram section) version other than the one QEMU 7.2 writes. */
export class UnsupportedVersionError extends MigrationStreamError {
  readonly what: "stream" | "ram section";
  readonly version: number;
  constructor(what: "stream" | "ram section", version: number, expected: number, offset: number, options?: ErrorOptions) {
    super(`unsupported ${what} version ${version} at byte ${offset} (expected ${expected})`, offset, options);
    this.name = "UnsupportedVersionError";
    this.what = what;
    this.version = version;
  }
}

/** The input ended before the stream did. */
export class TruncatedStreamError extends MigrationStreamError {
  /** What was being read when the input ended. */
  readonly context: string;
  constructor(context: string, offset: number, options?: ErrorOptions) {
    super(`migration stream truncated at byte ${offset}: input ended inside ${context}`, offset, options);
    this.name = "TruncatedStreamError";
    this.context = context;
  }
}

/** A RAM record with flags this codec does not accept (XBZRLE, HOOK, COMPRESS, MULTIFD_FLUSH, unknown). */
export class UnsupportedRamFlagError extends MigrationStreamError {
  readonly flags: number;
  constructor(flags: number, offset: number, options?: ErrorOptions) {
    super(
      `unsupported RAM record flags ${describeRamFlags(flags)} at byte ${offset}: keep xbzrle, compression, multifd and rdma off`,
      offset,
      options,
    );
    this.name = "UnsupportedRamFlagError";
    this.flags = flags;
  }
}

/** A record tag that is not a section, command, EOF or (after EOF) VMDESC. */
export class UnknownSectionTypeError extends MigrationStreamError {
  readonly tag: number;
  constructor(tag: number, offset: number, options?: ErrorOptions) {
    super(`unknown section type 0x${hex(tag, 2)} at byte ${offset}`, offset, options);
    this.name = "UnknownSectionTypeError";
    this.tag = tag;
  }
}

/** A section not closed by its footer (0x7E + its section id). */
export class SectionFooterError extends MigrationStreamError {
  readonly sectionId: number;
  constructor(detail: string, sectionId: number, offset: number, options?: ErrorOptions) {
    super(`bad section footer for section ${sectionId} at byte ${offset}: ${detail}`, offset, options);
    this.name = "SectionFooterError";
    this.sectionId = sectionId;
  }
}

/** A page record names a RAM block that the setup did not announce, or uses CONTINUE with no block yet. */
export class UnknownRamBlockError extends MigrationStreamError {
  readonly block: string | undefined;
  constructor(block: string | undefined, offset: number, options?: ErrorOptions) {
    super(
      block === undefined
        ? `RAM record at byte ${offset} has CONTINUE but no block was named before`
        : `RAM record at byte ${offset} names unknown RAM block "${block}"`,
      offset,
      options,
    );
    this.name = "UnknownRamBlockError";
    this.block = block;
  }
}

/** A page offset at or beyond the end of its block. */
export class PageOutOfRangeError extends MigrationStreamError {
  readonly block: string;
  readonly pageOffset: number;
  constructor(block: string, pageOffset: number, usedLength: number, offset: number, options?: ErrorOptions) {
    super(`page offset 0x${pageOffset.toString(16)} beyond RAM block "${block}" (0x${usedLength.toString(16)} bytes) at byte ${offset}`, offset, options);
    this.name = "PageOutOfRangeError";
    this.block = block;
    this.pageOffset = pageOffset;
  }
}

/** A RAM section arrived before the section that started it, or a PART/END names an unknown section. */
export class UnknownSectionError extends MigrationStreamError {
  readonly sectionId: number;
  constructor(sectionId: number, offset: number, options?: ErrorOptions) {
    super(`section id ${sectionId} at byte ${offset} was never started`, offset, options);
    this.name = "UnknownSectionError";
    this.sectionId = sectionId;
  }
}

/** A COMMAND record with a command number QEMU 7.2 does not define. */
export class UnknownCommandError extends MigrationStreamError {
  readonly command: number;
  constructor(command: number, offset: number, options?: ErrorOptions) {
    super(`unknown migration command ${command} at byte ${offset}`, offset, options);
    this.name = "UnknownCommandError";
    this.command = command;
  }
}

/** A COMMAND record whose payload is not what its command needs. */
export class MalformedCommandError extends MigrationStreamError {
  readonly command: string;
  constructor(command: string, detail: string, offset: number, options?: ErrorOptions) {
    super(`malformed ${command} command at byte ${offset}: ${detail}`, offset, options);
    this.name = "MalformedCommandError";
    this.command = command;
  }
}

/** The CONFIGURATION record could not be read (unknown subsection, bad length). */
export class MalformedConfigError extends MigrationStreamError {
  constructor(detail: string, offset: number, options?: ErrorOptions) {
    super(`malformed configuration record at byte ${offset}: ${detail}`, offset, options);
    this.name = "MalformedConfigError";
  }
}

/** A RAM setup (MEM_SIZE) record whose block list does not add up or is malformed. */
export class MalformedRamSetupError extends MigrationStreamError {
  constructor(detail: string, offset: number, options?: ErrorOptions) {
    super(`malformed RAM setup at byte ${offset}: ${detail}`, offset, options);
    this.name = "MalformedRamSetupError";
  }
}

/** An opaque device section grew past the configured limit without a footer. */
export class DeviceSectionTooLargeError extends MigrationStreamError {
  readonly idstr: string;
  constructor(idstr: string, limit: number, offset: number, options?: ErrorOptions) {
    super(`device section "${idstr}" starting at byte ${offset} exceeds ${limit} bytes without a section footer`, offset, options);
    this.name = "DeviceSectionTooLargeError";
    this.idstr = idstr;
  }
}

/** Bytes after the end of the stream (after EOF and the optional VMDESC). */
export class TrailingDataError extends MigrationStreamError {
  constructor(offset: number, options?: ErrorOptions) {
    super(`unexpected data after the end of the migration stream at byte ${offset}`, offset, options);
    this.name = "TrailingDataError";
  }
}

/** The encoder was given records in an order that cannot make a valid stream. */
export class EncoderStateError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "EncoderStateError";
  }
}

export const isMigrationStreamError = (e: unknown): e is MigrationStreamError => e instanceof MigrationStreamError;
export const isBadMagic = (e: unknown): e is BadMagicError => e instanceof BadMagicError;
export const isUnsupportedVersion = (e: unknown): e is UnsupportedVersionError => e instanceof UnsupportedVersionError;
export const isTruncatedStream = (e: unknown): e is TruncatedStreamError => e instanceof TruncatedStreamError;
export const isUnsupportedRamFlag = (e: unknown): e is UnsupportedRamFlagError => e instanceof UnsupportedRamFlagError;
export const isUnknownSectionType = (e: unknown): e is UnknownSectionTypeError => e instanceof UnknownSectionTypeError;
export const isSectionFooterError = (e: unknown): e is SectionFooterError => e instanceof SectionFooterError;
export const isUnknownRamBlock = (e: unknown): e is UnknownRamBlockError => e instanceof UnknownRamBlockError;
export const isPageOutOfRange = (e: unknown): e is PageOutOfRangeError => e instanceof PageOutOfRangeError;
export const isUnknownSection = (e: unknown): e is UnknownSectionError => e instanceof UnknownSectionError;
export const isUnknownCommand = (e: unknown): e is UnknownCommandError => e instanceof UnknownCommandError;
export const isMalformedCommand = (e: unknown): e is MalformedCommandError => e instanceof MalformedCommandError;
export const isMalformedConfig = (e: unknown): e is MalformedConfigError => e instanceof MalformedConfigError;
export const isMalformedRamSetup = (e: unknown): e is MalformedRamSetupError => e instanceof MalformedRamSetupError;
export const isDeviceSectionTooLarge = (e: unknown): e is DeviceSectionTooLargeError => e instanceof DeviceSectionTooLargeError;
export const isTrailingData = (e: unknown): e is TrailingDataError => e instanceof TrailingDataError;
export const isEncoderStateError = (e: unknown): e is EncoderStateError => e instanceof EncoderStateError;

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, "0");
}
