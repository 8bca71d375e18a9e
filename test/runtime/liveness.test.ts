/**
 * Liveness that tells busy from dead, against a real nats-server: an agent whose main
 * thread is busy for seconds stays alive (its worker answers); one whose agent is gone is
 * given up within seconds; one that is there but silent is suspected first and given up only
 * after the silence limit; a main thread stuck past the limit counts as silent.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { startHostLiveness, type HostLiveness } from "../../adapters/host/hostLiveness.ts";
import type { Verdict } from "../../adapters/host/liveness.ts";
import { createLogger } from "../../infra/log.ts";

let nats: TestNats;
const log = createLogger({}, () => undefined);
const status = () => ({ uptimeSec: 1, vms: 0, migrations: 0 });
/** Blocks this thread, as a long synchronous step of the data path does. */
const busy = (ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until) Math.sqrt(Math.random());
};
const settled = <T,>(p: Promise<T>) => Promise.race([p.then((v) => ({ v })), new Promise<"pending">((r) => setTimeout(() => r("pending"), 50))]);

beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => {
  await nats[Symbol.asyncDispose]();
});

const start = (host: string, thresholds = {}) => startHostLiveness({ host, nc: nats.nc, connect: { servers: nats.url, name: host }, thresholds, status, log });

describe("host liveness", () => {
  it("runs in a worker thread when it can connect on its own", async () => {
    const a = await start("lvA0");
    expect(a.where).toBe("worker");
    await a.close();
  });

  it("a peer whose main thread is busy for 6 s is not given up", async () => {
    const [a, b] = await Promise.all([start("lvA1"), start("lvB1")]);
    const verdicts: Verdict[] = [];
    let end!: () => void;
    const until = new Promise<void>((r) => (end = r));
    const watch = a.watch("lvB1", until, (v) => verdicts.push(v));
    await new Promise((r) => setTimeout(r, 1500));
    // Both agents share this thread here: the watcher is starved too, and must still not conclude.
    busy(6000);
    await new Promise((r) => setTimeout(r, 2500));
    expect(await settled(watch)).toBe("pending");
    expect(verdicts.filter((v) => v.state === "dead")).toEqual([]);
    end();
    expect(await watch).toBeUndefined();
    await Promise.all([a.close(), b.close()]);
  }, 30_000);

  it("a peer whose agent is gone (no responder) is given up within seconds", async () => {
    const [a, b] = await Promise.all([start("lvA2", { goneAfterMs: 2000 }), start("lvB2")]);
    const watch = a.watch("lvB2", new Promise(() => undefined));
    await new Promise((r) => setTimeout(r, 1500));
    expect(await settled(watch)).toBe("pending");
    const closedAt = Date.now();
    await b.close();
    const reason = await watch;
    expect(reason).toMatch(/lvB2 stopped answering \(no agent subscribed/);
    expect(Date.now() - closedAt).toBeLessThan(10_000);
    await a.close();
  }, 30_000);

  it("a peer that is there but does not answer is suspected first, then given up after the silence limit", async () => {
    const a = await start("lvA3", { silentAfterMs: 4000, pingTimeoutMs: 500 });
    // Subscribed (so not gone) but never answering: a frozen process keeps its connection.
    const frozen = nats.nc.subscribe("gwsvc.agent.lvB3.status", { callback: () => undefined });
    const verdicts: (Verdict & { at: number })[] = [];
    const t0 = Date.now();
    const reason = await a.watch("lvB3", new Promise(() => undefined), (v) => verdicts.push({ ...v, at: Date.now() }));
    expect(verdicts[0]!.state).toBe("suspect");
    expect(verdicts[0]!.reason).toMatch(/lvB3 is slow to answer/);
    expect(verdicts.at(-1)!.state).toBe("dead");
    expect(reason).toMatch(/lvB3 stopped answering \(silent for/);
    // The suspicion came well before the verdict.
    expect(verdicts.at(-1)!.at - verdicts[0]!.at).toBeGreaterThanOrEqual(2500);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(4000);
    frozen.unsubscribe();
    await a.close();
  }, 30_000);

  it("a suspected peer that answers again is said to, and not given up", async () => {
    const a = await start("lvA4", { silentAfterMs: 20_000, pingTimeoutMs: 500 });
    const frozen = nats.nc.subscribe("gwsvc.agent.lvB4.status", { callback: () => undefined });
    const verdicts: Verdict[] = [];
    let end!: () => void;
    const watch = a.watch("lvB4", new Promise<void>((r) => (end = r)), (v) => verdicts.push(v));
    await new Promise((r) => setTimeout(r, 3000));
    frozen.unsubscribe();
    const b = await start("lvB4");
    await new Promise((r) => setTimeout(r, 3000));
    expect(verdicts.map((v) => v.state)).toEqual(["suspect", "alive"]);
    end();
    expect(await watch).toBeUndefined();
    await Promise.all([a.close(), b.close()]);
  }, 30_000);

  it("liveness embedded in the agent's thread (no connection of its own) still answers and watches", async () => {
    const a: HostLiveness = await startHostLiveness({ host: "lvA5", nc: nats.nc, thresholds: { goneAfterMs: 1500 }, status, log });
    const b = await start("lvB5");
    expect(a.where).toBe("main thread");
    const watch = a.watch("lvB5", new Promise(() => undefined));
    await new Promise((r) => setTimeout(r, 1500));
    await b.close();
    expect(await watch).toMatch(/lvB5 stopped answering/);
    await a.close();
  }, 30_000);
});
