/**
 * Reads retained events back from the stream, in stream order, decoded and validated —
 * the basis of audit and replay. Ends when it has caught up with the stream as it was
 * when reading began (it does not wait for new events).
 */
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { EVENTS_STREAM } from "../nats/resources.ts";
import { decodeMessage, type DecodeResult } from "./binding.ts";

export interface StoredEvent {
  seq: number;
  subject: string;
  /** Decoded event, or why it did not decode (a dead letter's original, say). */
  result: DecodeResult;
}

export interface ReadOptions {
  /** Subject filter (one subject, as NATS 2.9 needs for ordered consumers). @default "gw.>" */
  filter?: string;
  /** First stream sequence to read. @default 1 */
  startSeq?: number;
  /** Only events stored at or after this time. */
  since?: Date;
  /** Only the last event of each subject the filter matches (a host's latest inventory, say). */
  lastPerSubject?: boolean;
}

export async function* readEvents(nc: NatsConnection, opts: ReadOptions = {}): AsyncGenerator<StoredEvent> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  const last = info.state.last_seq;
  if (info.state.messages === 0 || last < (opts.startSeq ?? 1)) return;
  const js = jetstream(nc);
  const consumer = await js.consumers.get(EVENTS_STREAM, {
    filter_subjects: opts.filter ?? "gw.>",
    ...(opts.lastPerSubject
      ? { deliver_policy: DeliverPolicy.LastPerSubject }
      : opts.since
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: opts.since.toISOString() }
        : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: opts.startSeq ?? 1 }),
  });
  try {
    // The first info tells whether anything matches at all; after that each message says
    // how many matching ones remain (info.pending), so reading stops when it hits zero.
    if ((await consumer.info(true)).num_pending === 0) return;
    let done = false;
    while (!done) {
      const batch = await consumer.fetch({ max_messages: 512, expires: 2000 });
      let got = 0;
      for await (const m of batch) {
        got++;
        yield { seq: m.seq, subject: m.subject, result: decodeMessage(m.subject, m.data, m.headers) };
        if (m.info.pending === 0 || m.seq >= last) {
          done = true;
          break;
        }
      }
      if (got === 0) done = true;
    }
  } finally {
    await consumer.delete().catch(() => undefined);
  }
}
