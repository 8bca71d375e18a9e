/**
 * A host agent's VMs outlive the agent (like libvirt's domains): real nats-server, real QEMU
 * (TCG), functions and agents as separate processes. An agent killed (SIGKILL) or stopped
 * without --stop-vms-on-exit leaves its QEMUs running; the next agent of the host adopts
 * them (QMP and serial console re-attached), reports them, and settles a migration the
 * dead one was in: the VM keeps running at its source, verifies, and migrates afterwards.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestNats, eventually, type TestNats } from "../helpers/nats.ts";
import { hostVms, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { readEvents } from "../../infra/events/reader.ts";

let nats: TestNats;
let work: string;
let procs: GangwayProcess[];

/** This test's QEMUs (their QMP sockets are in its work directory): pid, host, VM, run directory. */
async function qemus(): Promise<{ pid: number; host: string; vm: string; dir: string }[]> {
  const out: { pid: number; host: string; vm: string; dir: string }[] = [];
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
    if (!argv.some((a) => a.includes("qemu-system"))) continue;
    const qmp = argv.find((a) => a.startsWith(`unix:${work}/`));
    if (!qmp) continue;
    const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    if (/\) [ZX] /.test(stat)) continue;
    const dir = qmp.slice("unix:".length).split(",")[0]!.replace(/\/qmp\.sock$/, "");
    out.push({ pid: Number(pid), host: dir.slice(work.length + 1).split("/")[0]!, vm: argv[argv.indexOf("-name") + 1] ?? "?", dir });
  }
  return out;
}

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gw-adopt-"));
  procs = [];
});

afterEach(async () => {
  // Agents quit their VMs on SIGTERM here (--stop-vms-on-exit); whatever a failed test
  // left (a QEMU with no agent) is killed by pid, so nothing outlives the test.
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  for (const q of await qemus()) {
    try {
      process.kill(q.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
  for (const f of await readdir("/dev/shm")) if (/^gangway-ar[AB]-/.test(f)) await rm(join("/dev/shm", f), { force: true });
});

const agent = async (host: string, o: { keepVmsOnExit?: boolean } = {}) => {
  const a = await startAgentProcess(nats.url, host, work, o);
  procs.push(a);
  return a;
};
const drop = (p: GangwayProcess) => procs.splice(procs.indexOf(p), 1);

const firstProgress = (migrationId: string) =>
  eventually(async () => {
    for await (const e of readEvents(nats.nc, { filter: `gw.migration.${migrationId}.progress` })) if (e.result.ok) return true;
    return undefined;
  }, 60_000, "migration progress");

describe("agent restart: VMs outlive their agent (real QEMU, real nats-server)", () => {
  it("an idle agent killed, then one stopped with its VMs kept: each time the next agent adopts the same QEMUs, running and verifying", async () => {
    procs.push(await startFunctions(nats.url));
    let a = await agent("arA");
    const vms = ["k1", "k2"];
    await startVms(nats.nc, "arA", vms.map((n, i) => testGuestSpec(n, { memoryMiB: 64, seed: i + 1, rate: 200 })));
    const before = new Map((await qemus()).map((q) => [q.vm, q.pid]));
    expect([...before.keys()].sort()).toEqual(vms);

    // 1. SIGKILL: the QEMUs stay.
    await a.kill();
    drop(a);
    await new Promise((r) => setTimeout(r, 1500));
    expect(new Map((await qemus()).map((q) => [q.vm, q.pid]))).toEqual(before);
    a = await agent("arA", { keepVmsOnExit: true });
    await eventually(async () => {
      const inv = await hostVms(nats.nc, "arA");
      return vms.every((v) => inv.get(v) === "running") || undefined;
    }, 30_000, "adopted VMs in the restarted agent's inventory");
    for (const v of vms) expect(await verifyGuest(nats.nc, "arA", v), v).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    expect(new Map((await qemus()).map((q) => [q.vm, q.pid]))).toEqual(before);

    // 2. A normal stop (SIGTERM) without --stop-vms-on-exit: the VMs stay too.
    await a.stop();
    drop(a);
    expect(new Map((await qemus()).map((q) => [q.vm, q.pid]))).toEqual(before);
    a = await agent("arA");
    await eventually(async () => {
      const inv = await hostVms(nats.nc, "arA");
      return vms.every((v) => inv.get(v) === "running") || undefined;
    }, 30_000, "adopted VMs after a normal stop");
    for (const v of vms) expect(await verifyGuest(nats.nc, "arA", v), v).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    // The RAM files are the adopted QEMUs' own: reclaim left them.
    for (const q of await qemus()) expect((await readFile(`/proc/${q.pid}/cmdline`, "utf8")).match(/mem-path=([^,\0]+)/)?.[1]).toSatisfy((p: string) => p.startsWith("/dev/shm/gangway-arA-"));
    expect((await readdir("/dev/shm")).filter((f) => f.startsWith("gangway-arA-")).length).toBe(2);

    // 3. This agent stops with --stop-vms-on-exit: the adopted VMs are quit, their files gone.
    await a.stop();
    drop(a);
    expect(await qemus()).toEqual([]);
    await eventually(async () => ((await readdir("/dev/shm")).some((f) => f.startsWith("gangway-arA-")) ? undefined : true), 10_000, "RAM files removed");
  }, 240_000);

  it("the source agent SIGKILLed while pages flow, then restarted: the VM never stops running at its source, is adopted and verifies, then migrates", async () => {
    procs.push(await startFunctions(nats.url));
    const a = await agent("arA");
    await agent("arB");
    await startVms(nats.nc, "arA", [testGuestSpec("m1", { memoryMiB: 128, seed: 3, rate: 500 })]);
    const [src] = await qemus();
    expect(src).toMatchObject({ host: "arA", vm: "m1" });

    const migrationId = newMigrationId();
    // A slow link keeps the migration in flight long enough to kill its source mid-way.
    const done = migrateGang({ nc: nats.nc, vms: ["m1"], sourceHost: "arA", targetHost: "arB", migrationId, options: { bandwidthMBps: 8 } });
    await firstProgress(migrationId);
    await a.kill();
    drop(a);
    // The source QEMU survived its agent (the destination's died with nothing: it is still
    // incoming, and is rolled back and quit by the destination's agent).
    expect((await qemus()).filter((q) => q.host === "arA").map((q) => q.pid)).toEqual([src!.pid]);
    await agent("arA");

    const s = await done;
    expect(s.outcome, s.reason).toBe("failed");
    expect(s.vms.find((v) => v.vm === "m1")?.outcome).toBe("rolledback");
    await eventually(async () => ((await hostVms(nats.nc, "arA")).get("m1") === "running" && !(await hostVms(nats.nc, "arB")).has("m1")) || undefined, 60_000, "m1 running on arA only");
    // Never resumed on the destination, and no copy of it there.
    const resumed: string[] = [];
    for await (const e of readEvents(nats.nc, { filter: `gw.commit.${migrationId}.resumed` })) resumed.push(e.subject);
    expect(resumed).toEqual([]);
    await eventually(async () => ((await qemus()).filter((q) => q.vm === "m1").length === 1 ? true : undefined), 30_000, "one QEMU of m1");
    expect((await qemus()).map((q) => q.pid)).toEqual([src!.pid]);
    expect(await verifyGuest(nats.nc, "arA", "m1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });

    // The adopted VM migrates like any other.
    const again = await migrateGang({ nc: nats.nc, vms: ["m1"], sourceHost: "arA", targetHost: "arB" });
    expect(again.outcome, again.reason).toBe("succeeded");
    expect(await verifyGuest(nats.nc, "arB", "m1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    await eventually(async () => !(await hostVms(nats.nc, "arA")).has("m1") || undefined, 30_000, "m1 gone from arA's inventory");
    await eventually(async () => {
      const q = await qemus();
      return (q.length === 1 && q[0]!.host === "arB") || undefined;
    }, 30_000, "m1's only QEMU on arB");

    // A VM that arrived by migration lost its destination lifeline when it resumed: it too
    // outlives its agent.
    const [arrived] = await qemus();
    const b = procs.find((p) => p.name === "agent arB")!;
    await b.kill();
    drop(b);
    await new Promise((r) => setTimeout(r, 1500));
    expect((await qemus()).map((q) => q.pid)).toEqual([arrived!.pid]);
    await agent("arB");
    await eventually(async () => (await hostVms(nats.nc, "arB")).get("m1") === "running" || undefined, 30_000, "m1 adopted on arB");
    expect(await verifyGuest(nats.nc, "arB", "m1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
  }, 300_000);
});
