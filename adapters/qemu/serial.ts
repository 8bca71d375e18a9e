/**
 * A line-oriented serial console over a byte stream (QEMU's serial chardev connected to
 * a socket we own). waitFor() works like `expect`: it searches from a cursor that each
 * match moves past, so a line printed before the call is still found, and never twice.
 */
import type { Duplex } from "node:stream";
import { SerialClosedError, SerialTimeoutError } from "./errors.ts";
import { PushQueue } from "./pushQueue.ts";

export interface SerialConsoleOptions {
  /** Complete lines kept for waitFor() and history(). @default 10_000 */
  historyLines?: number;
  /** Default time for waitFor(). @default 30_000 */
  defaultTimeoutMs?: number;
}

/** Options of one waitFor(). */
export interface WaitForOptions {
  /**
   * Also match the unfinished last line (a shell prompt has no newline). Off by default:
   * a pattern could match a line that is still arriving (`first=5` of `first=512`).
   * @default false
   */
  partial?: boolean;
}

interface Waiter {
  pattern: RegExp;
  partial: boolean;
  resolve: (m: RegExpMatchArray) => void;
  reject: (e: unknown) => void;
}

export class SerialConsole implements AsyncDisposable {
  /** Resolves when the other end closes (the VM exited) or close() is called. */
  readonly closed: Promise<void>;
  #stream: Duplex;
  #lines: string[] = [];
  /** Absolute number of the first kept line (older ones were dropped). */
  #base = 0;
  /** Absolute number of the first line waitFor() may still match. */
  #cursor = 0;
  #partial = "";
  /** The unfinished line already matched by waitFor(): skip it once it completes. */
  #partialMatched = false;
  #waiters = new Set<Waiter>();
  #subscribers = new Set<PushQueue<string>>();
  #isClosed = false;
  readonly #max: number;
  readonly #defaultTimeoutMs: number;

  constructor(stream: Duplex, opts: SerialConsoleOptions = {}) {
    this.#stream = stream;
    this.#max = opts.historyLines ?? 10_000;
    this.#defaultTimeoutMs = opts.defaultTimeoutMs ?? 30_000;
    let resolveClosed!: () => void;
    this.closed = new Promise((r) => (resolveClosed = r));
    // latin1: one char per byte, so stray binary from a guest never breaks decoding.
    stream.setEncoding("latin1");
    stream.on("data", (chunk: string) => this.#onData(chunk));
    stream.on("error", () => undefined); // 'close' follows
    stream.on("close", () => {
      this.#isClosed = true;
      for (const w of this.#waiters) this.#testPartialOrFail(w);
      for (const q of this.#subscribers) q.end();
      resolveClosed();
    });
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** The kept lines, oldest first (without line ends). */
  history(): readonly string[] {
    return this.#lines.slice();
  }

  /** Lines that arrive from now on, until the console closes or the loop breaks. */
  lines(): AsyncIterableIterator<string> {
    const q: PushQueue<string> = new PushQueue({ onClose: () => this.#subscribers.delete(q) });
    if (this.#isClosed) q.end();
    else this.#subscribers.add(q);
    return q;
  }

  /**
   * The first complete line at or after the cursor matching `pattern` (with `partial`,
   * the unfinished last line too); moves the cursor past it.
   * @throws SerialTimeoutError with the last lines seen
   * @throws SerialClosedError when the console closes first
   */
  waitFor(pattern: RegExp, timeoutMs = this.#defaultTimeoutMs, opts: WaitForOptions = {}): Promise<RegExpMatchArray> {
    for (let i = Math.max(this.#cursor, this.#base); i < this.#base + this.#lines.length; i++) {
      const m = this.#lines[i - this.#base]!.match(pattern);
      if (m) {
        this.#cursor = i + 1;
        return Promise.resolve(m);
      }
    }
    this.#cursor = this.#base + this.#lines.length;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        reject(new SerialTimeoutError(String(pattern), timeoutMs, this.#recent()));
      }, timeoutMs);
      const w: Waiter = {
        pattern,
        partial: opts.partial === true,
        resolve: (m) => {
          clearTimeout(timer);
          this.#waiters.delete(w);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.#waiters.delete(w);
          reject(e);
        },
      };
      this.#waiters.add(w);
      this.#testPartialOrFail(w);
    });
  }

  /** Moves the cursor to the end: later waits see only what arrives after this call. */
  skip(): void {
    this.#cursor = this.#base + this.#lines.length;
    if (this.#partial) this.#partialMatched = true;
  }

  /** Writes text to the guest. @throws SerialClosedError */
  send(text: string): Promise<void> {
    if (this.#isClosed) return Promise.reject(new SerialClosedError(`serial console closed; cannot send ${JSON.stringify(text)}`));
    return new Promise((resolve, reject) => {
      this.#stream.write(text, "latin1", (err) => (err ? reject(new SerialClosedError("serial write failed", { cause: err })) : resolve()));
    });
  }

  /** skip(), send(text), then waitFor(pattern): a command and its answer. */
  async request(text: string, pattern: RegExp, timeoutMs = this.#defaultTimeoutMs, opts: WaitForOptions = {}): Promise<RegExpMatchArray> {
    this.skip();
    const answer = this.waitFor(pattern, timeoutMs, opts);
    await this.send(text).catch((err: unknown) => {
      answer.catch(() => undefined);
      throw err;
    });
    return answer;
  }

  async close(): Promise<void> {
    this.#stream.destroy();
    await this.closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #onData(chunk: string): void {
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf("\n", start)) >= 0) {
      this.#onLine((this.#partial + chunk.slice(start, nl)).replace(/\r$/, ""));
      this.#partial = "";
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.#partial += chunk.slice(start);
      for (const w of this.#waiters) this.#testPartialOrFail(w);
    }
  }

  #onLine(line: string): void {
    const abs = this.#base + this.#lines.length;
    this.#lines.push(line);
    if (this.#lines.length > this.#max) {
      this.#lines.shift();
      this.#base++;
    }
    if (this.#partialMatched) {
      // This line's beginning was already matched (a prompt): never match it again.
      this.#partialMatched = false;
      this.#cursor = Math.max(this.#cursor, abs + 1);
    } else if (this.#cursor <= abs) {
      for (const w of this.#waiters) {
        const m = line.match(w.pattern);
        if (m) {
          this.#cursor = abs + 1;
          w.resolve(m);
          break; // one line satisfies one waiter
        }
      }
    }
    for (const q of this.#subscribers) q.push(line);
  }

  #testPartialOrFail(w: Waiter): void {
    if (w.partial && this.#partial && !this.#partialMatched) {
      const m = this.#partial.match(w.pattern);
      if (m) {
        this.#partialMatched = true;
        w.resolve(m);
        return;
      }
    }
    if (this.#isClosed) w.reject(new SerialClosedError(`serial console closed while waiting for ${String(w.pattern)}`));
  }

  #recent(): string[] {
    const tail = this.#lines.slice(-10);
    if (this.#partial) tail.push(this.#partial);
    return tail;
  }
}
