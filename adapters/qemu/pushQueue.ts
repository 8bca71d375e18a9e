/**
 * A push-fed async iterator: the producer pushes, one consumer pulls with `for await`.
 * Breaking out of the loop (return()) runs the cleanup, so a subscription never leaks.
 * Used for QMP events and serial lines.
 */
export interface PushQueueOptions {
  /** Items kept while nobody pulls; the oldest are dropped beyond this. @default 10_000 */
  maxBuffered?: number;
  /** Called once when the consumer stops (break/return) or the queue ends. */
  onClose?: () => void;
}

export class PushQueue<T> implements AsyncIterableIterator<T> {
  #items: T[] = [];
  #waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  #done = false;
  #error: unknown;
  #closed = false;
  readonly #max: number;
  readonly #onClose: (() => void) | undefined;
  /** Items dropped because the consumer fell behind. */
  dropped = 0;

  constructor(opts: PushQueueOptions = {}) {
    this.#max = opts.maxBuffered ?? 10_000;
    this.#onClose = opts.onClose;
  }

  push(item: T): void {
    if (this.#done) return;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = undefined;
      w.resolve({ value: item, done: false });
      return;
    }
    this.#items.push(item);
    if (this.#items.length > this.#max) {
      this.#items.shift();
      this.dropped++;
    }
  }

  /** Ends the iteration after the buffered items; with an error, the consumer gets it then. */
  end(error?: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = error;
    if (this.#waiter && this.#items.length === 0) {
      const w = this.#waiter;
      this.#waiter = undefined;
      if (error !== undefined) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
    this.#close();
  }

  next(): Promise<IteratorResult<T>> {
    if (this.#items.length) return Promise.resolve({ value: this.#items.shift()!, done: false });
    if (this.#done) {
      const err = this.#error;
      this.#error = undefined; // report it once
      return err !== undefined ? Promise.reject(err) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    this.#done = true;
    this.#items = [];
    this.#error = undefined;
    this.#waiter?.resolve({ value: undefined, done: true });
    this.#waiter = undefined;
    this.#close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose?.();
  }
}
