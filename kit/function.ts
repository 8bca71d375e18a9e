/**
 * What a gangway function is: one module, one trigger, one handler that decides. Effects
 * reach it only through the context the host builds (no NATS, no node:* in functions/ or here).
 */
import type { z } from "zod";
import type { BinaryEventDefinition, EventOf, StructuredEventDefinition } from "../schemas/index.ts";

type AnyStructured = StructuredEventDefinition<string, z.ZodType, Record<string, string>>;
type AnyBinary = BinaryEventDefinition<string, z.ZodType<Record<string, string | number | boolean>>, Record<string, string>>;
type ParamsOf<D> = D extends { subject(params: infer P): string } ? P : never;

/** Structured logging as handlers need it. */
export interface Log {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * Small durable state shared by functions (a KV bucket). Keys are dot-separated tokens and
 * documented by the function that owns them.
 */
export interface StateStore {
  get<T>(key: string): Promise<T | undefined>;
  put<T>(key: string, value: T): Promise<void>;
  /** Writes only if the key is absent; false when someone got there first (a claim). */
  create<T>(key: string, value: T): Promise<boolean>;
  delete(key: string): Promise<void>;
  /** Keys under a prefix (e.g. "inventory."). */
  keys(prefix: string): Promise<string[]>;
}

export interface FunctionContext {
  /**
   * Queues an event. The host publishes what a handler emitted only after the handler
   * returns, with ids derived from the triggering event, so a replay emits the same ids
   * and the stream drops the copies.
   */
  emit<D extends AnyStructured>(def: D, params: ParamsOf<D>, data: z.input<D["data"]>): void;
  emitBinary<D extends AnyBinary>(def: D, params: ParamsOf<D>, ext: z.input<D["extensions"]>, body: Uint8Array): void;
  state: StateStore;
  log: Log;
  now(): Date;
  /** 1 on the first delivery, more on retries and redeliveries. */
  attempt: number;
}

export interface RetryPolicy {
  /** Deliveries before the event goes to the dead-letter subject. @default 5 */
  maxAttempts: number;
  /** Delay before the first retry; doubles each time. @default 500 */
  backoffMs: number;
}

export interface FunctionDefinition<D extends AnyStructured | AnyBinary = AnyStructured | AnyBinary> {
  /** Stable id: names the durable consumer, so instances with the same id share the work. */
  id: string;
  description: string;
  trigger: D;
  retry?: Partial<RetryPolicy>;
  /** Events one instance handles at once. @default 1 */
  concurrency?: number;
  /** A narrower subject filter than the trigger's (e.g. one shard). @default trigger.filter */
  filter?: string;
  /**
   * One event at a time across all instances (max one unacknowledged): for functions whose
   * decisions must see every earlier decision, like claims in the dedup index. @default false
   */
  exclusive?: boolean;
  /**
   * The handler's only effects are the events it emits (no state writes), so the stream's
   * de-duplication of their derived ids already makes a replay harmless, and the host skips
   * its per-event bookkeeping (two round trips) — for hot paths like the dedup index.
   * @default false
   */
  effectsAreEmittedOnly?: boolean;
  handler(event: EventOf<D>, ctx: FunctionContext): Promise<void>;
}

/** Declares a function with its trigger's event type flowing into the handler. */
export function defineFunction<D extends AnyStructured | AnyBinary>(def: FunctionDefinition<D>): FunctionDefinition<D> {
  return def;
}
