/**
 * QMP client and serial console without QEMU: a fake QMP server on a unix socket (replies
 * out of order, late, or never; hangs up) and an in-memory duplex for the serial side.
 */
import { afterEach, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import {
  connectQmp,
  isQmpCommandError,
  isQmpConnectError,
  isQmpDisconnected,
  isQmpTimeout,
  isSerialClosed,
  isSerialTimeout,
  SerialConsole,
  type QmpClient,
} from "../../adapters/qemu/index.ts";

const greeting = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "fake" }, capabilities: ["oob"] } };
type Handler = (msg: { execute: string; id?: string; arguments?: Record<string, unknown> }, send: (o: object) => void, sock: Socket) => void;

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function fakeQmp(handler: Handler): Promise<{ path: string; server: Server }> {
  const dir = await mkdtemp(join(tmpdir(), "gw-qmp-"));
  const path = join(dir, "qmp.sock");
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    const send = (o: object) => sock.write(JSON.stringify(o) + "\r\n");
    send(greeting);
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.execute === "qmp_capabilities") send({ return: {}, id: msg.id });
        else handler(msg, send, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  });
  return { path, server };
}

async function client(path: string, opts = {}): Promise<QmpClient> {
  const c = await connectQmp(path, { timeoutMs: 2000, ...opts });
  cleanups.push(() => c.close());
  return c;
}

describe("QMP client (fake server)", () => {
  it("matches replies to commands by id, even out of order", async () => {
    const held: { id: string; send: (o: object) => void }[] = [];
    const { path } = await fakeQmp((msg, send) => {
      held.push({ id: msg.id!, send });
      if (held.length === 3) for (const h of held.reverse()) h.send({ return: { echo: h.id }, id: h.id });
    });
    const qmp = await client(path);
    expect(qmp.greeting.version.qemu.major).toBe(7);
    const replies = await Promise.all(["a", "b", "c"].map((c) => qmp.execute<{ echo: string }>(c)));
    expect(new Set(replies.map((r) => r.echo)).size).toBe(3);
  });

  it("turns a QMP error into a QmpCommandError with class and description", async () => {
    const { path } = await fakeQmp((msg, send) => send({ error: { class: "CommandNotFound", desc: `The command ${msg.execute} has not been found` }, id: msg.id }));
    const qmp = await client(path);
    const err = await qmp.execute("nope").catch((e: unknown) => e);
    expect(isQmpCommandError(err)).toBe(true);
    if (!isQmpCommandError(err)) return;
    expect(err.name).toBe("QmpCommandError");
    expect(err.errorClass).toBe("CommandNotFound");
    expect(err.command).toBe("nope");
  });

  it("times out a command that gets no reply, and ignores the late reply", async () => {
    let late: (() => void) | undefined;
    const { path } = await fakeQmp((msg, send) => {
      if (msg.execute === "slow") late = () => send({ return: "late", id: msg.id });
      else send({ return: "fast", id: msg.id });
    });
    const qmp = await client(path);
    const err = await qmp.execute("slow", undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(isQmpTimeout(err)).toBe(true);
    late!();
    expect(await qmp.execute("quick")).toBe("fast");
  });

  it("fails commands in flight with QmpDisconnectedError when the server hangs up; quit() counts that as done", async () => {
    const { path } = await fakeQmp((msg, _send, sock) => {
      if (msg.execute === "quit" || msg.execute === "hang") sock.destroy();
    });
    const qmp = await client(path);
    const err = await qmp.execute("hang").catch((e: unknown) => e);
    expect(isQmpDisconnected(err)).toBe(true);
    expect(await qmp.closed).toBeInstanceOf(Error);
    expect(isQmpDisconnected(await qmp.execute("after").catch((e: unknown) => e))).toBe(true);

    const q2 = await client(path);
    await expect(q2.quit()).resolves.toBeUndefined();
  });

  it("delivers events to each subscriber and to waitForEvent, filtered by data", async () => {
    const { path } = await fakeQmp((msg, send) => {
      send({ return: {}, id: msg.id });
      const ts = { seconds: 1, microseconds: 2 };
      send({ event: "MIGRATION", data: { status: "active" }, timestamp: ts });
      send({ event: "MIGRATION_PASS", data: { pass: 1 }, timestamp: ts });
      send({ event: "MIGRATION", data: { status: "completed" }, timestamp: ts });
    });
    const qmp = await client(path);
    const all = qmp.events();
    const done = qmp.waitForEvent("MIGRATION", { where: (d) => d.status === "completed", timeoutMs: 2000 });
    await qmp.execute("go");
    expect((await done).data.status).toBe("completed");
    const seen: string[] = [];
    for await (const e of all) {
      seen.push(e.event);
      if (seen.length === 3) break;
    }
    expect(seen).toEqual(["MIGRATION", "MIGRATION_PASS", "MIGRATION"]);
    const err = await qmp.waitForEvent("SHUTDOWN", { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(isQmpTimeout(err)).toBe(true);
  });

  it("retries while the socket is missing, then gives up with QmpConnectError", async () => {
    const dir = await mkdtemp(join(tmpdir(), "gw-qmp-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const t0 = Date.now();
    const err = await connectQmp(join(dir, "absent.sock"), { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(isQmpConnectError(err)).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const aborted = await connectQmp(join(dir, "absent.sock"), { timeoutMs: 5000, signal: ac.signal }).catch((e: unknown) => e);
    expect(isQmpConnectError(aborted)).toBe(true);
  });
});

/** A duplex whose reads are fed by `feed` and whose writes are collected. */
function fakeSerial() {
  const written: string[] = [];
  const stream = new Duplex({
    read() {},
    write(chunk, _enc, cb) {
      written.push(chunk.toString("latin1"));
      cb();
    },
  });
  return { stream, written, feed: (s: string) => stream.push(Buffer.from(s, "latin1")) };
}

describe("serial console", () => {
  it("finds a line printed before the wait, and never the same line twice", async () => {
    const { stream, feed } = fakeSerial();
    const serial = new SerialConsole(stream);
    feed("boot\r\nREADY pages=10\n");
    await new Promise((r) => setImmediate(r));
    expect((await serial.waitFor(/^READY pages=(\d+)/, 100))[1]).toBe("10");
    const err = await serial.waitFor(/^READY/, 50).catch((e: unknown) => e);
    expect(isSerialTimeout(err)).toBe(true);
    expect(String(err)).toContain("READY pages=10"); // shows what was printed
    expect(serial.history()).toEqual(["boot", "READY pages=10"]);
  });

  it("does not match a line still arriving unless asked; with partial it matches a prompt", async () => {
    const { stream, feed } = fakeSerial();
    const serial = new SerialConsole(stream);
    const wait = serial.waitFor(/first=(\d+)/, 1000);
    feed("READY first=5");
    await new Promise((r) => setTimeout(r, 20));
    feed("12\n");
    expect((await wait)[1]).toBe("512");
    const prompt = serial.waitFor(/^\/ # $/, 1000, { partial: true });
    feed("/ # ");
    await expect(prompt).resolves.toBeTruthy();
  });

  it("request() skips old output, sends, and waits for the answer; closing fails waits", async () => {
    const { stream, feed, written } = fakeSerial();
    const serial = new SerialConsole(stream);
    feed("VERIFY OK pages=1\n");
    await new Promise((r) => setImmediate(r));
    const answer = serial.request("v", /^VERIFY (OK|FAIL)/, 1000);
    await new Promise((r) => setImmediate(r));
    expect(written).toEqual(["v"]);
    feed("VERIFY FAIL 3 first=9\n");
    expect((await answer)[1]).toBe("FAIL");

    const lines = serial.lines();
    feed("one\ntwo\n");
    expect((await lines.next()).value).toBe("one");
    const pending = serial.waitFor(/never/, 5000);
    stream.push(null);
    stream.destroy();
    expect(isSerialClosed(await pending.catch((e: unknown) => e))).toBe(true);
    expect(isSerialClosed(await serial.send("x").catch((e: unknown) => e))).toBe(true);
  });
});
