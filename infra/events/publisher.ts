/**
 * Publishing events to the gw.> stream: validated by their definition, the event id as
 * JetStream message id (the stream drops a re-published id within its duplicate window),
 * and the trace context in the headers.
 */
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import { SpanKind, context, trace } from "@opentelemetry/api";
import type { z } from "zod";
import type { BinaryEventDefinition, StructuredEventDefinition } from "../../schemas/index.ts";
import { injectTraceContext, meter, tracer } from "../telemetry.ts";
import { encodeBinary, encodeStructured, type EncodedMessage } from "./binding.ts";

type AnyStructured = StructuredEventDefinition<string, z.ZodType, Record<string, string>>;
type AnyBinary = BinaryEventDefinition<string, z.ZodType<Record<string, string | number | boolean>>, Record<string, string>>;
type ParamsOf<D> = D extends { subject(params: infer P): string } ? P : never;

export interface PublishOptions {
  /** Event id; random when unset. Give a deterministic one whenever a retry may publish again. */
  id?: string;
  time?: Date;
}

export interface EventPublisher {
  readonly source: string;
  publish<D extends AnyStructured>(def: D, params: ParamsOf<D>, data: z.input<D["data"]>, opts?: PublishOptions): Promise<PubAck>;
  publishBinary<D extends AnyBinary>(def: D, params: ParamsOf<D>, ext: z.input<D["extensions"]>, body: Uint8Array, opts?: PublishOptions): Promise<PubAck>;
  /** Sends an already encoded event (trace context is added here). */
  send(msg: EncodedMessage): Promise<PubAck>;
}

const sent = meter().createCounter("messaging.client.sent.messages", { description: "events published by gangway" });

/** Span name after the messaging conventions: the subject with its variable tokens folded. */
function template(subject: string): string {
  const parts = subject.split(".");
  return parts.length > 3 ? [...parts.slice(0, 2), "*", ...parts.slice(3)].join(".") : subject;
}

export function createPublisher(js: JetStreamClient, source: string): EventPublisher {
  const send = async (msg: EncodedMessage): Promise<PubAck> => {
    const span = tracer().startSpan(`send ${template(msg.subject)}`, {
      kind: SpanKind.PRODUCER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": msg.subject,
        "messaging.message.id": msg.id,
      },
    });
    try {
      injectTraceContext(msg.headers, trace.setSpan(context.active(), span));
      const ack = await js.publish(msg.subject, msg.payload, { msgID: msg.id, headers: msg.headers });
      sent.add(1, { "messaging.system": "nats", "messaging.destination.name": template(msg.subject) });
      return ack;
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: 2, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  };
  return {
    source,
    send,
    publish: (def, params, data, opts) => send(encodeStructured(def, params, data, { source, ...opts })),
    publishBinary: (def, params, ext, body, opts) => send(encodeBinary(def, params, ext as Record<string, string | number | boolean>, body, { source, ...opts })),
  };
}
