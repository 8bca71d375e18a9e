/**
 * Writing a stream into a destination QEMU that drops the connection part-way (QEMU quits
 * its load on a stream it refuses): the writer fails with a connection error at once, at any
 * point of the stream, never waiting for a flush that cannot come.
 */
import { describe, expect, it } from "vitest";
import { createServer, type Socket } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeToDestination, DestinationConnectionError } from "../../adapters/qemu/destinationProxy.ts";
import type { StreamRecord } from "../../adapters/qemu/stream/records.ts";
import { batch, head, page, ramEnd, ramPart, ramStart } from "./helpers/synthetic.ts";

/** A listener that reads `readBytes` of the stream, then closes the connection. */
async function fakeQemu(path: string, readBytes: number): Promise<{ close(): Promise<void> }> {
  const sockets: Socket[] = [];
  const server = createServer((s) => {
    sockets.push(s);
    let got = 0;
    s.on("data", (d: Buffer) => {
      got += d.byteLength;
      if (got >= readBytes) s.destroy();
    });
    s.on("error", () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { close: () => new Promise<void>((r) => { sockets.forEach((s) => s.destroy()); server.close(() => r()); }) };
}

async function* stream(pauseMs: number): AsyncGenerator<StreamRecord> {
  yield* head();
  yield* ramStart();
  for (let round = 1; round <= 4; round++) {
    // Slow record by record, as a destination waiting on its manifest: the close lands between writes.
    await new Promise((r) => setTimeout(r, pauseMs));
    yield* ramPart(batch("m0", Array.from({ length: 64 }, (_, i) => [i * 4096, page(round * 100 + i)] as [number, Buffer]), round));
  }
  yield* ramEnd();
  yield { type: "eof", offset: 0 };
}

/** The head, a pause in which QEMU drops the connection, the end of the stream, and a pause
 * after it (the manifest reader closing its consumer), as a destination's record stream ends. */
async function* endsAfterTheDrop(): AsyncGenerator<StreamRecord> {
  try {
    yield* head();
    await new Promise((r) => setTimeout(r, 100));
    yield { type: "eof", offset: 0 };
  } finally {
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("writeToDestination against a QEMU that drops the connection", () => {
  it("dropped just before the end of the stream: fails at once, does not wait for a flush", async () => {
    const dir = await mkdtemp(join(tmpdir(), "gw-dp-"));
    const path = join(dir, "in.sock");
    const qemu = await fakeQemu(path, 1);
    try {
      const outcome = await Promise.race([
        writeToDestination(endsAfterTheDrop(), { socketPath: path }).then(() => "written", (e: unknown) => e),
        new Promise((r) => setTimeout(() => r("still waiting after 5 s"), 5000)),
      ]);
      expect(outcome).toBeInstanceOf(DestinationConnectionError);
    } finally {
      await qemu.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  // The stream is ~1.05 MB: a close must leave more unwritten than the kernel's socket buffers
  // hold, or a writer with no pause between records has legitimately written it all.
  for (const [readBytes, pauseMs] of [[1, 0], [1, 50], [300_000, 50], [1_000_000, 50], [600_000, 0]] as const) {
    it(`closed after ${readBytes} bytes (records ${pauseMs} ms apart): fails at once with a connection error`, async () => {
      const dir = await mkdtemp(join(tmpdir(), "gw-dp-"));
      const path = join(dir, "in.sock");
      const qemu = await fakeQemu(path, readBytes);
      try {
        const t0 = Date.now();
        const outcome = await Promise.race([
          writeToDestination(stream(pauseMs), { socketPath: path }).then(() => "written", (e: unknown) => e),
          new Promise((r) => setTimeout(() => r("still waiting after 5 s"), 5000)),
        ]);
        expect(outcome).toBeInstanceOf(DestinationConnectionError);
        expect(Date.now() - t0).toBeLessThan(5000);
      } finally {
        await qemu.close();
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});

describe("writeToDestination against a QEMU that stops reading", () => {
  it("gives up after stallTimeoutMs with a connection error that says so", async () => {
    const dir = await mkdtemp(join(tmpdir(), "gw-dp-"));
    const path = join(dir, "in.sock");
    const sockets: Socket[] = [];
    // Accepts, reads nothing: the kernel buffers fill and the writer waits for a drain.
    const server = createServer({ pauseOnConnect: true }, (s) => {
      sockets.push(s);
      s.on("error", () => undefined);
    });
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const t0 = Date.now();
      const outcome = await writeToDestination(stream(0), { socketPath: path, stallTimeoutMs: 300 }).then(() => "written", (e: unknown) => e);
      expect(outcome).toBeInstanceOf(DestinationConnectionError);
      expect((outcome as Error).message).toMatch(/took no data for|did not take the end/);
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise<void>((r) => server.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    }
  });
});
