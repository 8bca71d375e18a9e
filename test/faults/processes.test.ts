/**
 * Fault cases 2, 4 and 7: gangway's own processes killed (SIGKILL) in each phase a test can
 * see from the events — setup (planned), active (pages flowing), pre-switchover (the source
 * stopped for its last pass) — and the deciding process killed between "all pages delivered"
 * and commit. Functions restart and JetStream redelivers what the dead one held: the
 * migration completes (its proof holds, memory verifies), exactly one copy runs. A killed
 * destination agent rolls back (the source sees it stop answering); a killed source agent
 * is restarted, adopts its VM and the rollback resumes it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrateGang, newMigrationId, type GangSummary } from "../../cli/gangMigration.ts";
import {
  eventually, expectRolledBack, expectSucceeded, guest, MigrationWatch, qemus, runCase, startCluster, startVms,
  type CaseRecorder, type Cluster,
} from "./harness.ts";

let c: Cluster;
/** Where p1 runs now. */
let at = "hostA";
const other = () => (at === "hostA" ? "hostB" : "hostA");
const vms = ["p1"];

beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest("p1", 1)]);
}, 120_000);
afterAll(async () => c?.stop(), 60_000);

/** Phases by the event that opens them. */
const PHASES = { setup: "migration.planned", active: "migration.progress", "pre-switchover": "migration.switchover" } as const;
type Phase = keyof typeof PHASES;

async function migrateWith(inject: (w: MigrationWatch, from: string, to: string) => Promise<void>): Promise<{ s: GangSummary; w: MigrationWatch; from: string; to: string }> {
  const from = at;
  const to = other();
  const migrationId = newMigrationId();
  const w = await MigrationWatch.start(c, migrationId);
  const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to, migrationId });
  await inject(w, from, to);
  return { s: await done, w, from, to };
}

/**
 * A crash of the functions costs nothing: JetStream redelivers what the dead process held,
 * the new one finishes it, and the migration completes — proved (digests, RAM dumps) and
 * verified on the destination.
 */
async function expectCompleted(r: CaseRecorder, m: { s: GangSummary; w: MigrationWatch; from: string; to: string }): Promise<void> {
  m.w.stop();
  expect(m.s.outcome, `after the functions were killed: ${m.s.vms.map((v) => `${v.vm} ${v.outcome}: ${v.reason ?? ""}`).join("; ")} ${m.s.reason ?? ""}`).toBe("succeeded");
  await expectSucceeded(c, r, m.s, { vms, source: m.from, target: m.to });
  at = m.to;
}

const killFunctions = async () => {
  const f = c.functions.shift()!;
  await f.kill();
  await c.startFunctions();
};

describe("fault: gangway processes killed", () => {
  for (const phase of Object.keys(PHASES) as Phase[]) {
    it(`2/7: the functions process killed at ${phase} and restarted: JetStream redelivers, the migration completes, memory verifies`, () =>
      runCase(`2-functions-${phase}`, `functions process killed (SIGKILL) at ${phase}, restarted; redelivered events (case 7)`, async (r) => {
        const m = await migrateWith(async (w) => {
          await w.waitFor(PHASES[phase]);
          await killFunctions();
          r.f.faultsInjected++;
        });
        await expectCompleted(r, m);
      }), 180_000);
  }

  it("4: the deciding process killed between all pages delivered and commit: after recovery exactly one VM runs", () =>
    runCase("4", "functions (commit) paused when the source sent everything, killed once the destination proved it holds every page, restarted", async (r) => {
      const m = await migrateWith(async (w) => {
        await w.waitFor("manifest.completed");
        const f = c.functions.shift()!;
        f.child.kill("SIGSTOP");
        await w.waitFor("commit.ready");
        expect(w.has("migration.committed")).toBe(false);
        await f.kill();
        r.f.faultsInjected++;
        await c.startFunctions();
      });
      await expectCompleted(r, m);
    }), 180_000);

  for (const phase of ["setup", "active"] as Phase[]) {
    it(`2: the destination agent killed at ${phase}: rolled back, the source runs`, () =>
      runCase(`2-destination-agent-${phase}`, `destination agent killed (SIGKILL, its QEMUs with it) at ${phase}`, async (r) => {
        const m = await migrateWith(async (w, _from, to) => {
          await w.waitFor(PHASES[phase]);
          await c.agents.get(to)!.kill();
          r.f.faultsInjected++;
        });
        await c.startAgent(m.to);
        await expectRolledBack(c, r, m.s, m.w, { vms, source: m.from, target: m.to, reason: new RegExp(`^host ${m.from}: host ${m.to} stopped answering`) });
      }), 180_000);
  }

  it("2: the source agent killed while pages flow, then restarted: the VM outlives its agent, is adopted and resumed at its source; the destination never resumes a copy", () =>
    runCase("2-source-agent-active", "source agent killed (SIGKILL) while pages flow, restarted: its QEMU survives, the new agent adopts it", async (r) => {
      let before: number | undefined;
      const m = await migrateWith(async (w, from) => {
        await w.waitFor(PHASES.active);
        before = (await qemus(c)).find((q) => q.host === from && q.vm === "p1")?.pid;
        await c.agents.get(from)!.kill();
        r.f.faultsInjected++;
      });
      // The source QEMU outlived its agent (no pdeathsig for running VMs).
      expect(before).toBeDefined();
      expect((await qemus(c)).filter((q) => q.host === m.from && q.vm === "p1").map((q) => q.pid)).toEqual([before]);
      await c.startAgent(m.from); // adopts p1 (mid-migration), which the rollback resumes
      await expectRolledBack(c, r, m.s, m.w, { vms, source: m.from, target: m.to, reason: new RegExp(`${m.from} stopped answering|agent of ${m.from} restarted`) });
      // The same QEMU, never restarted: the VM never went away. The destination's QEMU is
      // quit by the rollback; under load its exit can come after the rollback was reported.
      const others = async () => (await qemus(c)).filter((q) => q.vm === "p1" && q.pid !== before);
      const left = await eventually(async () => ((await others()).length === 0 ? [] : undefined), 30_000, "the destination's QEMU of p1 gone").catch(others);
      expect(left.map((q) => `${q.role} QEMU ${q.pid} on ${q.host}`), "other QEMUs of p1").toEqual([]);
      expect((await qemus(c)).filter((q) => q.vm === "p1").map((q) => q.pid)).toEqual([before]);
      r.f.notes = "the source QEMU survives its agent (no pdeathsig); the restarted agent adopts it and the rollback resumes it";
    }), 180_000);
});
