/**
 * Fault case 6, the other two ways to lose NATS mid-transfer: the server SIGKILLed and
 * started again a few seconds later on the same port and store directory, and the source
 * agent's link to NATS cut (a TCP relay that drops every connection and refuses new ones)
 * for longer than the peers' liveness allows. Either way the migration ends on its own —
 * completed, or rolled back with the source running — nothing hangs, nothing is left, and
 * exactly one copy of the VM runs and verifies.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrateGang, newMigrationId, type GangSummary } from "../../cli/gangMigration.ts";
import { expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, sleep, startCluster, startVms, type CaseRecorder, type Cluster } from "./harness.ts";
import { cuttableRelay, startRestartableNats, type CuttableRelay, type RestartableNats } from "./natsFaults.ts";

let c: Cluster;
let nats: RestartableNats;
const relays = new Map<string, CuttableRelay>();
const vms = ["k1"];
/** Where k1 runs now. */
let at = "hostA";
const other = () => (at === "hostA" ? "hostB" : "hostA");

beforeAll(async () => {
  nats = await startRestartableNats();
  for (const h of ["hostA", "hostB"]) relays.set(h, await cuttableRelay(nats.server.port));
  // Each agent reaches NATS through its own relay: its link alone can be cut.
  c = await startCluster({ nats, agentUrl: (h) => relays.get(h)!.url });
  await startVms(c.nats.nc, "hostA", [guest("k1", 3)]);
}, 120_000);
afterAll(async () => {
  await c?.stop();
  for (const r of relays.values()) await r.close();
}, 60_000);

/**
 * Either end is fine, as long as it is clean and the outage decided it: a rollback says why,
 * and not that it waited out the completion budget (150 s; the idle limit of 90 s bounds
 * the wait for the outcome).
 */
async function expectEnded(r: CaseRecorder, s: GangSummary, w: MigrationWatch, from: string, to: string, tookMs: number): Promise<void> {
  r.f.notes = `${r.f.notes ? `${r.f.notes}; ` : ""}${s.outcome} in ${Math.round(tookMs / 100) / 10} s${s.reason ? ` (${s.reason.slice(0, 160)})` : ""}`;
  if (s.outcome === "succeeded") {
    w.stop();
    await expectSucceeded(c, r, s, { vms, source: from, target: to });
    at = to;
  } else {
    await expectRolledBack(c, r, s, w, { vms, source: from, target: to });
    expect(s.vms[0]!.reason).not.toMatch(/not completed within/);
  }
}

/** Everything recovered: the next migration, with no fault, completes. */
async function thenOneMoves(r: CaseRecorder): Promise<void> {
  const [from, to] = [at, other()];
  const s = await migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to, idleTimeoutMs: 90_000 });
  expect(s.outcome, `the next migration after the fault: ${s.reason}`).toBe("succeeded");
  await expectSucceeded(c, r, s, { vms, source: from, target: to });
  at = to;
}

/** One migration with `inject` run once pages flow: it must end cleanly, then the VM moves. */
async function faultMidTransfer(r: Parameters<Parameters<typeof runCase>[2]>[0], inject: (from: string) => Promise<void>): Promise<void> {
  const from = at;
  const to = other();
  const migrationId = newMigrationId();
  const w = await MigrationWatch.start(c, migrationId);
  const t0 = Date.now();
  const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to, migrationId, options: { progressTimeoutSec: 20 }, idleTimeoutMs: 90_000 });
  await w.waitFor("migration.progress");
  r.f.faultsInjected++;
  await inject(from);
  await expectEnded(r, await done, w, from, to, Date.now() - t0);
  await thenOneMoves(r);
}

describe("fault: NATS lost mid-transfer", () => {
  it("6: nats-server SIGKILLed while pages flow and restarted on the same port and store 3 s later: the migration ends cleanly, one copy", () =>
    runCase("6-kill", "nats-server SIGKILLed mid-transfer, restarted on the same port and store dir after 3 s", (r) =>
      faultMidTransfer(r, async () => {
        await nats.kill();
        await sleep(3000);
        await nats.restart();
      })), 180_000);

  it("6: the source agent's link to NATS cut for 8 s while pages flow: the migration ends cleanly, one copy", () =>
    runCase("6-cut", "the source agent's TCP link to NATS cut (connections dropped, new ones refused) for 8 s mid-transfer", (r) =>
      faultMidTransfer(r, async (from) => {
        relays.get(from)!.cut();
        await sleep(8000);
        relays.get(from)!.restore();
      })), 180_000);
});
