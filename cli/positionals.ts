import { UsageError } from "./errors.ts";

/** Thrown by a command whose arguments parse but whose work lands with a later issue. */
export class NotBuiltYetError extends Error {
  constructor(command: string, what: string) {
    super(`${command}: ${what} is not built yet`);
    this.name = "NotBuiltYetError";
  }
}

/** Checks positionals against what a command takes, with a message naming what is wrong. */
export function expectPositionals(positionals: string[], min: number, max: number, what: string): void {
  if (positionals.length < min) throw new UsageError(`missing ${what}`);
  if (positionals.length > max) throw new UsageError(`unexpected argument "${positionals[max]}"`);
}
