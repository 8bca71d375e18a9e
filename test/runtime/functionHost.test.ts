/**
 * The function runtime against a real nats-server: exactly-once effect with two instances
 * and duplicate publishes, dead letters for malformed events, for a handler that keeps
 * failing (after its retries) and for one that says retrying cannot help (at once),
 * redelivery after a crash,
 * and the audit stream read back in order.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { startTestNats, eventually } from "../helpers/nats.ts";
import { durableName, serveFunction } from "../../infra/runtime/functionHost.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { encodeStructured } from "../../infra/events/binding.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { plan, inventory } from "../../functions/index.ts";
import { hostInventory, migrationRequested, migrationPlanned, deadLetter } from "../../schemas/index.ts";
import { NonRetriableError, type FunctionDefinition } from "../../kit/index.ts";

const GiB = 1024 ** 3;

async function seedInventory(pub: ReturnType<typeof createPublisher>) {
  // Two VMs per migration of the test: a VM is claimed by one migration at a time.
  const vms = Array.from({ length: 40 }, (_, i) => ({ vm: `vm${i}`, tenant: "acme", memoryBytes: 64 * 1024 * 1024, state: "running" as const }));
  await pub.publish(hostInventory, { host: "hostA" }, { host: "hostA", memoryTotalBytes: 8 * GiB, memoryFreeBytes: 4 * GiB, vms });
  await pub.publish(hostInventory, { host: "hostB" }, { host: "hostB", memoryTotalBytes: 8 * GiB, memoryFreeBytes: 6 * GiB, vms: [] });
  await pub.publish(hostInventory, { host: "hostC" }, { host: "hostC", memoryTotalBytes: 8 * GiB, memoryFreeBytes: 0.5 * GiB, vms: [] });
}

async function countPlanned(nc: Parameters<typeof readEvents>[0]) {
  const perMigration = new Map<string, number>();
  for await (const e of readEvents(nc, { filter: "gw.migration.*.planned" })) {
    if (!e.result.ok) continue;
    const id = (e.result.event.data as { migrationId: string }).migrationId;
    perMigration.set(id, (perMigration.get(id) ?? 0) + 1);
  }
  return perMigration;
}

/** Serves `fn`, publishes host bad's inventory, and waits for its dead letter. */
async function badHostDeadLettered(fn: FunctionDefinition, nc: Parameters<typeof serveFunction>[1]) {
  const served = await serveFunction(fn, nc);
  const pub = createPublisher(jetstream(nc), "test");
  await pub.publish(hostInventory, { host: "bad" }, { host: "bad", memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
  const [letter] = await eventually(async () => {
    const l = await deadLetters(nc, "gw.dlq.host");
    return l.length > 0 ? l : undefined;
  }, 20_000, "the dead letter of host bad");
  return { served, pub, letter };
}

describe("function runtime (real nats-server)", () => {
  it("two instances handle each event exactly once in effect, even when it is published twice", async () => {
    await using nats = await startTestNats();
    const ncA = await nats.connect("instance-a");
    const ncB = await nats.connect("instance-b");
    const inv = await serveFunction(inventory as unknown as FunctionDefinition, ncA, { instanceId: "a" });
    const a = await serveFunction(plan as unknown as FunctionDefinition, ncA, { instanceId: "a" });
    const b = await serveFunction(plan as unknown as FunctionDefinition, ncB, { instanceId: "b" });
    const pub = createPublisher(jetstream(nats.nc), "test");
    await seedInventory(pub);
    await eventually(async () => (await readAll(nats.nc, "gw.host.*.inventory")).length === 3, 5000, "inventory");
    await handledAll(nats.nc, "inventory"); // the inventory function stored all three

    const js = jetstream(nats.nc);
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const migrationId = `mig-${i}`;
      ids.push(migrationId);
      const msg = encodeStructured(migrationRequested, { migrationId }, { migrationId, vms: [`vm${2 * i}`, `vm${2 * i + 1}`], sourceHost: "hostA", requestedBy: "test" }, { source: "test", id: randomUUID() });
      // Same CloudEvent twice, without a JetStream message id: the stream keeps both copies,
      // so only the runtime's idempotency stands between them and a double plan.
      await js.publish(msg.subject, msg.payload, { headers: msg.headers });
      await js.publish(msg.subject, msg.payload, { headers: msg.headers });
    }
    const counts = await eventually(async () => {
      const c = await countPlanned(nats.nc);
      return c.size === 20 ? c : undefined;
    }, 20_000, "20 planned events");
    // Every copy of every request handled (acked by one instance or the other): a late
    // duplicate would have been planned by now.
    await handledAll(nats.nc, "plan", 20_000);
    const final = await countPlanned(nats.nc);
    expect([...final.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids) expect(final.get(id), id).toBe(1);
    // The free-memory rule chose hostB (6 GiB free) over hostC (0.5 GiB, too small).
    for await (const e of readEvents(nats.nc, { filter: "gw.migration.mig-3.planned" })) {
      expect(e.result.ok && (e.result.event.data as { targetHost: string }).targetHost).toBe("hostB");
    }
    expect(counts.size).toBe(20);
    await Promise.all([a.stop(), b.stop(), inv.stop()]);
  });

  it("a malformed event lands in the dead-letter subject with a readable reason, and serving goes on", async () => {
    await using nats = await startTestNats();
    const inv = await serveFunction(inventory as unknown as FunctionDefinition, nats.nc, { instanceId: "a" });
    const p = await serveFunction(plan as unknown as FunctionDefinition, nats.nc, { instanceId: "a" });
    const js = jetstream(nats.nc);
    const pub = createPublisher(js, "test");
    await seedInventory(pub);

    const structured = () => {
      const h = headers();
      h.set("Content-Type", "application/cloudevents+json");
      return h;
    };
    const base = { specversion: "1.0", source: "test", time: new Date().toISOString() };
    // 1: not JSON at all
    await js.publish("gw.migration.bad1.requested", new TextEncoder().encode("{not json"), { headers: structured() });
    // 2: wrong types in data
    await js.publish("gw.migration.bad2.requested", new TextEncoder().encode(JSON.stringify({ ...base, id: "e2", type: "io.gangway.migration.requested.v1", data: { migrationId: "bad2", vms: "vm0", sourceHost: 7, requestedBy: "x" } })), { headers: structured() });
    // 3: an unknown version of a known type
    await js.publish("gw.migration.bad3.requested", new TextEncoder().encode(JSON.stringify({ ...base, id: "e3", type: "io.gangway.migration.requested.v9", data: {} })), { headers: structured() });
    // then a good one: the function must still serve
    await pub.publish(migrationRequested, { migrationId: "good" }, { migrationId: "good", vms: ["vm0"], sourceHost: "hostA", targetHost: "hostB", requestedBy: "test" });

    const letters = await eventually(async () => {
      const out = [];
      for await (const e of readEvents(nats.nc, { filter: "gw.dlq.>" })) if (e.result.ok) out.push(e.result.event.data as ReturnType<typeof deadLetter.data.parse>);
      return out.length >= 3 ? out : undefined;
    }, 15_000, "three dead letters");
    const bySubject = new Map(letters.map((l) => [l.originalSubject, l]));
    expect(bySubject.get("gw.migration.bad1.requested")?.reason).toMatch(/not JSON/);
    const r2 = bySubject.get("gw.migration.bad2.requested")?.reason ?? "";
    expect(r2).toMatch(/vms: /);
    expect(r2).toMatch(/sourceHost: /);
    expect(bySubject.get("gw.migration.bad3.requested")?.reason).toMatch(/unknown event type io\.gangway\.migration\.requested\.v9/);
    expect(Buffer.from(bySubject.get("gw.migration.bad1.requested")!.original, "base64").toString()).toBe("{not json");
    for (const l of letters) expect(l.family).toBe("migration");

    await eventually(async () => (await countPlanned(nats.nc)).get("good") === 1, 10_000, "the good event planned");
    await Promise.all([p.stop(), inv.stop()]);
  });

  it("a handler that keeps failing: retried with backoff, dead-lettered with its last error after maxAttempts, and serving goes on", async () => {
    await using nats = await startTestNats();
    const attempts = new Map<string, number[]>();
    const fn: FunctionDefinition = {
      id: "fails-on-bad", description: "throws for host bad, every time", trigger: hostInventory, exclusive: true, retry: { maxAttempts: 3, backoffMs: 100 },
      async handler(event, ctx) {
        const host = (event.data as { host: string }).host;
        attempts.set(host, [...(attempts.get(host) ?? []), ctx.attempt]);
        if (host === "bad") throw new Error(`boom on attempt ${ctx.attempt}`);
      },
    };
    const { served, pub, letter } = await badHostDeadLettered(fn, nats.nc);
    expect(letter!.function).toBe("fails-on-bad");
    expect(letter!.family).toBe("host");
    expect(letter!.originalSubject).toBe("gw.host.bad.inventory");
    expect(letter!.reason).toBe("fails-on-bad failed 3 times; last error: boom on attempt 3");
    expect(letter!.deliveryCount).toBe(3);
    // Serving goes on; the dead-lettered event is not tried a fourth time.
    await pub.publish(hostInventory, { host: "good" }, { host: "good", memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
    await eventually(() => attempts.has("good") || undefined, 10_000, "the next event handled");
    expect(attempts.get("bad")).toEqual([1, 2, 3]);
    expect(attempts.get("good")).toEqual([1]);
    expect(await deadLetters(nats.nc, "gw.dlq.>")).toHaveLength(1);
    await served.stop();
  });

  it("a NonRetriableError is dead-lettered at once, with its message, and not retried", async () => {
    await using nats = await startTestNats();
    const attempts: number[] = [];
    let good = 0;
    const fn: FunctionDefinition = {
      id: "refuses", description: "refuses host bad", trigger: hostInventory, exclusive: true, retry: { maxAttempts: 5, backoffMs: 100 },
      async handler(event, ctx) {
        if ((event.data as { host: string }).host !== "bad") return void good++;
        attempts.push(ctx.attempt);
        throw new NonRetriableError("host bad asks for the impossible");
      },
    };
    const { served, pub, letter } = await badHostDeadLettered(fn, nats.nc);
    expect(letter).toMatchObject({ function: "refuses", family: "host", originalSubject: "gw.host.bad.inventory", reason: "refuses: host bad asks for the impossible", deliveryCount: 1 });
    await pub.publish(hostInventory, { host: "good" }, { host: "good", memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
    await eventually(() => good === 1 || undefined, 10_000, "the next event handled");
    expect(attempts).toEqual([1]);
    expect(await deadLetters(nats.nc, "gw.dlq.>")).toHaveLength(1);
    await served.stop();
  });

  it("an instance killed mid-event: the event is redelivered and completes on the other instance", async () => {
    await using nats = await startTestNats();
    const pub = createPublisher(jetstream(nats.nc), "test");
    const inv = await serveFunction(inventory as unknown as FunctionDefinition, nats.nc, { instanceId: "inv" });
    await seedInventory(pub);

    // Instance A runs in its own process and stalls inside the handler until it is killed.
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/stallingPlanInstance.ts", nats.url], { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      let out = "";
      child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
      await eventually(() => out.includes("SERVING"), 20_000, "child instance serving");
      await pub.publish(migrationRequested, { migrationId: "crash" }, { migrationId: "crash", vms: ["vm1"], sourceHost: "hostA", targetHost: "hostB", requestedBy: "test" });
      await eventually(() => out.includes("HANDLING"), 10_000, "child handling the event");
      child.kill("SIGKILL");
      await exited;
    } finally {
      child.kill("SIGKILL");
    }
    // Instance B: the same function id, so the same durable consumer.
    const b = await serveFunction(plan as unknown as FunctionDefinition, nats.nc, { instanceId: "b", ackWaitMs: 1500 });
    const planned = await eventually(async () => {
      for await (const e of readEvents(nats.nc, { filter: "gw.migration.crash.planned" })) if (e.result.ok) return e;
      return undefined;
    }, 20_000, "planned after redelivery");
    expect(planned.result.ok && planned.result.event.source).toBe("gangway/function/plan");
    expect((await countPlanned(nats.nc)).get("crash")).toBe(1);
    await Promise.all([b.stop(), inv.stop()]);
  });

  it("the events of a finished flow read back in order from the audit stream", async () => {
    await using nats = await startTestNats();
    const inv = await serveFunction(inventory as unknown as FunctionDefinition, nats.nc);
    const p = await serveFunction(plan as unknown as FunctionDefinition, nats.nc);
    const pub = createPublisher(jetstream(nats.nc), "test");
    await seedInventory(pub);
    await handledAll(nats.nc, "inventory");
    await pub.publish(migrationRequested, { migrationId: "flow" }, { migrationId: "flow", vms: ["vm2", "vm3"], sourceHost: "hostA", requestedBy: "test" });
    await eventually(async () => (await countPlanned(nats.nc)).get("flow") === 1, 10_000, "planned");

    const all = await readAll(nats.nc, "gw.>");
    const types = all.map((e) => (e.result.ok ? e.result.event.type : "invalid"));
    expect(types).toEqual([
      "io.gangway.host.inventory.v1",
      "io.gangway.host.inventory.v1",
      "io.gangway.host.inventory.v1",
      "io.gangway.migration.requested.v1",
      "io.gangway.migration.planned.v1",
    ]);
    const seqs = all.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    const plannedEvent = all[4]!.result;
    expect(plannedEvent.ok && plannedEvent.definition).toBe(migrationPlanned);
    if (plannedEvent.ok) {
      expect(plannedEvent.event.subject).toBe("migration/flow");
      expect(plannedEvent.event.data).toMatchObject({ targetHost: "hostB", vms: [{ vm: "vm2" }, { vm: "vm3" }] });
    }
    await Promise.all([p.stop(), inv.stop()]);
  });

  it("a handler that never finishes is given up: its event is redelivered and the events behind it flow", async () => {
    await using nats = await startTestNats();
    const handled: string[] = [];
    let hung = 0;
    const fn: FunctionDefinition = {
      id: "hangs-once", description: "hangs on the first delivery of h0", trigger: hostInventory, exclusive: true,
      async handler(event) {
        const host = (event.data as { host: string }).host;
        if (host === "h0" && hung++ === 0) await new Promise(() => undefined); // never settles
        handled.push(host);
      },
    };
    const served = await serveFunction(fn, nats.nc, { handlerTimeoutMs: 1500 });
    const pub = createPublisher(jetstream(nats.nc), "test");
    for (const host of ["h0", "h1", "h2"]) await pub.publish(hostInventory, { host }, { host, memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
    await eventually(() => handled.length === 3, 20_000, `all three handled (so far: ${handled.join(",")})`);
    expect(hung).toBe(2);
    expect([...handled].sort()).toEqual(["h0", "h1", "h2"]);
    await served.stop();
  });

  it("keeps consuming across a server pause longer than its quiet limit", async () => {
    await using nats = await startTestNats();
    const handled: string[] = [];
    const fn: FunctionDefinition = {
      id: "records", description: "records hosts", trigger: hostInventory,
      async handler(event) {
        handled.push((event.data as { host: string }).host);
      },
    };
    const served = await serveFunction(fn, nats.nc);
    const pub = createPublisher(jetstream(await nats.connect("publisher")), "test");
    await pub.publish(hostInventory, { host: "before" }, { host: "before", memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
    await eventually(() => handled.length === 1, 10_000, "the first event");
    nats.server.signal("SIGSTOP");
    await new Promise((r) => setTimeout(r, 5000));
    nats.server.signal("SIGCONT");
    await pub.publish(hostInventory, { host: "after" }, { host: "after", memoryTotalBytes: GiB, memoryFreeBytes: GiB, vms: [] });
    await eventually(() => handled.length === 2, 20_000, "the event after the pause");
    expect(handled).toEqual(["before", "after"]);
    await served.stop();
  });
});

/** Until function `fnId`'s durable consumer has nothing pending or unacknowledged: every event it was given is handled. */
async function handledAll(nc: Parameters<typeof readEvents>[0], fnId: string, timeoutMs = 10_000) {
  const jsm = await jetstreamManager(nc);
  await eventually(async () => {
    const ci = await jsm.consumers.info(EVENTS_STREAM, durableName(fnId)).catch(() => undefined);
    return (ci && ci.num_pending === 0 && ci.num_ack_pending === 0 && ci.delivered.stream_seq > 0) || undefined;
  }, timeoutMs, `function ${fnId} handled every event it was given`);
}

async function deadLetters(nc: Parameters<typeof readEvents>[0], filter: string) {
  const out: ReturnType<typeof deadLetter.data.parse>[] = [];
  for await (const e of readEvents(nc, { filter })) if (e.result.ok) out.push(e.result.event.data as ReturnType<typeof deadLetter.data.parse>);
  return out;
}

async function readAll(nc: Parameters<typeof readEvents>[0], filter: string) {
  const out = [];
  for await (const e of readEvents(nc, { filter })) out.push(e);
  return out;
}
