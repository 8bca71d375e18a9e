/** Errors the CLI entry maps to exit codes. Commands throw; only cli/index.ts exits. */

/** A bad argument or flag: exit 64 (EX_USAGE) with the message and a usage hint. */
export class UsageError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

/** The command ran but what it checked did not hold (e.g. an audit that fails): exit 1. */
export class CheckFailedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CheckFailedError";
  }
}

/** What the command needs is not there (no NATS server at the address, say): exit 2. */
export class SetupError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SetupError";
  }
}

export const isSetupError = (e: unknown): e is SetupError => e instanceof SetupError;
export const isUsageError = (e: unknown): e is UsageError => e instanceof UsageError;
export const isCheckFailed = (e: unknown): e is CheckFailedError => e instanceof CheckFailedError;
