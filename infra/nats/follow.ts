/**
 * Following a subject of the events stream live, in order, through whatever the servers go
 * through. An ordered consumer of the client library recovers from some losses but not all:
 * after a nats-server restart its first pull could sit for 30 s, and when the cluster node
 * holding it died it kept counting missed heartbeats for good and delivered nothing more (a
 * CLI waited out its idle time-out on a migration that had long ended; an index stopped
 * learning). A follower therefore opens a new ordered consumer just after the last message
 * it delivered whenever it goes quiet (no message and no heartbeat for 3.5 heartbeats), when
 * its heartbeats say it delivered messages that never came (for 2 heartbeats), or when the old
 * one ends by itself. The quiet is timed here, not by the library: across a disconnect
 * it stops its own heartbeat watch and then retries a lost consumer's info every 30 s for
 * good (a cluster node killed: a CLI followed a migration that had ended long before).
 */
import { DeliverPolicy, jetstream, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { EVENTS_STREAM } from "./resources.ts";

/** Errors of a server that is briefly unable to answer (a cluster electing leaders). */
const TRANSIENT = new Set(["TimeoutError", "NoRespondersError", "JetStreamNotEnabled", "JetStreamApiError"]);

export interface FollowOptions {
  /** One subject filter. */
  filter: string;
  /** Where to begin. @default "all" */
  from?: "all" | "new";
  /**
   * Begin at this stream sequence instead (overrides `from`). On nats-server 2.9 a filtered
   * consumer that starts from the beginning scans the whole stream before its first message
   * (6.5 s on a 2 GB stream, 55 ms from a recent sequence): followers of one migration start
   * near where it began.
   */
  fromSeq?: number;
  /** The server drops a consumer its client stopped pulling after this long. @default server's */
  inactiveThresholdMs?: number;
  /** Idle heartbeat of the consumer; 3 missed open a new one. @default 1000 */
  heartbeatMs?: number;
  /** Stream. @default the events stream */
  stream?: string;
}

export class StreamFollower implements AsyncIterable<JsMsg> {
  private last = 0;
  private generation = 0;
  private current?: { messages: ConsumerMessages; consumer: { delete(): Promise<boolean>; info(cached?: boolean): Promise<{ num_pending: number }> } };
  private queue: JsMsg[] = [];
  private wake?: () => void;
  private done = false;
  private error?: Error;
  private reopening = false;
  private opening = false;
  /** When the current consumer last showed life (a message or a server heartbeat). */
  private lastSign = Date.now();
  /** The consumer sequence of the last message the current consumer delivered. */
  private delivered = 0;
  /** Since when heartbeats say the consumer delivered messages that never came. */
  private gapSince?: number;
  private readonly watchdog: NodeJS.Timeout;
  /** Consumers opened after the first (for tests and logs). */
  restarts = 0;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly o: FollowOptions,
  ) {
    const hb = o.heartbeatMs ?? 1000;
    this.watchdog = setInterval(() => {
      if (this.done || this.opening || this.reopening) return;
      const lost = this.gapSince !== undefined && Date.now() - this.gapSince > hb * 2;
      if (lost || Date.now() - this.lastSign > hb * 3.5) this.reopen();
    }, hb);
    this.watchdog.unref();
  }

  /**
   * Starts following; rejects if the first consumer cannot be made within `startTimeoutMs`
   * (requests time out for a while when a cluster has just lost a node: they are retried).
   */
  static async start(nc: NatsConnection, o: FollowOptions, startTimeoutMs = 30_000): Promise<StreamFollower> {
    const f = new StreamFollower(nc, o);
    const end = Date.now() + startTimeoutMs;
    for (;;) {
      try {
        await f.open();
        return f;
      } catch (err) {
        if (Date.now() > end || !TRANSIENT.has((err as Error).name) || nc.isClosed()) {
          f.stop();
          throw err;
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** The stream sequence of the last message delivered (0: none yet). */
  get lastSeq(): number {
    return this.last;
  }

  private async open(): Promise<void> {
    this.opening = true;
    try {
      await this.openConsumer();
    } finally {
      this.opening = false;
      this.lastSign = Date.now();
    }
  }

  private async openConsumer(): Promise<void> {
    const generation = ++this.generation;
    this.delivered = 0;
    this.gapSince = undefined;
    const old = this.current;
    this.current = undefined;
    old?.messages.stop();
    void old?.consumer.delete().catch(() => undefined);
    const js = jetstream(this.nc);
    const consumer = await js.consumers.get(this.o.stream ?? EVENTS_STREAM, {
      filter_subjects: this.o.filter,
      ...(this.last
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.last + 1 }
        : this.o.fromSeq
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.o.fromSeq }
          : { deliver_policy: this.o.from === "new" ? DeliverPolicy.New : DeliverPolicy.All }),
      ...(this.o.inactiveThresholdMs ? { inactive_threshold: this.o.inactiveThresholdMs } : {}),
    });
    const messages = await consumer.consume({ idle_heartbeat: this.o.heartbeatMs ?? 1000 });
    if (generation !== this.generation || this.done) {
      messages.stop();
      void consumer.delete().catch(() => undefined);
      return;
    }
    this.current = { messages, consumer };
    void (async () => {
      for await (const s of messages.status()) {
        if (generation !== this.generation) break;
        // Only the server's own heartbeat is a sign of life: the library's other notices
        // ("next" on every re-pull) keep coming while nothing arrives.
        if (s.type === "heartbeat") {
          this.lastSign = Date.now();
          // The consumer says it delivered more than came through: a message was lost.
          if (s.lastConsumerSequence > this.delivered) this.gapSince ??= Date.now();
          else this.gapSince = undefined;
        } else if (s.type === "heartbeats_missed" && s.count >= 3) {
          this.reopen();
          break;
        }
      }
    })().catch(() => undefined);
    void (async () => {
      for await (const m of messages) {
        if (generation !== this.generation) break;
        this.lastSign = Date.now();
        this.delivered = m.info.deliverySequence;
        this.gapSince = undefined;
        if (m.seq <= this.last) continue;
        this.last = m.seq;
        this.queue.push(m);
        this.wake?.();
      }
    })()
      .catch(() => undefined)
      .finally(() => {
        if (generation === this.generation) this.reopen();
      });
  }

  /** Opens a new consumer from where delivery stopped (retried every second until one opens). */
  reopen(): void {
    if (this.done || this.reopening) return;
    this.reopening = true;
    setTimeout(() => {
      this.reopening = false;
      if (this.done) return;
      this.restarts++;
      this.open().catch(() => this.reopen());
    }, 1000).unref();
  }

  /**
   * Messages the stream holds for this follower that its reader has not taken yet (those
   * queued here and those the server has not delivered): 0 means the reader has seen every
   * message stored before this call. One request to the server.
   */
  async unread(): Promise<number> {
    const pending = this.current ? (await this.current.consumer.info(false)).num_pending : Infinity;
    return this.queue.length + pending;
  }

  /** Ends delivery: the iteration ends, or throws `err` when given. */
  stop(err?: Error): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.watchdog);
    this.error = err;
    if (err) this.queue = [];
    this.generation++;
    this.current?.messages.stop();
    this.wake?.();
  }

  /** Stops and deletes the consumer on the server (it would linger for minutes otherwise). */
  async close(): Promise<void> {
    this.stop();
    await this.current?.consumer.delete().catch(() => undefined);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<JsMsg> {
    for (;;) {
      const m = this.queue.shift();
      if (m) {
        yield m;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}
