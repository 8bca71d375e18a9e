/**
 * The proof catches what it claims to, end to end (real QEMU, real nats-server, agents as
 * processes with test faults injected into their data path): a page altered or a record
 * dropped inside the source's pipeline is found against the source's RAM and repaired (the
 * destination then holds the source's RAM byte for byte); a page changed in the
 * destination's loaded RAM, or another VM's device state loaded there, refuses the commit
 * and the source runs on.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually, startTestNats, type TestNats } from "../helpers/nats.ts";
import { hostVms, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang } from "../../cli/gangMigration.ts";
import { compareRamDumps } from "../helpers/ramDumps.ts";

let nats: TestNats;
let work: string;
let procs: GangwayProcess[];

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gangway-proof-"));
  procs = [];
});

afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

/** Agents with these test faults; both keep RAM dumps of what they prove. */
async function clusterWith(faults: string) {
  procs.push(await startFunctions(nats.url));
  process.env.GANGWAY_TEST_FAULTS = faults;
  process.env.GANGWAY_RAM_DUMP_DIR = join(work, "dumps");
  try {
    for (const h of ["hostA", "hostB"]) procs.push(await startAgentProcess(nats.url, h, work));
  } finally {
    delete process.env.GANGWAY_TEST_FAULTS;
    delete process.env.GANGWAY_RAM_DUMP_DIR;
  }
  // Idle guests: the altered page is not sent again by a later pass.
  await startVms(nats.nc, "hostA", ["p1", "p2"].map((n, i) => testGuestSpec(n, { memoryMiB: 64, seed: 30 + i, image: 7, rate: 0 })));
}

describe("the proof catches what it claims (real QEMU, real nats-server)", () => {
  for (const fault of ["alter-sent-page", "drop-record"]) {
    it(`${fault} inside the source's pipeline: found against the source's RAM and repaired; the destination holds the source's RAM`, async () => {
      await clusterWith(`${fault}:p1`);
      const s = await migrateGang({ nc: nats.nc, vms: ["p1", "p2"], sourceHost: "hostA", targetHost: "hostB" });
      expect(s.outcome, s.reason).toBe("succeeded");
      const p1 = s.vms.find((v) => v.vm === "p1")!;
      expect(p1.proof!.pages_repaired).toBeGreaterThanOrEqual(1);
      for (const v of s.vms) expect(v.proof!.destination_digest).toBe(v.proof!.source_ram_digest);
      expect(await compareRamDumps(join(work, "dumps"), s.migrationId, ["p1", "p2"])).toEqual({ p1: "identical", p2: "identical" });
      for (const v of ["p1", "p2"]) expect((await verifyGuest(nats.nc, "hostB", v)).line).toMatch(/VERIFY OK/);
    }, 180_000);
  }

  it("a page changed in the destination's loaded RAM: the commit is refused, naming the page, and the source runs on", async () => {
    await clusterWith("alter-loaded-page:p1");
    const s = await migrateGang({ nc: nats.nc, vms: ["p1", "p2"], sourceHost: "hostA", targetHost: "hostB" });
    expect(s.outcome).toBe("failed");
    const p1 = s.vms.find((v) => v.vm === "p1")!;
    expect(p1.outcome).toBe("rolledback");
    expect(p1.reason).toMatch(/does not match the source's RAM .*first at m0\+0x300000/);
    expect(s.vms.find((v) => v.vm === "p2")!.outcome).toBe("committed");
    // The rollback resumes the source after the outcome is out: wait for its inventory to say so.
    await eventually(async () => (await hostVms(nats.nc, "hostA")).get("p1") === "running" || undefined, 60_000, "p1 running again on hostA");
    expect((await verifyGuest(nats.nc, "hostA", "p1")).line).toMatch(/VERIFY OK/);
  }, 180_000);

  it("another VM's device state at the destination: the commit is refused and the source runs on", async () => {
    await clusterWith("swap-device-state:p1=p2");
    const s = await migrateGang({ nc: nats.nc, vms: ["p1", "p2"], sourceHost: "hostA", targetHost: "hostB" });
    const p1 = s.vms.find((v) => v.vm === "p1")!;
    expect(p1.outcome).toBe("rolledback");
    // QEMU may load it (then the device-state digests differ) or refuse it (then the load fails).
    expect(p1.reason).toMatch(/other device state than the source stored|destination/);
    // The rollback resumes the source after the outcome is out: wait for its inventory to say so.
    await eventually(async () => (await hostVms(nats.nc, "hostA")).get("p1") === "running" || undefined, 60_000, "p1 running again on hostA");
    expect((await verifyGuest(nats.nc, "hostA", "p1")).line).toMatch(/VERIFY OK/);
  }, 180_000);
});
