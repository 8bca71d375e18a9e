/**
 * The parser as an async iterator: pulls input only when the consumer asks for more
 * records (back-pressure), flushes a partial page batch before waiting for input, and
 * yields the records completed before an error ahead of throwing it.
 */
import { isReadable, readableGroups, toBuffer, type ByteSource } from "./input.ts";
import { StreamParser, type NestedContext, type ParseOptions } from "./parser.ts";
import type { StreamRecord } from "./records.ts";

/** Options of parseStream. */
export interface ParseStreamOptions extends ParseOptions {
  /** Called with each input chunk before parsing (counting, taps). @default none */
  onChunk?: (chunk: Buffer) => void;
  /** For a Readable input: bytes read ahead of the parser before the Readable is paused. @default 4194304 (4 MiB) */
  readAheadBytes?: number;
}

/**
 * Parses a migration stream incrementally. Chunks are read in place, but no record keeps
 * a reference to one: page contents are copied once into the batch slabs (consumers want
 * them contiguous) and device, command and VMDESC payloads are copied, so a producer may
 * reuse a chunk as soon as the parser has pulled the next one.
 */
export async function* parseStream(input: ByteSource, options: ParseStreamOptions = {}): AsyncGenerator<StreamRecord, void, undefined> {
  const parser = new StreamParser(options);
  const source = isReadable(input) ? readableGroups(input, { highWaterMark: options.readAheadBytes }) : input;
  const feed = (c: Uint8Array) => {
    const b = toBuffer(c);
    options.onChunk?.(b);
    parser.push(b);
  };
  for await (const item of source as AsyncIterable<Uint8Array | readonly Uint8Array[]>) {
    try {
      if (item instanceof Uint8Array) feed(item);
      else for (const c of item) feed(c);
      parser.flush();
    } catch (err) {
      yield* parser.drain();
      throw err;
    }
    yield* parser.drain();
  }
  try {
    parser.end();
  } catch (err) {
    yield* parser.drain();
    throw err;
  }
  yield* parser.drain();
}

/** Parses a complete buffer synchronously (tests, small streams). */
export function parseBuffer(data: Buffer, options: ParseOptions = {}): StreamRecord[] {
  const parser = new StreamParser(options);
  parser.push(data);
  parser.end();
  return parser.drain();
}

/**
 * Parses the blob of a PACKAGED command (a stream without header: in 7.2 post-copy,
 * LISTEN, the device sections, PING, RUN).
 */
export function parsePackaged(data: Buffer, context: NestedContext = {}, options: ParseOptions = {}): StreamRecord[] {
  const parser = new StreamParser(options, context);
  parser.push(data);
  parser.end();
  return parser.drain();
}
