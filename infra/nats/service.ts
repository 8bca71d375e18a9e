/**
 * Asking and answering the request-reply services schemas/ declares, on core NATS. Both
 * sides check the other's message against the definition.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { describeIssues, type ReplyOf, type RequestOf, type ServiceDefinition, type ServiceParams } from "../../schemas/index.ts";
import type { z } from "zod";

type AnyService = ServiceDefinition<z.ZodType, z.ZodType, Record<string, string>>;

const decode = (data: Uint8Array): unknown => (data.length === 0 ? undefined : JSON.parse(new TextDecoder().decode(data)));
const encode = (value: unknown) => (value === undefined ? "" : JSON.stringify(value));

/**
 * Answers `def` at `params` until unsubscribed. A request that does not fit the definition,
 * and a handler that throws, are answered with `failed(message)`.
 */
export function answer<S extends AnyService>(
  nc: NatsConnection,
  def: S,
  params: ServiceParams<S>,
  o: NoInfer<{ handle(request: RequestOf<S>): ReplyOf<S> | Promise<ReplyOf<S>>; failed(message: string): ReplyOf<S> }>,
): Subscription {
  return nc.subscribe(def.subject(params), {
    callback: (_err, msg) =>
      void (async () => {
        let reply: ReplyOf<S>;
        try {
          const req = def.request.safeParse(decode(msg.data));
          reply = req.success ? await o.handle(req.data as RequestOf<S>) : o.failed(describeIssues(req.error));
        } catch (err) {
          reply = o.failed((err as Error).message);
        }
        msg.respond(encode(reply));
      })(),
  });
}

/** Asks `def` at `params`; rejects on a time-out, no answerer, or an answer that does not fit. */
export async function ask<S extends AnyService>(nc: NatsConnection, def: S, params: ServiceParams<S>, request: RequestOf<S>, o: { timeoutMs: number }): Promise<ReplyOf<S>> {
  const m = await nc.request(def.subject(params), encode(request), { timeout: o.timeoutMs });
  return def.reply.parse(decode(m.data)) as ReplyOf<S>;
}
