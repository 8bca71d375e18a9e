/**
 * Fault cases 1 and 3: the destination lost during pre-copy (its QEMU killed by pid) and
 * after the source stopped for switch-over (its QEMU, then its whole agent). The source runs
 * again every time, and the same VM then migrates successfully.
 */
import { afterAll, beforeAll, describe, it } from "vitest";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { destinationQemu, expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, startCluster, startVms, type Cluster } from "./harness.ts";

let c: Cluster;
beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest("d1", 1)]);
}, 120_000);
afterAll(async () => c?.stop(), 60_000);

const vms = ["d1"];
const start = async () => {
  const migrationId = newMigrationId();
  const w = await MigrationWatch.start(c, migrationId);
  return { w, done: migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostA", targetHost: "hostB", migrationId }) };
};

describe("fault: destination lost", () => {
  it("1: destination QEMU killed during pre-copy: rolled back, source runs; then the same VM migrates", () =>
    runCase("1", "destination QEMU killed (SIGKILL by pid) during pre-copy; then the same VM migrates", async (r) => {
      const { w, done } = await start();
      await w.waitFor("migration.progress");
      process.kill((await destinationQemu(c, "hostB", "d1")).pid, "SIGKILL");
      r.f.faultsInjected++;
      await expectRolledBack(c, r, await done, w, { vms, source: "hostA", target: "hostB", reason: /host hostB: destination/ });
      await expectSucceeded(c, r, await migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostA", targetHost: "hostB" }), { vms, source: "hostA", target: "hostB" });
    }), 180_000);

  it("3: destination killed after the source stopped for switch-over (its QEMU; then its agent): the source resumes", () =>
    runCase("3", "destination killed after the source stopped for switch-over: its QEMU, then its whole agent", async (r) => {
      // d1 is on hostB now: it migrates back to hostA, whose side is killed.
      {
        const migrationId = newMigrationId();
        const w = await MigrationWatch.start(c, migrationId);
        const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostB", targetHost: "hostA", migrationId });
        const q = await destinationQemu(c, "hostA", "d1");
        await w.waitFor("migration.switchover");
        process.kill(q.pid, "SIGKILL");
        r.f.faultsInjected++;
        await expectRolledBack(c, r, await done, w, { vms, source: "hostB", target: "hostA", reason: /host hostA/ });
      }
      {
        const migrationId = newMigrationId();
        const w = await MigrationWatch.start(c, migrationId);
        const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostB", targetHost: "hostA", migrationId });
        await w.waitFor("migration.switchover");
        await c.agents.get("hostA")!.kill();
        r.f.faultsInjected++;
        const s = await done;
        await c.startAgent("hostA"); // a restarted agent reclaims what the dead one left
        await expectRolledBack(c, r, s, w, { vms, source: "hostB", target: "hostA", reason: /hostA stopped answering|host hostA/ });
      }
      await expectSucceeded(c, r, await migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostB", targetHost: "hostA" }), { vms, source: "hostB", target: "hostA" });
    }), 240_000);
});
