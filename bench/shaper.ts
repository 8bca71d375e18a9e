/**
 * A shaped link between racks: rate-limiting TCP relays that share one token bucket per
 * direction (a full-duplex link, default 1 Gbit/s = 125 MB/s each way) and count the bytes
 * that cross it. Native QEMU's migration connections (every multifd channel too) and
 * gangway's source-side NATS connection go through the same kind of link, so both are
 * limited and counted the same way: at the relay, never by the endpoints' own counters.
 *
 *   const link = createLink({ bytesPerSecond: 125e6 });
 *   const r = await link.relay("127.0.0.1", natsPort);   // listen on r.port
 *   ... traffic ...
 *   link.counters();   // { up, down, connections }
 *   await link.close();
 *
 * "up" is client → target (source side → destination side), "down" the other way.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export const GIGABIT_BYTES_PER_SECOND = 125_000_000;

export interface LinkOptions {
  /** Rate of each direction in bytes per second; Infinity counts without limiting. @default 125e6 (1 Gbit/s) */
  bytesPerSecond?: number;
  /** How far (seconds of traffic) a sender may run ahead of the rate: the bucket's depth. @default 0.005 */
  burstSeconds?: number;
  /** "full": each direction has its own bucket (a real link); "half": one bucket for both. @default "full" */
  duplex?: "full" | "half";
}

export interface LinkCounters {
  /** Bytes client → target (source side → destination side). */
  up: number;
  /** Bytes target → client. */
  down: number;
  /** Connections accepted so far. */
  connections: number;
}

export interface Relay {
  readonly port: number;
  readonly target: { host: string; port: number };
  counters(): LinkCounters;
  close(): Promise<void>;
}

export interface Link {
  readonly bytesPerSecond: number;
  /** Listens on 127.0.0.1 (a free port unless given) and relays every connection to host:port through this link. */
  relay(targetHost: string, targetPort: number, listenPort?: number): Promise<Relay>;
  /** Totals over every relay of the link. */
  counters(): LinkCounters;
  /** Closes every relay and destroys the connections still open. */
  close(): Promise<void>;
}

/**
 * A token bucket in virtual time (GCRA): each take(n) books n bytes at the rate, after
 * whatever is booked already; the caller waits until it is at most `burst` seconds ahead.
 * Booking order is call order, so connections sharing a bucket share it first come, first
 * served.
 */
export class TokenBucket {
  #tat = 0; // theoretical arrival time (ms) at which everything booked has gone out
  constructor(
    readonly bytesPerSecond: number,
    readonly burstSeconds = 0.005,
  ) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`bytesPerSecond must be > 0, got ${bytesPerSecond}`);
  }

  /** Books n bytes; returns how many ms to wait before sending them (0: now). */
  take(n: number, now = performance.now()): number {
    if (!Number.isFinite(this.bytesPerSecond)) return 0;
    const start = Math.max(this.#tat, now);
    this.#tat = start + (n / this.bytesPerSecond) * 1000;
    return Math.max(0, this.#tat - now - this.burstSeconds * 1000);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function createLink(o: LinkOptions = {}): Link {
  const rate = o.bytesPerSecond ?? GIGABIT_BYTES_PER_SECOND;
  const upBucket = new TokenBucket(rate, o.burstSeconds);
  const downBucket = o.duplex === "half" ? upBucket : new TokenBucket(rate, o.burstSeconds);
  const relays = new Set<Relay>();
  const totals: LinkCounters = { up: 0, down: 0, connections: 0 };

  async function relay(targetHost: string, targetPort: number, listenPort = 0): Promise<Relay> {
    const own: LinkCounters = { up: 0, down: 0, connections: 0 };
    const sockets = new Set<Socket>();

    /** Pumps from → to through a bucket, counting into `dir`; ends `to` after the last byte. */
    const pump = (from: Socket, to: Socket, bucket: TokenBucket, dir: "up" | "down") => {
      let pending: Promise<void> = Promise.resolve();
      from.on("data", (chunk: Buffer) => {
        own[dir] += chunk.length;
        totals[dir] += chunk.length;
        const wait = bucket.take(chunk.length);
        if (wait <= 0) {
          if (!to.write(chunk)) {
            from.pause();
            to.once("drain", () => from.resume());
          }
          return;
        }
        // Hold the sender until the link has carried this chunk; order is kept because
        // a paused socket emits no more data until resumed.
        from.pause();
        pending = pending.then(async () => {
          if (wait > 0) await sleep(wait);
          if (to.destroyed) return;
          const ok = to.write(chunk);
          if (!ok) await new Promise<void>((r) => to.once("drain", r));
          from.resume();
        });
      });
      from.on("end", () => void pending.then(() => to.end()));
    };

    const server: Server = createServer({ noDelay: true, allowHalfOpen: true }, (client) => {
      own.connections++;
      totals.connections++;
      client.setNoDelay(true);
      const upstream = connect({ host: targetHost, port: targetPort, noDelay: true, allowHalfOpen: true });
      sockets.add(client);
      sockets.add(upstream);
      const done = () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      };
      client.on("error", done);
      upstream.on("error", done);
      client.on("close", () => (upstream.writableEnded ? done() : undefined));
      upstream.on("close", () => (client.writableEnded ? done() : undefined));
      client.pause();
      upstream.once("connect", () => client.resume());
      pump(client, upstream, upBucket, "up");
      pump(upstream, client, downBucket, "down");
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(listenPort, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    const port = (server.address() as { port: number }).port;
    const r: Relay = {
      port,
      target: { host: targetHost, port: targetPort },
      counters: () => ({ ...own }),
      async close() {
        relays.delete(r);
        for (const s of sockets) s.destroy();
        sockets.clear();
        await new Promise<void>((res) => server.close(() => res()));
      },
    };
    relays.add(r);
    return r;
  }

  return {
    bytesPerSecond: rate,
    relay,
    counters: () => ({ ...totals }),
    async close() {
      await Promise.all([...relays].map((r) => r.close()));
    },
  };
}

/** A free TCP port on 127.0.0.1 (for QEMU's migrate-incoming). */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Difference of two counter snapshots. */
export const diffCounters = (a: LinkCounters, b: LinkCounters): LinkCounters => ({ up: b.up - a.up, down: b.down - a.down, connections: b.connections - a.connections });
