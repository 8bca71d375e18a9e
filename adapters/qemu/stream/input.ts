/**
 * Input adapters. The parser flushes a partial page batch whenever it would otherwise
 * wait for input, so it should see "everything available now" as one group: a Readable
 * is turned into groups of the chunks it has buffered (no copying), with back-pressure.
 */
import type { Readable } from "node:stream";

/** Bytes, a group of byte chunks that arrived together, or a Readable. */
export type ByteSource =
  | AsyncIterable<Uint8Array | readonly Uint8Array[]>
  | Iterable<Uint8Array | readonly Uint8Array[]>
  | Readable;

/** Options for readableGroups. */
export interface ReadableGroupsOptions {
  /** Bytes buffered before the Readable is paused (back-pressure to its producer). @default 4194304 (4 MiB) */
  highWaterMark?: number;
}

/**
 * Yields, each time, every chunk the Readable has delivered since the last yield. The
 * Readable is paused while more than highWaterMark bytes wait. Breaking out of the loop
 * detaches the listeners and leaves the Readable paused (the caller owns it).
 */
export async function* readableGroups(readable: Readable, options: ReadableGroupsOptions = {}): AsyncGenerator<Buffer[]> {
  const high = options.highWaterMark ?? 4 * 1024 * 1024;
  let queue: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (chunk: Buffer | string) => {
    const b = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    queue.push(b);
    queued += b.length;
    if (queued >= high) readable.pause();
    poke();
  };
  const onEnd = () => {
    ended = true;
    poke();
  };
  const onError = (err: Error) => {
    failure = err;
    poke();
  };
  const onClose = () => {
    // A socket can close without 'end' (reset): treat as end; the parser decides if it was complete.
    ended = true;
    poke();
  };
  readable.on("data", onData);
  readable.once("end", onEnd);
  readable.once("error", onError);
  readable.once("close", onClose);
  readable.resume();
  try {
    for (;;) {
      if (queue.length > 0) {
        const group = queue;
        queue = [];
        queued = 0;
        if (!ended && readable.isPaused()) readable.resume();
        yield group;
        continue;
      }
      if (failure) throw failure;
      if (ended) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    readable.off("data", onData);
    readable.off("end", onEnd);
    readable.off("error", onError);
    readable.off("close", onClose);
    if (!ended) readable.pause();
  }
}

export function isReadable(x: unknown): x is Readable {
  return typeof x === "object" && x !== null && typeof (x as Readable).pipe === "function" && typeof (x as Readable).on === "function";
}

export function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
