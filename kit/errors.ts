/** The two ways a handler steers retries (after inngest's NonRetriableError/RetryAfterError). */

/** Retrying cannot help (the event asks for something impossible): dead-letter it now. */
export class NonRetriableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NonRetriableError";
  }
}

/** Not yet (a dependency is not ready): redeliver after `delayMs`. */
export class RetryAfterError extends Error {
  readonly delayMs: number;
  constructor(message: string, delayMs: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "RetryAfterError";
    this.delayMs = delayMs;
  }
}

export const isNonRetriable = (e: unknown): e is NonRetriableError => e instanceof NonRetriableError;
export const isRetryAfter = (e: unknown): e is RetryAfterError => e instanceof RetryAfterError;
