/**
 * The public face of the QEMU 7.2 migration-stream codec. Internals (the byte queue,
 * slabs, the device-section scanner) stay behind it.
 */
export {
  STREAM_MAGIC,
  STREAM_VERSION,
  PAGE_SIZE,
  RAM_IDSTR,
  RecordTag,
  SectionType,
  RamFlag,
  CommandId,
  PageKind,
  describeRamFlags,
} from "./constants.ts";
export type {
  RamBlockInfo,
  StreamConfig,
  HeaderRecord,
  ConfigRecord,
  RamSectionRecord,
  RamSetupRecord,
  RoundRecord,
  PageBatch,
  RamSectionEndRecord,
  DeviceSectionRecord,
  CommandRecord,
  EofRecord,
  VmdescRecord,
  StreamRecord,
  StreamRecordType,
  DiscardRange,
  MigrationCommand,
  MigrationCommandName,
} from "./records.ts";
export { pagesOf } from "./records.ts";
export { StreamParser, type ParseOptions, type NestedContext } from "./parser.ts";
export { parseStream, parseBuffer, parsePackaged, type ParseStreamOptions } from "./stream.ts";
export { readableGroups, type ByteSource, type ReadableGroupsOptions } from "./input.ts";
export { StreamEncoder, encodeStream, encodeRecords, ContinueMode, type EncodeOptions } from "./encoder.ts";
export { encodeCommand, decodeCommand, commandName } from "./commands.ts";
export { encodeConfig } from "./config.ts";
export { canonicalize, type CanonicalOptions, type CanonicalStats } from "./canonical.ts";
export { PageImage, MemoryPageStore, FilePageStore, type PageStore } from "./pageImage.ts";
export { StreamSummarizer, formatSummary, type StreamSummary, type RoundSummary, type DeviceSummary } from "./summary.ts";
export { inspectFile, reencodeFile, openStreamFile, StreamFileError, isStreamFileError, type ReencodeResult } from "./files.ts";
export * from "./errors.ts";
