/**
 * The source side of a migration: a unix socket this process owns, that the source QEMU
 * migrates into (QMP `migrate` with `uri: proxy.uri`). The one connection QEMU makes is
 * parsed as it arrives into typed records: `ramSetup` (blocks and sizes), `round`
 * boundaries, `pages` batches (offsets, kinds, data), `device` sections (opaque bytes),
 * `command`s (post-copy pass-through), `eof` and `vmdesc` (the end). The bytes QEMU sent
 * are counted: the "native stream bytes" a plain migration would have carried.
 *
 * Back-pressure: the socket is read only as fast as the records are consumed, so a slow
 * consumer slows QEMU down instead of filling memory. A malformed or truncated stream
 * closes the connection (QEMU's migration fails, the source keeps running) and the
 * parser's typed error, naming the byte offset, is thrown from `records()`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger, type Logger } from "../../infra/log.ts";
import { readableGroups } from "./stream/input.ts";
import type { ParseOptions } from "./stream/parser.ts";
import type { StreamRecord } from "./stream/records.ts";
import { parseStream } from "./stream/stream.ts";
import { encodeShut } from "./returnPath.ts";

/** Options of createSourceProxy. */
export interface SourceProxyOptions {
  /** Socket path to listen on. @default "migrate.sock" in a fresh private temporary directory */
  socketPath?: string;
  /** Parser options (batch size, device section limit). @default parser defaults */
  parse?: ParseOptions;
  /** Bytes read from QEMU and not yet parsed before reading pauses. @default 4194304 (4 MiB) */
  highWaterMark?: number;
  /**
   * Sees every chunk QEMU sends, with its stream offset, before the parser does. Returns
   * the bytes to parse instead (fault injection in tests), or null to cut the stream
   * there (the connection is closed as if QEMU had stopped sending). @default none
   */
  inputFilter?: (chunk: Buffer, offset: number) => Buffer | null;
  /** Gives up waiting for QEMU to connect, or stops a stream in progress. @default none */
  signal?: AbortSignal;
  /** @default a logger with component "sourceProxy" */
  logger?: Logger;
}

export interface SourceProxy extends AsyncDisposable {
  /** Path of the listening socket. */
  readonly socketPath: string;
  /** What to pass to QMP `migrate`: "unix:" + socketPath. */
  readonly uri: string;
  /** Bytes QEMU has sent so far (the native stream). */
  nativeBytes(): number;
  /**
   * The records of the stream QEMU sends, once it connects. Iterate once. Ends after EOF
   * (and VMDESC, if sent) when QEMU closes; throws a MigrationStreamError on a bad stream.
   */
  records(): AsyncGenerator<StreamRecord, void, undefined>;
  /**
   * Writes a return-path message to QEMU (post-copy page requests). False when QEMU has
   * not opened its return path or the connection is gone.
   */
  sendReturnPath(message: Buffer): boolean;
  /** Stops listening, drops the connection, removes the socket. */
  close(): Promise<void>;
}

/** Error when QEMU never connected or the wait was aborted. */
export class SourceProxyAbortedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceProxyAbortedError";
  }
}
export const isSourceProxyAborted = (e: unknown): e is SourceProxyAbortedError => e instanceof SourceProxyAbortedError;

export async function createSourceProxy(options: SourceProxyOptions = {}): Promise<SourceProxy> {
  const log = options.logger ?? createLogger({ component: "sourceProxy" });
  const ownDir = options.socketPath === undefined ? await mkdtemp(join(tmpdir(), "gangway-src-")) : undefined;
  const socketPath = options.socketPath ?? join(ownDir!, "migrate.sock");
  if (options.socketPath !== undefined) await rm(socketPath, { force: true });

  let conn: Socket | undefined;
  let accepted: ((s: Socket) => void) | undefined;
  const connected = new Promise<Socket>((resolve) => (accepted = resolve));
  const server: Server = createServer({ pauseOnConnect: true, allowHalfOpen: false }, (socket) => {
    if (conn) {
      // One migration per proxy: a second connection is a mistake, refuse it.
      socket.destroy();
      return;
    }
    conn = socket;
    server.close(); // stop listening; the accepted socket stays open
    log.debug("QEMU connected", { socketPath });
    accepted!(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });

  let native = 0;
  let closed = false;
  let used = false;
  /** QEMU sent OPEN_RETURN_PATH (post-copy enabled): it reads messages back on this connection. */
  let returnPathOpen = false;
  const sendReturnPath = (message: Buffer) => {
    if (!returnPathOpen || !conn || conn.destroyed) return false;
    conn.write(message);
    return true;
  };

  const close = async () => {
    if (closed) return;
    closed = true;
    conn?.destroy();
    await new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));
    if (ownDir) await rm(ownDir, { recursive: true, force: true });
    else await rm(socketPath, { force: true });
  };

  async function waitForQemu(): Promise<Socket> {
    const signal = options.signal;
    if (!signal) return connected;
    signal.throwIfAborted();
    return new Promise<Socket>((resolve, reject) => {
      const onAbort = () => reject(new SourceProxyAbortedError("gave up waiting for QEMU to connect", { cause: signal.reason }));
      signal.addEventListener("abort", onAbort, { once: true });
      void connected.then((s) => {
        signal.removeEventListener("abort", onAbort);
        resolve(s);
      });
    });
  }

  /** The socket's chunks in groups, through the filter, counted. */
  async function* input(socket: Socket): AsyncGenerator<Buffer[]> {
    const filter = options.inputFilter;
    for await (const group of readableGroups(socket, { highWaterMark: options.highWaterMark })) {
      const out: Buffer[] = [];
      let cut = false;
      for (const chunk of group) {
        const at = native;
        native += chunk.length;
        const b = filter ? filter(chunk, at) : chunk;
        if (b === null) {
          cut = true;
          break;
        }
        out.push(b);
      }
      if (out.length > 0) yield out;
      if (cut) {
        log.warn("stream cut by the input filter", { at: native });
        socket.destroy();
        return;
      }
    }
  }

  async function* records(): AsyncGenerator<StreamRecord, void, undefined> {
    if (used) throw new Error("SourceProxy.records() can be iterated only once");
    used = true;
    const socket = await waitForQemu();
    const onAbort = () => socket.destroy(new SourceProxyAbortedError("source stream aborted", { cause: options.signal?.reason }));
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let ok = false;
    try {
      for await (const r of parseStream(input(socket), options.parse)) {
        if (r.type === "command" && r.command.cmd === "openReturnPath") returnPathOpen = true;
        // gangway has the whole stream: tell QEMU its destination is done, or its
        // completion waits on the return path forever (and fails when it closes).
        if (r.type === "eof" && returnPathOpen) {
          sendReturnPath(encodeShut(0));
          // SHUT is the last word: QEMU closes soon, and a write after that would break the read side.
          returnPathOpen = false;
        }
        yield r;
      }
      ok = true;
      log.debug("source stream complete", { nativeBytes: native });
    } catch (err) {
      log.warn("source stream failed; closing QEMU's connection", { error: err, nativeBytes: native });
      throw err;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      // On success QEMU has closed its side; on failure or early exit this makes its migration fail.
      if (ok) socket.end();
      else socket.destroy();
    }
  }

  return {
    socketPath,
    uri: `unix:${socketPath}`,
    nativeBytes: () => native,
    records,
    sendReturnPath,
    close,
    [Symbol.asyncDispose]: close,
  };
}
