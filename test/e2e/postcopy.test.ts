/**
 * Hybrid pre/post-copy end to end (real QEMU, real nats-server): a guest that dirties memory
 * faster than gangway's pipeline carries it never converges in pre-copy. Without post-copy
 * the dirty log gives up and the source runs on; with it, the VM switches to post-copy,
 * runs at the destination while its remaining pages are faulted in, and verifies there.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { execFileSync } from "node:child_process";
import { eventually, startTestNats, type TestNats } from "../helpers/nats.ts";
import { hostVms, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, waitForScans, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { pageRequested } from "../../schemas/index.ts";
import type { z } from "zod";
import { requireQemu10 } from "../helpers/qemu10.ts";

let nats: TestNats;
let work: string;
let procs: GangwayProcess[];

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gangway-pc-"));
  procs = [];
});

afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  // A source killed with its agent leaves its RAM file (an agent of that host would reclaim it on restart).
  for (const f of await readdir("/dev/shm")) if (/^gangway-p[clfrqv][AB]-/.test(f)) await rm(join("/dev/shm", f), { force: true });
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

/** A QEMU that ends after the outcome (a source once its post-copy is done, a destination after a rollback) leaves its host's next inventory. */
const vmGone = (host: string, vm: string) => eventually(async () => !(await hostVms(nats.nc, host)).has(vm) || undefined, 30_000, `${vm} gone from ${host}'s inventory`);

async function eventsOf(migrationId: string, filter = `gw.*.${migrationId}.>`) {
  const out: { type: string; id: string; data: Record<string, unknown> }[] = [];
  for await (const e of readEvents(nats.nc, { filter })) if (e.result.ok && e.result.event.mode === "structured") out.push({ type: e.result.event.type, id: e.result.event.id, data: e.result.event.data as Record<string, unknown> });
  return out;
}

/** A 96 MiB guest rewriting thousands of pages/s (~12 MB/s under TCG) ... */
const hot = (name: string, seed: number) => testGuestSpec(name, { memoryMiB: 96, seed, rate: 5000 });
/** ... over a link capped at 8 MB/s (virsh --bandwidth): pre-copy cannot catch up. */
const LINK = { bandwidthMBps: 8, maxRounds: 2 };

describe("hybrid pre/post-copy (real QEMU)", () => {
  it("a guest that never converges: pre-copy alone gives up and the source runs on; with post-copy it moves, faults its pages in, and verifies", async () => {
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "pcA", work), await startAgentProcess(nats.url, "pcB", work));
    await startVms(nats.nc, "pcA", [hot("hot1", 5)]);

    // 1. Pre-copy only, two rounds at most: the dirty log aborts, the source is authoritative.
    const pre = await migrateGang({ nc: nats.nc, vms: ["hot1"], sourceHost: "pcA", targetHost: "pcB", options: { ...LINK, postcopy: false, autoConverge: true, autoConvergeMaxPercent: 40 } });
    expect(pre.outcome).toBe("failed");
    expect(pre.reason).toMatch(/did not converge/);
    expect(await verifyGuest(nats.nc, "pcA", "hot1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    await vmGone("pcB", "hot1");
    // Auto-converge throttled the guest within its bound.
    const preRounds = (await eventsOf(pre.migrationId)).filter((e) => e.type === "io.gangway.dirty.round.v1");
    expect(preRounds.length).toBeGreaterThan(0);
    for (const r of preRounds) expect(r.data.cpuThrottlePercent as number).toBeLessThanOrEqual(40);

    // 2. Post-copy allowed: every fault request is also injected a second time (a retried or
    // replayed request); no page may reach the destination QEMU twice.
    const migrationId = newMigrationId();
    const pub = createPublisher(jetstream(nats.nc), "test/duplicator");
    const seen = new Set<string>();
    let injected = 0;
    const stopDuplicating = { stop: false };
    const duplicator = (async () => {
      while (!stopDuplicating.stop) {
        for (const e of await eventsOf(migrationId, `gw.page.${migrationId}.requested`)) {
          if (seen.has(e.id) || e.id.startsWith("dup-")) continue;
          seen.add(e.id);
          await pub.publish(pageRequested, { migrationId }, e.data as z.input<typeof pageRequested.data>, { id: `dup-${e.id}` });
          injected++;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    const s = await migrateGang({ nc: nats.nc, vms: ["hot1"], sourceHost: "pcA", targetHost: "pcB", migrationId, options: { ...LINK, postcopy: true } });
    stopDuplicating.stop = true;
    await duplicator;
    expect(s.outcome, s.reason).toBe("succeeded");
    expect(s.vms[0]!.mode).toBe("PostCopy");
    expect(await verifyGuest(nats.nc, "pcB", "hot1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    await vmGone("pcA", "hot1");

    const events = await eventsOf(migrationId);
    const switchover = events.find((e) => e.type === "io.gangway.migration.switchover.v1")!;
    expect(switchover.data).toMatchObject({ mode: "post-copy" });
    expect(String(switchover.data.reason)).toMatch(/rounds|shrinking|budget/);
    const rounds = events.filter((e) => e.type === "io.gangway.dirty.round.v1");
    expect(rounds.length).toBeGreaterThanOrEqual(1);
    const resumed = events.find((e) => e.type === "io.gangway.commit.resumed.v1")!;
    const pc = resumed.data.postcopy as { pagesAfterSwitchover: number; duplicatesDropped: number };
    expect(pc.pagesAfterSwitchover).toBeGreaterThan(0);
    // Faults were served, and every injected copy asked for nothing.
    const requests = events.filter((e) => e.type === "io.gangway.page.requested.v1");
    const served = events.filter((e) => e.type === "io.gangway.page.served.v1");
    console.log(`post-copy: ${rounds.length} rounds, ${requests.length} fault events (${injected} injected copies), ${served.length} served reports, ${pc.pagesAfterSwitchover} pages after switch-over, ${pc.duplicatesDropped} repeats dropped, downtime ${s.vms[0]!.downtime_ms} ms`);
    expect(requests.length).toBeGreaterThan(0);
    expect(served.length).toBeGreaterThan(0);
    expect(injected).toBeGreaterThan(0);
    const asked = new Map<number, number>();
    for (const e of served) for (const r of e.data.ranges as { offset: number; length: number }[]) asked.set(r.offset, (asked.get(r.offset) ?? 0) + 1);
    expect([...asked.values()].every((n) => n === 1)).toBe(true);
    // An auditor re-verifies it later from the retained events: every entry, every digest.
    const audit = JSON.parse(execFileSync(process.execPath, ["bin/gangway.mjs", "audit", migrationId, "--json", "--nats", nats.url], { encoding: "utf8" })) as { verified: boolean };
    expect(audit.verified).toBe(true);
  }, 420_000);

  it("source lost during post-copy: the destination is paused, the pages it never got are named, and the migration is reported failed", async () => {
    procs.push(await startFunctions(nats.url));
    const a = await startAgentProcess(nats.url, "plA", work);
    procs.push(a, await startAgentProcess(nats.url, "plB", work));
    await startVms(nats.nc, "plA", [hot("lost1", 9)]);
    const migrationId = newMigrationId();
    const done = migrateGang({ nc: nats.nc, vms: ["lost1"], sourceHost: "plA", targetHost: "plB", migrationId, options: { bandwidthMBps: 4, maxRounds: 2, postcopy: true, progressTimeoutSec: 10 } });
    // The destination runs the guest; its remaining pages are still crossing a 4 MB/s link.
    await eventually(async () => (await eventsOf(migrationId, `gw.migration.${migrationId}.committed`)).length > 0, 120_000, "post-copy commit");
    await a.kill(); // the source host's agent, and with it the source QEMU
    const s = await done;
    expect(s.outcome).toBe("failed");
    expect(s.reason).toMatch(/post-copy/);
    const events = await eventsOf(migrationId);
    const missing = events.find((e) => e.type === "io.gangway.page.missing.v1");
    expect(missing, "a page.missing event").toBeDefined();
    expect(missing!.data.pages as number).toBeGreaterThan(0);
    expect((missing!.data.ranges as unknown[]).length).toBeGreaterThan(0);
    const lost = events.find((e) => e.type === "io.gangway.migration.failed.v1" && e.data.vm === "lost1");
    expect(String(lost?.data.reason)).toMatch(/post-copy broke off/);
    // No rollback was sent: the source's guest is older than the one that ran.
    expect(events.some((e) => e.type === "io.gangway.migration.rolledback.v1")).toBe(false);
    // The destination copy is paused, not running on with holes in its memory.
    const list = JSON.parse(execFileSync(process.execPath, ["bin/gangway.mjs", "vm", "list", "--json", "--nats", nats.url], { encoding: "utf8" })) as { vms: { host: string; vm: string; state: string }[] };
    expect(list.vms.find((v) => v.vm === "lost1" && v.host === "plB")).toMatchObject({ state: "paused" });
    console.log(`post-copy loss: ${missing!.data.pages} pages missing`);
  }, 300_000);

  it("force-complete at once: post-copy carries most of the VM, and the pages the destination side already holds cross as their keys alone", async () => {
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "pfA", work), await startAgentProcess(nats.url, "pfB", work));
    await startVms(nats.nc, "pfA", [testGuestSpec("early1", { memoryMiB: 64, seed: 4, rate: 500 })]);
    // The preparation phase has preseeded the VM's pages on the destination side.
    await waitForScans(nats.nc, "pfA", ["early1"]);
    const migrationId = newMigrationId();
    const done = migrateGang({ nc: nats.nc, vms: ["early1"], sourceHost: "pfA", targetHost: "pfB", migrationId, options: { postcopy: true, bandwidthMBps: 8 } });
    await eventually(async () => (await eventsOf(migrationId, `gw.migration.${migrationId}.started`)).length > 0, 60_000, "migration started");
    execFileSync(process.execPath, ["bin/gangway.mjs", "migrate", "--force-complete", migrationId, "--nats", nats.url]);
    const s = await done;
    expect(s.outcome, s.reason).toBe("succeeded");
    expect(s.vms[0]!.mode).toBe("PostCopy");
    expect(await verifyGuest(nats.nc, "pfB", "early1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    const events = await eventsOf(migrationId);
    expect(events.find((e) => e.type === "io.gangway.migration.switchover.v1")?.data).toMatchObject({ mode: "post-copy", reason: expect.stringMatching(/force-complete/) });
    const resumed = events.find((e) => e.type === "io.gangway.commit.resumed.v1")!.data.postcopy as { pagesAfterSwitchover: number };
    // A large part of the 16,384 pages came after the switch-over (how much depends on how
    // far the first pass got before the command landed) ...
    expect(resumed.pagesAfterSwitchover).toBeGreaterThan(4000);
    // ... and, preseeded, most crossed as keys: far fewer page contents than pages.
    expect(s.vms[0]!.pages_sent).toBeLessThan(0.25 * (s.vms[0]!.pages - s.vms[0]!.memory_constant));
    const served = events.filter((e) => e.type === "io.gangway.page.served.v1");
    console.log(`force-complete: ${resumed.pagesAfterSwitchover} pages after switch-over, ${s.vms[0]!.pages_sent} sent as content, faults served ${served.reduce((n, e) => n + (e.data.fromDestination as number), 0)} from the destination side / ${served.reduce((n, e) => n + (e.data.fromSource as number), 0)} from the source`);
  }, 300_000);

  // Quarantined from `npm test` (run it with GANGWAY_E2E_QUARANTINE=1): it exposes the open
  // post-copy issue (README, "Known issue") in about 3 of 8 runs — a committed VM whose guest
  // self-check fails on one stale page. It stays here, unchanged, as the reproducer.
  it.skipIf(!process.env.GANGWAY_E2E_QUARANTINE)("source unreachable for a few seconds during post-copy: the stall is reported, post-copy goes on when it answers again, and the guest verifies", async () => {
    procs.push(await startFunctions(nats.url));
    const a = await startAgentProcess(nats.url, "prA", work);
    procs.push(a, await startAgentProcess(nats.url, "prB", work));
    await startVms(nats.nc, "prA", [hot("back1", 13)]);
    const migrationId = newMigrationId();
    const done = migrateGang({ nc: nats.nc, vms: ["back1"], sourceHost: "prA", targetHost: "prB", migrationId, options: { bandwidthMBps: 4, maxRounds: 2, postcopy: true, progressTimeoutSec: 60 } });
    await eventually(async () => (await eventsOf(migrationId, `gw.migration.${migrationId}.committed`)).length > 0, 120_000, "post-copy commit");
    // The source host drops off (its agent frozen: no pages, no answers), then comes back.
    process.kill(a.child.pid!, "SIGSTOP");
    await eventually(async () => (await eventsOf(migrationId, `gw.migration.${migrationId}.progress`)).some((e) => (e.data.qemu as { status?: string } | undefined)?.status === "postcopy-paused"), 30_000, "post-copy paused");
    process.kill(a.child.pid!, "SIGCONT");
    const s = await done;
    expect(s.outcome, s.reason).toBe("succeeded");
    const vr = await verifyGuest(nats.nc, "prB", "back1");
    if (!vr.ok) {
      // Diagnosis of the open post-copy issue (README): what the failing page holds.
      console.log("self-check failed:", vr.line);
      const first = Number(/first=(\d+)/.exec(vr.line)?.[1] ?? -1);
      const f = (await readdir("/dev/shm")).find((x) => x.startsWith("gangway-prB-") && x.endsWith("-back1-dst"));
      if (f && first >= 0) {
        const fh = await (await import("node:fs/promises")).open(`/dev/shm/${f}`, "r");
        const b = Buffer.alloc(4096);
        await fh.read(b, 0, 4096, first * 4096);
        await fh.close();
        const w = (i: number) => b.readUInt32LE(i * 4).toString(16);
        console.log(`page ${first} at the destination: words 0-5 ${[0, 1, 2, 3, 4, 5].map(w).join(" ")}, 1000 ${w(1000)}, 1023 ${w(1023)}, all zero: ${b.every((x) => x === 0)}`);
      }
    }
    expect(vr).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    const statuses = (await eventsOf(migrationId, `gw.migration.${migrationId}.progress`)).map((e) => (e.data.qemu as { status?: string } | undefined)?.status).filter(Boolean);
    expect(statuses).toEqual(["postcopy-paused", "postcopy-active"]);
  }, 300_000);

  it("post-copy allowed but not needed: a guest that converges completes in pre-copy as usual (QEMU's return path is answered)", async () => {
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "pqA", work), await startAgentProcess(nats.url, "pqB", work));
    await startVms(nats.nc, "pqA", [testGuestSpec("calm1", { memoryMiB: 64, seed: 6, rate: 100 })]);
    const s = await migrateGang({ nc: nats.nc, vms: ["calm1"], sourceHost: "pqA", targetHost: "pqB", options: { postcopy: true } });
    expect(s.outcome, s.reason).toBe("succeeded");
    expect(s.vms[0]!.mode).toBeUndefined();
    expect(await verifyGuest(nats.nc, "pqB", "calm1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
  }, 180_000);

  it("on QEMU 10.0: a guest that never converges moves in post-copy, faults its pages in, verifies, and its audit holds", async () => {
    const env = { GANGWAY_QEMU: requireQemu10() };
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "pvA", work, { env }), await startAgentProcess(nats.url, "pvB", work, { env }));
    await startVms(nats.nc, "pvA", [hot("hot10", 8)]);
    const s = await migrateGang({ nc: nats.nc, vms: ["hot10"], sourceHost: "pvA", targetHost: "pvB", options: { ...LINK, postcopy: true } });
    expect(s.outcome, s.reason).toBe("succeeded");
    expect(s.vms[0]!.mode).toBe("PostCopy");
    expect(await verifyGuest(nats.nc, "pvB", "hot10")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    await vmGone("pvA", "hot10");
    const events = await eventsOf(s.migrationId);
    const resumed = events.find((e) => e.type === "io.gangway.commit.resumed.v1")!;
    const pc = resumed.data.postcopy as { pagesAfterSwitchover: number };
    expect(pc.pagesAfterSwitchover).toBeGreaterThan(0);
    console.log(`post-copy on QEMU 10.0: ${events.filter((e) => e.type === "io.gangway.page.requested.v1").length} fault events, ${pc.pagesAfterSwitchover} pages after switch-over, downtime ${s.vms[0]!.downtime_ms} ms`);
    const audit = JSON.parse(execFileSync(process.execPath, ["bin/gangway.mjs", "audit", s.migrationId, "--json", "--nats", nats.url], { encoding: "utf8" })) as { verified: boolean };
    expect(audit.verified).toBe(true);
  }, 420_000);
});
