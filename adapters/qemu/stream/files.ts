/**
 * Saved streams (QMP `migrate "exec:cat > FILE"`): summarize one, or rewrite it in
 * canonical form. Both read the file as a stream and never hold it in memory; the
 * re-encode keeps only where each page's last content is, then reads those back.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { once } from "node:events";
import { canonicalize, type CanonicalStats } from "./canonical.ts";
import { StreamEncoder } from "./encoder.ts";
import { FilePageStore } from "./pageImage.ts";
import { parseStream, type ParseStreamOptions } from "./stream.ts";
import { StreamSummarizer, type StreamSummary } from "./summary.ts";

/** Read size for saved streams: 1 MiB chunks. */
const READ_CHUNK = 1024 * 1024;

/** A saved stream that cannot be opened (missing, not a file, unreadable). */
export class StreamFileError extends Error {
  readonly path: string;
  constructor(message: string, path: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StreamFileError";
    this.path = path;
  }
}
export const isStreamFileError = (e: unknown): e is StreamFileError => e instanceof StreamFileError;

/** Opens a saved stream for parsing, with a clear error when the file is missing. */
export async function openStreamFile(path: string): Promise<{ size: number; readable: ReturnType<typeof createReadStream> }> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new StreamFileError(err.code === "ENOENT" ? `no such file: ${path}` : `cannot read ${path}: ${err.message}`, path, { cause: err });
  });
  if (!st.isFile()) throw new StreamFileError(`not a regular file: ${path}`, path);
  return { size: st.size, readable: createReadStream(path, { highWaterMark: READ_CHUNK }) };
}

/** Summarizes a saved stream. Throws the parser's typed error for a malformed one. */
export async function inspectFile(path: string, options: ParseStreamOptions = {}): Promise<StreamSummary> {
  const { readable } = await openStreamFile(path);
  const sum = new StreamSummarizer();
  let bytes = 0;
  try {
    for await (const r of parseStream(readable, { ...options, onChunk: (c) => (bytes += c.length) })) sum.add(r);
  } finally {
    readable.destroy();
  }
  sum.summary.bytes = bytes;
  return sum.summary;
}

export interface ReencodeResult extends CanonicalStats {
  inputBytes: number;
  outputBytes: number;
}

/**
 * Rewrites IN canonically into OUT (see canonical.ts). OUT is written beside itself and
 * renamed into place, so a failure leaves no half-written OUT.
 */
export async function reencodeFile(input: string, output: string, options: { vmdesc?: boolean } = {}): Promise<ReencodeResult> {
  const { readable } = await openStreamFile(input);
  const stats: CanonicalStats = { inputPages: 0, fillPages: 0, normalPages: 0, rounds: 0 };
  let inputBytes = 0;
  const tmp = `${output}.tmp-${process.pid}`;
  const out = createWriteStream(tmp);
  let writeError: Error | undefined;
  // Keep a write error (disk full) from being an unhandled 'error' event; it is rethrown below.
  out.on("error", (err) => (writeError ??= err));
  const closed = new Promise<void>((resolve) => out.once("close", () => resolve()));
  const enc = new StreamEncoder({ continueMode: "auto" });
  try {
    const records = parseStream(readable, { onChunk: (c) => (inputBytes += c.length) });
    const canon = canonicalize(records, { store: (blocks) => new FilePageStore(input, blocks), vmdesc: options.vmdesc }, stats);
    for await (const r of canon) {
      if (writeError) throw writeError;
      for (const b of enc.encode(r)) if (!out.write(b)) await once(out, "drain");
    }
    for (const b of enc.finish()) out.write(b);
    out.end();
    if (!out.writableFinished) await once(out, "finish");
    if (writeError) throw writeError;
    await rename(tmp, output);
  } catch (err) {
    out.destroy();
    await closed; // the file may still be opening: remove it only once it is closed
    await rm(tmp, { force: true });
    throw err;
  } finally {
    readable.destroy();
  }
  return { ...stats, inputBytes, outputBytes: enc.bytesOut };
}
