/**
 * Dead letters, shared by the function host and the adapters that read the bus directly
 * (the destination's manifest, pack announcements, dedup answers): a message that fails to
 * parse, or that does not belong where it arrived, goes to gw.dlq.<family> with the reason
 * and the original bytes, and is otherwise ignored.
 */
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import { createHash } from "node:crypto";
import { deadLetter } from "../../schemas/index.ts";
import { meter } from "../telemetry.ts";
import { encodeStructured, familyOfSubject, type EncodedMessage } from "./binding.ts";
import { createPublisher, type EventPublisher } from "./publisher.ts";

/** A message as it came off the bus (a JetStream message or a core one). */
export interface ReceivedMessage {
  subject: string;
  data: Uint8Array;
  headers?: MsgHdrs;
  /** Stream sequence, when it came from a stream. */
  seq?: number;
  info?: { deliveryCount?: number; stream?: string };
}

export interface DeadLetterOptions {
  /** Who gives the message up: a function id, or an adapter ("target-migration", …). */
  by: string;
  /** Family of the dead-letter subject. @default the original subject's */
  family?: string;
  /**
   * Event id (JetStream drops a repeat within its duplicate window). Default: derived from
   * `by` and the stream sequence, or the message's bytes when it has none, so that a message
   * seen again (a redelivery, another instance) yields one dead letter.
   */
  id?: string;
}

const deadLetters = meter().createCounter("gangway.function.dead_letters", { description: "events sent to the dead-letter subject" });

export function headersRecord(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (h) for (const k of h.keys()) out[k] = h.get(k);
  return out;
}

function defaultId(by: string, m: ReceivedMessage): string {
  if (m.seq !== undefined) return `dlq-${by}-${m.info?.stream ?? "core"}-${m.seq}`;
  const h = createHash("sha256").update(m.subject).update("\0").update(JSON.stringify(headersRecord(m.headers))).update("\0").update(m.data);
  return `dlq-${by}-${h.digest("hex").slice(0, 32)}`;
}

/** The dead-letter event for `m`, encoded. */
export function encodeDeadLetter(source: string, m: ReceivedMessage, reason: string, o: DeadLetterOptions): EncodedMessage {
  const family = o.family ?? familyOfSubject(m.subject);
  return encodeStructured(
    deadLetter,
    { family },
    {
      reason: reason.slice(0, 8000) || "no reason given",
      function: o.by.slice(0, 128),
      family,
      originalSubject: m.subject,
      originalHeaders: headersRecord(m.headers),
      original: Buffer.from(m.data).toString("base64"),
      deliveryCount: m.info?.deliveryCount ?? 1,
      ...(m.seq !== undefined ? { streamSequence: m.seq } : {}),
    },
    { source, id: o.id ?? defaultId(o.by, m) },
  );
}

/** Publishes the dead letter for `m` (counted in gangway.function.dead_letters). */
export async function sendDeadLetter(publisher: EventPublisher, m: ReceivedMessage, reason: string, o: DeadLetterOptions): Promise<PubAck> {
  const msg = encodeDeadLetter(publisher.source, m, reason, o);
  deadLetters.add(1, { "gangway.function": o.by, "gangway.family": o.family ?? familyOfSubject(m.subject) });
  return publisher.send(msg);
}

/** Dead letters of one adapter: fire and forget (a lost dead letter must not stop the reader). */
export interface DeadLetterSink {
  (m: ReceivedMessage, reason: string, family?: string): void;
  /** Resolves once every dead letter sent so far is acknowledged or failed (for tests). */
  flush(): Promise<void>;
}

export function deadLetterSink(target: JetStreamClient | EventPublisher, source: string, by: string, onError?: (err: Error) => void): DeadLetterSink {
  const publisher = "send" in target ? target : createPublisher(target, source);
  const pending = new Set<Promise<unknown>>();
  const sink = ((m: ReceivedMessage, reason: string, family?: string) => {
    const p = sendDeadLetter(publisher, m, reason, { by, ...(family ? { family } : {}) }).catch((err: Error) => onError?.(err));
    pending.add(p);
    void p.finally(() => pending.delete(p));
  }) as DeadLetterSink;
  sink.flush = async () => void (await Promise.allSettled([...pending]));
  return sink;
}

/**
 * For a reader that replays the stream from its start (a locator, a follower of every scan):
 * only messages stored since it began (give or take 5 s) go to the dead-letter subject. What
 * came before was refused, or taken, by the readers of its time.
 */
export function liveDeadLetters(sink: DeadLetterSink): (m: ReceivedMessage & { info: { timestampNanos: number } }, reason: string) => void {
  const liveSinceNs = BigInt(Date.now() - 5_000) * 1_000_000n;
  return (m, reason) => {
    if (BigInt(m.info.timestampNanos) >= liveSinceNs) sink(m, reason);
  };
}
