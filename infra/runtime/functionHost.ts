/**
 * Hosts a function: binds it to a JetStream durable consumer (instances with the same
 * function id share the work), parses every message, runs the handler inside a span,
 * publishes what it emitted, and only then acks (at-least-once). Replays are harmless:
 * finished event ids are remembered in KV and emitted events carry ids derived from the
 * trigger's id, so the stream drops copies. What cannot be parsed, and what fails after
 * its retries, goes to gw.dlq.<family> with the reason and the original bytes.
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { createHash } from "node:crypto";
import { isNonRetriable, isRetryAfter, type FunctionContext, type FunctionDefinition, type RetryPolicy } from "../../kit/index.ts";
import { createLogger, type Logger } from "../log.ts";
import { decodeMessage, encodeBinary, encodeStructured, type EncodedMessage } from "../events/binding.ts";
import { sendDeadLetter } from "../events/deadLetter.ts";
import { createPublisher, type EventPublisher } from "../events/publisher.ts";
import { EVENTS_STREAM, RUNS_BUCKET, STATE_BUCKET } from "../nats/resources.ts";
import { extractTraceContext, meter, tracer } from "../telemetry.ts";
import { kvStateStore } from "./stateStore.ts";

export interface FunctionHostOptions {
  /** Identifies this instance in event sources and logs. @default "<hostname>-<pid>" */
  instanceId?: string;
  /** How long the server waits for an ack before redelivering (what a dead instance costs); the host heartbeats while a handler runs. @default 10000 */
  ackWaitMs?: number;
  /** A handler still running after this long is given up: no more heartbeats, the event is redelivered. @default 120000 */
  handlerTimeoutMs?: number;
  log?: Logger;
}

export interface ServedFunction {
  readonly id: string;
  /** Stops taking events, lets the ones in flight finish (drain), and returns. */
  stop(): Promise<void>;
}

const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 5, backoffMs: 500 };
const consumed = meter().createCounter("messaging.client.consumed.messages", { description: "events delivered to gangway functions" });
const duration = meter().createHistogram("messaging.process.duration", { unit: "s", description: "time a function took to handle an event" });

export const durableName = (fnId: string) => `fn-${fnId}`;
const runKey = (fnId: string, eventId: string) => `${fnId}.${createHash("sha256").update(eventId).digest("hex").slice(0, 40)}`;
/** Ids of emitted events derive from the trigger: a replay emits the same ids. */
const emittedId = (fnId: string, eventId: string, index: number) => `${fnId}-${createHash("sha256").update(eventId).digest("hex").slice(0, 24)}-${index}`;

export async function serveFunction(fn: FunctionDefinition, nc: NatsConnection, opts: FunctionHostOptions = {}): Promise<ServedFunction> {
  const instanceId = opts.instanceId ?? `${process.env.HOSTNAME ?? "local"}-${process.pid}`;
  const log = (opts.log ?? createLogger()).child({ function: fn.id, instance: instanceId });
  const ackWaitMs = opts.ackWaitMs ?? 10_000;
  const handlerTimeoutMs = opts.handlerTimeoutMs ?? 120_000;
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...fn.retry };
  const durable = durableName(fn.id);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(js);
  const runs: KV = await kvm.open(RUNS_BUCKET);
  const state = kvStateStore(await kvm.open(STATE_BUCKET));
  const publisher: EventPublisher = createPublisher(js, `gangway/function/${fn.id}`);

  try {
    await jsm.consumers.info(EVENTS_STREAM, durable);
  } catch {
    // Created once; every instance with this function id then shares it.
    await jsm.consumers.add(EVENTS_STREAM, {
      durable_name: durable,
      filter_subject: fn.filter ?? fn.trigger.filter,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: ackWaitMs * 1_000_000,
      max_deliver: -1,
      max_ack_pending: fn.exclusive ? 1 : 1000,
    });
  }
  const concurrency = fn.concurrency ?? 1;
  // Heartbeats every second: a pull left with a consumer leader that died (a cluster node)
  // is noticed after 2 s, not after two missed 15 s heartbeats.
  const consume = async (): Promise<ConsumerMessages> =>
    (await js.consumers.get(EVENTS_STREAM, durable)).consume({ max_messages: Math.max(2, concurrency * 2), idle_heartbeat: 1000 });
  let messages = await consume();
  let stopping = false;
  /**
   * The quiet is timed here too (no message, no heartbeat for 3.5 s): across a disconnect
   * the library stops watching heartbeats and may retry a lost consumer's info for good.
   * A quiet consumption is stopped and a new one started on the same durable consumer.
   */
  let lastSign = Date.now();
  /** Only a consumption waited on can be quiet (not one held back by busy handlers). */
  let waiting = false;
  const watchStatus = (msgs: ConsumerMessages) =>
    void (async () => {
      // Only the server's heartbeat counts: the library's "next" notices go on while nothing comes.
      for await (const st of msgs.status()) if (st.type === "heartbeat") lastSign = Date.now();
    })().catch(() => undefined);
  watchStatus(messages);
  const quiet = setInterval(() => {
    if (stopping || !waiting || Date.now() - lastSign < 3500) return;
    lastSign = Date.now();
    log.warn("no message or heartbeat for 3.5 s; consuming anew");
    messages.stop();
  }, 1000);
  quiet.unref();

  const toDeadLetter = async (m: JsMsg, reason: string, family: string) => {
    log.warn("dead-lettered", { reason, subject: m.subject, seq: m.seq });
    // One dead letter per stream message and function, however often it is retried.
    await sendDeadLetter(publisher, m, reason, { by: fn.id, family, id: `dlq-${fn.id}-${m.info.stream}-${m.seq}` });
    m.term();
  };

  const handle = async (m: JsMsg, expired: { now: boolean }): Promise<void> => {
    const started = performance.now();
    const decoded = decodeMessage(m.subject, m.data, m.headers);
    if (!decoded.ok) return toDeadLetter(m, decoded.reason, decoded.family);
    const event = decoded.event;
    const key = runKey(fn.id, event.id);
    const tracked = !fn.effectsAreEmittedOnly;
    if (tracked && (await runs.get(key))?.operation === "PUT") {
      log.debug("duplicate event skipped", { id: event.id });
      m.ack();
      return;
    }
    const parent = extractTraceContext(m.headers);
    const span = tracer().startSpan(
      `process ${fn.filter ?? fn.trigger.filter}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "nats",
          "messaging.operation.type": "process",
          "messaging.destination.name": m.subject,
          "messaging.consumer.group.name": durable,
          "messaging.message.id": event.id,
          "gangway.function": fn.id,
          "gangway.attempt": m.info.deliveryCount,
        },
      },
      parent,
    );
    const heartbeat = setInterval(() => expired.now || m.working(), Math.max(250, ackWaitMs / 3));
    const outbox: EncodedMessage[] = [];
    const emitOpts = () => ({ source: publisher.source, id: emittedId(fn.id, event.id, outbox.length), time: new Date() });
    const ctx: FunctionContext = {
      emit: (def, params, data) => outbox.push(encodeStructured(def, params, data, emitOpts())),
      emitBinary: (def, params, ext, body) => outbox.push(encodeBinary(def, params, ext as Record<string, string | number | boolean>, body, emitOpts())),
      state,
      log: log.child({ event: event.id }),
      now: () => new Date(),
      attempt: m.info.deliveryCount,
    };
    try {
      await context.with(trace.setSpan(parent, span), async () => {
        await (fn.handler as (e: unknown, c: FunctionContext) => Promise<void>)(event, ctx);
        for (const out of outbox) await publisher.send(out);
      });
      if (tracked) await runs.put(key, JSON.stringify({ at: new Date().toISOString(), instance: instanceId, emitted: outbox.length }));
      m.ack();
      span.setStatus({ code: SpanStatusCode.OK });
    } catch (err) {
      const e = err as Error;
      span.recordException(e);
      span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
      if (isNonRetriable(err)) {
        await toDeadLetter(m, `${fn.id}: ${e.message}`, decoded.definition.family);
      } else if (m.info.deliveryCount >= retry.maxAttempts) {
        await toDeadLetter(m, `${fn.id} failed ${m.info.deliveryCount} times; last error: ${e.message}`, decoded.definition.family);
      } else {
        const delay = isRetryAfter(err) ? err.delayMs : retry.backoffMs * 2 ** (m.info.deliveryCount - 1);
        log.warn("handler failed; will retry", { error: e, attempt: m.info.deliveryCount, delayMs: delay });
        m.nak(delay);
      }
    } finally {
      clearInterval(heartbeat);
      span.end();
      consumed.add(1, { "messaging.system": "nats", "gangway.function": fn.id });
      duration.record((performance.now() - started) / 1000, { "gangway.function": fn.id });
    }
  };

  const inFlight = new Set<Promise<void>>();
  /** Runs a handler; returns once a slot is free for the next event. */
  const dispatch = async (m: JsMsg) => {
    // A handler only waits on NATS, whose requests time out; one that hangs anyway must not
    // hold its slot (and, for an exclusive function, every later event) with heartbeats.
    const expired = { now: false };
    let deadline: NodeJS.Timeout | undefined;
    const p = Promise.race([
      handle(m, expired),
      new Promise<void>((resolve) => {
        deadline = setTimeout(() => {
          expired.now = true;
          log.error("handler did not finish; the event will be redelivered", { subject: m.subject, seq: m.seq, timeoutMs: handlerTimeoutMs });
          m.nak();
          resolve();
        }, handlerTimeoutMs);
      }),
    ])
      .catch((err: unknown) => {
        // Publishing a dead letter or an ack failed (NATS away): the server redelivers.
        log.error("event not settled; it will be redelivered", { error: err, subject: m.subject });
      })
      .finally(() => clearTimeout(deadline));
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    if (inFlight.size >= concurrency) await Promise.race(inFlight);
  };
  const loop = (async () => {
    while (!stopping) {
      try {
        const it = messages[Symbol.asyncIterator]();
        for (;;) {
          lastSign = Date.now();
          waiting = true;
          const r = await it.next();
          waiting = false;
          if (r.done) break;
          await dispatch(r.value);
        }
      } catch (err) {
        log.warn("consumption ended", { error: err });
      }
      waiting = false;
      while (!stopping) {
        try {
          messages = await consume();
          watchStatus(messages);
          lastSign = Date.now();
          break;
        } catch (err) {
          log.warn("consuming anew failed; retrying", { error: err });
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    }
  })();
  log.info("serving", { durable, filter: fn.filter ?? fn.trigger.filter });

  return {
    id: fn.id,
    async stop() {
      stopping = true;
      clearInterval(quiet);
      messages.stop();
      await loop;
      await Promise.allSettled([...inFlight]);
      log.info("stopped");
    },
  };
}

/** Serves several functions on one connection; stop() drains them all. */
export async function serveFunctions(fns: readonly FunctionDefinition[], nc: NatsConnection, opts: FunctionHostOptions = {}): Promise<{ stop(): Promise<void> }> {
  const served = await Promise.all(fns.map((f) => serveFunction(f, nc, opts)));
  return { stop: async () => void (await Promise.all(served.map((s) => s.stop()))) };
}
