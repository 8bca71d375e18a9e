/**
 * The destination side: encodes records into a valid stream and writes it into a
 * destination QEMU started with `-incoming defer -S`, after QMP
 * `migrate-incoming {"uri": "unix:PATH"}` made it listen on PATH. Pages may come in any
 * order and framing (one PART per batch is fine); with collapseRounds all rounds become
 * one PART holding the last content of each page (written once the input has ended).
 *
 * Each record is written as soon as it is encoded (no buffering across records), and the
 * next record is only pulled once the socket has drained (back-pressure). If the input
 * fails (a corrupted or truncated source stream), the connection is closed mid-stream,
 * so QEMU's load fails and nothing half-loaded can be resumed, and the error is rethrown.
 */
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { createLogger, type Logger } from "../../infra/log.ts";
import { canonicalize } from "./stream/canonical.ts";
import { StreamEncoder, type EncodeOptions } from "./stream/encoder.ts";
import type { StreamRecord } from "./stream/records.ts";
import { ReturnPathDecoder, type ReturnPathMessage } from "./returnPath.ts";

/** Options of writeToDestination. */
export interface DestinationProxyOptions {
  /** The unix socket the destination QEMU listens on (the PATH of `migrate-incoming unix:PATH`). */
  socketPath: string;
  /** How long to retry connecting while QEMU is not listening yet, in ms. @default 10000 */
  connectTimeoutMs?: number;
  /** Collapse all rounds into one ram PART (canonical form): fewer bytes, all written at the end. @default false */
  collapseRounds?: boolean;
  /** Encoder options. @default { continueMode: "preserve", vmdesc: true } */
  encode?: EncodeOptions;
  /** Stops writing and closes the connection. @default none */
  signal?: AbortSignal;
  /** @default a logger with component "destinationProxy" */
  logger?: Logger;
  /**
   * Give up when QEMU takes no bytes for this long (a write waiting for the socket to drain,
   * or the end of the stream): a hung QEMU must not hold the rebuild, and the guest's
   * downtime, for good. @default 60000
   */
  stallTimeoutMs?: number;
  /**
   * Messages QEMU writes back on its return path (post-copy: page faults, then SHUT). They
   * keep coming after the stream is written, until QEMU closes the connection. @default ignored
   */
  onReturnPath?: (message: ReturnPathMessage) => void;
}

export interface DestinationResult {
  /** Bytes written to QEMU. */
  bytes: number;
  /** Records written. */
  records: number;
}

/** The destination QEMU could not be reached, or closed the connection while we wrote. */
export class DestinationConnectionError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DestinationConnectionError";
  }
}
export const isDestinationConnectionError = (e: unknown): e is DestinationConnectionError => e instanceof DestinationConnectionError;

/** Connects to QEMU's incoming socket, retrying while it is not there yet. */
export async function connectToIncoming(socketPath: string, timeoutMs = 10_000, signal?: AbortSignal): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    try {
      const s = connect(socketPath);
      await once(s, "connect");
      return s;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() > deadline) {
        throw new DestinationConnectionError(`cannot connect to the destination QEMU at ${socketPath}: ${(err as Error).message}`, { cause: err });
      }
      await sleep(50);
    }
  }
}

/** Writes a buffer, waiting for the socket to drain; fails if the socket errors or closes meanwhile, or QEMU takes nothing for `stallMs`. */
async function writeAll(socket: Socket, parts: Buffer[], stallMs: number): Promise<void> {
  if (parts.length === 0) return;
  if (socket.destroyed) throw new DestinationConnectionError("the destination QEMU closed the connection");
  socket.cork();
  for (const p of parts) socket.write(p);
  socket.uncork();
  if (!socket.writableNeedDrain) return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => done(new DestinationConnectionError(`the destination QEMU took no data for ${Math.round(stallMs / 1000)} s (${socket.writableLength} bytes waiting)`)), stallMs);
    const done = (err?: Error) => {
      clearTimeout(timer);
      socket.off("drain", onDrain);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onError = (err: Error) => done(new DestinationConnectionError(`writing to the destination QEMU failed: ${err.message}`, { cause: err }));
    const onClose = () => done(new DestinationConnectionError("the destination QEMU closed the connection"));
    socket.on("drain", onDrain);
    socket.once("error", onError);
    socket.once("close", onClose);
  });
}

/**
 * Ends the stream and waits until every byte is handed over. QEMU closes its end as soon as it
 * has read the end of the stream (post-copy: at once), so a clean close with nothing left to
 * write is success; a connection that failed (reset, broken pipe) is not. Waiting for
 * "finish" on a socket whose error was emitted before the wait would never end (a destination
 * sat silent until its migration's budget ran out).
 */
async function endStream(socket: Socket, stallMs: number): Promise<void> {
  const settled = (): Error | "done" | undefined => {
    if (socket.errored) return new DestinationConnectionError(`the connection to the destination QEMU failed: ${socket.errored.message}`, { cause: socket.errored });
    if (socket.writableFinished || (socket.destroyed && socket.writableLength === 0)) return "done";
    if (socket.destroyed) return new DestinationConnectionError("the destination QEMU closed the connection before the stream ended");
    return undefined;
  };
  const early = settled();
  if (early === "done") return;
  if (early) throw early;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off("finish", check);
      socket.off("error", check);
      socket.off("close", check);
      reject(new DestinationConnectionError(`the destination QEMU did not take the end of the stream within ${Math.round(stallMs / 1000)} s (${socket.writableLength} bytes waiting)`));
    }, stallMs);
    const check = () => {
      const s = settled();
      if (!s) return;
      clearTimeout(timer);
      socket.off("finish", check);
      socket.off("error", check);
      socket.off("close", check);
      if (s === "done") resolve();
      else reject(s);
    };
    socket.on("finish", check);
    socket.on("error", check);
    socket.on("close", check);
    socket.end();
    check();
  });
}

/**
 * Encodes `records` into the destination QEMU listening on options.socketPath. Resolves
 * when every byte has been handed to the kernel and the connection is closed on our
 * side; whether QEMU loaded it is for QMP to tell (query-migrate / query-status).
 */
export async function writeToDestination(
  records: AsyncIterable<StreamRecord> | Iterable<StreamRecord>,
  options: DestinationProxyOptions,
): Promise<DestinationResult> {
  const log = options.logger ?? createLogger({ component: "destinationProxy" });
  const socket = await connectToIncoming(options.socketPath, options.connectTimeoutMs, options.signal);
  // Errors surface through writeAll; keep an 'error' without a listener from crashing the process.
  socket.on("error", (err) => log.debug("destination socket error", { error: err }));
  if (options.onReturnPath) {
    const rp = new ReturnPathDecoder();
    const onMessage = options.onReturnPath;
    socket.on("data", (chunk: Buffer) => {
      try {
        for (const m of rp.push(chunk)) onMessage(m);
      } catch (err) {
        log.warn("unreadable return path; closing the connection", { error: err });
        socket.destroy();
      }
    });
  } else socket.resume(); // nothing is expected back; never let unread bytes stall QEMU
  const onAbort = () => socket.destroy();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const stallMs = options.stallTimeoutMs ?? 60_000;
  const enc = new StreamEncoder(options.encode);
  const input = options.collapseRounds ? canonicalize(records) : records;
  let count = 0;
  let ok = false;
  try {
    for await (const r of input) {
      options.signal?.throwIfAborted();
      await writeAll(socket, enc.encode(r), stallMs);
      count++;
    }
    await writeAll(socket, enc.finish(), stallMs);
    await endStream(socket, stallMs);
    ok = true;
    log.debug("stream written to the destination", { bytes: enc.bytesOut, records: count });
    return { bytes: enc.bytesOut, records: count };
  } catch (err) {
    log.warn("destination stream aborted; closing the connection to QEMU", { error: err, bytesWritten: enc.bytesOut });
    throw err;
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    // Mid-stream close: QEMU's load fails instead of waiting for bytes that will not come.
    if (!ok) socket.destroy();
  }
}
