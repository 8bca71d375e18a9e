/**
 * What a host action is: the command it obeys (a schema of schemas/, on
 * gw.cmd.agent.<host>.*) and the handler that acts on it over the host's state. Declared the
 * way functions are (kit/), but where a function decides, an action acts: it starts and
 * stops QEMU, moves pages, and reports what happened as facts.
 */
import type { z } from "zod";
import type { StructuredEventDefinition } from "../../schemas/index.ts";
import type { HostState } from "./hostState.ts";

/** A command addressed to one host. */
export type HostCommand = StructuredEventDefinition<string, z.ZodType, { host: string }>;

export interface HostAction<D extends HostCommand = HostCommand> {
  readonly trigger: D;
  /**
   * Acts on one command, accepted once (the agent acks it at once): what goes wrong is
   * reported as an event (an abort), not retried.
   */
  handle(state: HostState, data: z.infer<D["data"]>, meta: CommandMeta): Promise<void>;
}

/** Where the command sits in the events stream (what came of it comes after). */
export interface CommandMeta {
  streamSeq: number;
}

/** Any action, for the agent's list (its data is known only once its trigger's type is). */
export type AnyHostAction = { readonly trigger: HostCommand; handle(state: HostState, data: never, meta: CommandMeta): Promise<void> };

/** Declares an action with its trigger's data type flowing into the handler. */
export function defineAction<D extends HostCommand>(action: HostAction<D>): HostAction<D> {
  return action;
}
