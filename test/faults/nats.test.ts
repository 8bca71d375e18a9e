/**
 * Fault case 6: the NATS server paused (SIGSTOP) in the middle of a transfer. With a short
 * progress time-out the migration aborts once NATS is back, the source runs, and nothing
 * hangs; a pause shorter than the time-outs costs nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, sleep, startCluster, startVms, type Cluster } from "./harness.ts";

let c: Cluster;
beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest("n1", 1)]);
}, 120_000);
afterAll(async () => c?.stop(), 60_000);

const vms = ["n1"];

describe("fault: NATS paused mid-transfer", () => {
  it("6: nats-server SIGSTOPped for longer than the progress time-out: aborted once it is back, the source runs", () =>
    runCase("6", "nats-server paused (SIGSTOP) mid-transfer, 20 s against a 5 s progress time-out; then a 1 s pause", async (r) => {
      const migrationId = newMigrationId();
      const w = await MigrationWatch.start(c, migrationId);
      const t0 = Date.now();
      const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: "hostA", targetHost: "hostB", migrationId, options: { progressTimeoutSec: 5 }, idleTimeoutMs: 90_000 });
      await w.waitFor("migration.progress");
      c.nats.server.signal("SIGSTOP");
      r.f.faultsInjected++;
      await sleep(20_000);
      c.nats.server.signal("SIGCONT");
      const s = await done;
      // Liveness now tells a silent peer from a gone one: a 20 s pause of NATS is only
      // suspicion (given up after 60 s), so the migration may ride it out. Either way: never
      // a wrong VM, and never the completion budget's doing.
      if (s.outcome === "succeeded") {
        r.f.notes = `rode out the pause: succeeded after ${Math.round((Date.now() - t0) / 100) / 10} s`;
        await expectSucceeded(c, r, s, { vms, source: "hostA", target: "hostB" });
      } else {
        r.f.notes = `rolled back after ${Math.round((Date.now() - t0) / 100) / 10} s: ${s.vms[0]?.reason?.slice(0, 160)}`;
        await expectRolledBack(c, r, s, w, { vms, source: "hostA", target: "hostB" });
        expect(s.vms[0]!.reason).not.toMatch(/not completed within/);
      }
      // Where n1 runs now.
      const [from2, to2] = s.outcome === "succeeded" ? ["hostB", "hostA"] : ["hostA", "hostB"];

      // A short pause: nothing gives up.
      const id2 = newMigrationId();
      const w2 = await MigrationWatch.start(c, id2);
      const done2 = migrateGang({ nc: c.nats.nc, vms, sourceHost: from2, targetHost: to2, migrationId: id2 });
      await w2.waitFor("migration.progress");
      c.nats.server.signal("SIGSTOP");
      r.f.faultsInjected++;
      await sleep(1000);
      c.nats.server.signal("SIGCONT");
      w2.stop();
      await expectSucceeded(c, r, await done2, { vms, source: from2, target: to2 });
    }), 240_000);
});
