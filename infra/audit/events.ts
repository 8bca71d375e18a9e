/**
 * The audit's view of the retained stream: the events under one subject filter, decoded
 * and validated, in stream order. What does not decode is kept apart (an auditor wants to
 * know), never silently dropped.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { readEvents } from "../events/reader.ts";
import type { DecodedEvent } from "../events/binding.ts";

export interface Fact {
  seq: number;
  subject: string;
  event: DecodedEvent;
  /** The event's time (CloudEvents `time`), ms since the epoch. */
  at: number;
}

export interface Undecodable {
  seq: number;
  subject: string;
  reason: string;
}

export interface Facts {
  facts: Fact[];
  undecodable: Undecodable[];
}

/** Reads every retained event matching `filter` (optionally stored at or after `since`). */
export async function readFacts(nc: NatsConnection, filter: string, opts: { since?: Date } = {}): Promise<Facts> {
  const facts: Fact[] = [];
  const undecodable: Undecodable[] = [];
  for await (const e of readEvents(nc, { filter, ...(opts.since ? { since: opts.since } : {}) })) {
    if (e.result.ok) facts.push({ seq: e.seq, subject: e.subject, event: e.result.event, at: Date.parse(e.result.event.time) });
    else undecodable.push({ seq: e.seq, subject: e.subject, reason: e.result.reason });
  }
  return { facts, undecodable };
}

/** The data of a structured event, typed by the caller (the event was validated on decode). */
export function dataOf<T>(f: Fact): T {
  if (f.event.mode !== "structured") throw new TypeError(`${f.subject}: expected a structured event`);
  return f.event.data as T;
}
