/** The benchmark's shaped link: it limits the rate it is given, shares it, and counts every byte. */
import { createHash, randomBytes } from "node:crypto";
import { createServer, connect, type Server } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { createLink, TokenBucket, type Link } from "../../bench/shaper.ts";

/** A sink that hashes what it receives and, at the end, replies with `reply` bytes. */
async function sink(reply: number): Promise<{ server: Server; port: number; received: Promise<{ bytes: number; sha: string }>[] }> {
  const received: Promise<{ bytes: number; sha: string }>[] = [];
  const server = createServer((s) => {
    received.push(
      new Promise((resolve) => {
        const h = createHash("sha256");
        let bytes = 0;
        s.on("data", (d: Buffer) => {
          bytes += d.length;
          h.update(d);
        });
        s.on("end", () => {
          s.end(Buffer.alloc(reply, 7));
          resolve({ bytes, sha: h.digest("hex") });
        });
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as { port: number }).port, received };
}

/** Sends `data` through port, half-closes, and resolves with the bytes of the reply. */
function send(port: number, data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = connect({ host: "127.0.0.1", port });
    let got = 0;
    c.on("data", (d: Buffer) => (got += d.length));
    c.on("end", () => resolve(got));
    c.on("error", reject);
    c.end(data);
  });
}

let link: Link | undefined;
let server: Server | undefined;
afterEach(async () => {
  await link?.close();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  link = undefined;
  server = undefined;
});

describe("TokenBucket", () => {
  it("books bytes at the rate after a burst", () => {
    const b = new TokenBucket(1_000_000, 0.01); // 1 MB/s, 10 ms burst
    expect(b.take(10_000, 0)).toBe(0); // 10 ms of traffic: within the burst
    expect(b.take(10_000, 0)).toBeCloseTo(10, 6); // the next 10 ms must wait 10 ms
    expect(b.take(1_000, 1000)).toBe(0); // idle time refills
  });
  it("never limits an infinite rate", () => {
    const b = new TokenBucket(Infinity);
    expect(b.take(1e12, 0)).toBe(0);
  });
});

describe("shaped link", () => {
  it("carries bytes intact, counts both directions, and keeps to its rate", async () => {
    const s = await sink(12_345);
    server = s.server;
    link = createLink({ bytesPerSecond: 20e6 });
    const r = await link.relay("127.0.0.1", s.port);
    const data = randomBytes(8_000_000);
    const t0 = performance.now();
    const replied = await send(r.port, data);
    const seconds = (performance.now() - t0) / 1000;
    const got = await s.received[0]!;
    expect(got.bytes).toBe(data.length);
    expect(got.sha).toBe(createHash("sha256").update(data).digest("hex"));
    expect(replied).toBe(12_345);
    expect(r.counters()).toEqual({ up: data.length, down: 12_345, connections: 1 });
    expect(link.counters()).toEqual({ up: data.length, down: 12_345, connections: 1 });
    // 8 MB at 20 MB/s = 0.4 s: never faster; slower only by what a loaded machine adds.
    expect(seconds).toBeGreaterThan(0.4 * 0.85);
    expect(seconds).toBeLessThan(0.4 * 6);
  });

  it("shares one rate between connections and relays", async () => {
    const s = await sink(0);
    server = s.server;
    link = createLink({ bytesPerSecond: 20e6 });
    const [a, b] = await Promise.all([link.relay("127.0.0.1", s.port), link.relay("127.0.0.1", s.port)]);
    const t0 = performance.now();
    await Promise.all([send(a.port, randomBytes(3_000_000)), send(a.port, randomBytes(3_000_000)), send(b.port, randomBytes(2_000_000))]);
    const seconds = (performance.now() - t0) / 1000;
    expect(link.counters()).toEqual({ up: 8_000_000, down: 0, connections: 3 });
    expect(a.counters().up).toBe(6_000_000);
    expect(b.counters().up).toBe(2_000_000);
    expect(seconds).toBeGreaterThan(0.4 * 0.85);
    expect(seconds).toBeLessThan(0.4 * 6);
  });

  it("counts without limiting at an infinite rate", async () => {
    const s = await sink(1);
    server = s.server;
    link = createLink({ bytesPerSecond: Infinity });
    const r = await link.relay("127.0.0.1", s.port);
    expect(await send(r.port, randomBytes(1_000_000))).toBe(1);
    expect(r.counters()).toEqual({ up: 1_000_000, down: 1, connections: 1 });
  });
});
