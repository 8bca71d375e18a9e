/**
 * Fault case 14: gangway on a three-node NATS cluster (JetStream stream, KV buckets and page
 * store with three replicas; functions and agents given all three URLs), and one node — the
 * leader of the events stream — SIGKILLed while pages flow. The migration completes or
 * rolls back cleanly; once the node is back, the next migration completes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { migrateGang, newMigrationId, type GangSummary } from "../../cli/gangMigration.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { writeFile } from "node:fs/promises";
import { readEvents } from "../../infra/events/reader.ts";
import { eventually, expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, startCluster, startVms, type CaseRecorder, type Cluster } from "./harness.ts";
import { killServer, startNatsCluster, type NatsCluster } from "./natsFaults.ts";

let c: Cluster;
let nats: NatsCluster;
const vms = ["r1"];
let at = "hostA";
const other = () => (at === "hostA" ? "hostB" : "hostA");

beforeAll(async () => {
  nats = await startNatsCluster(3);
  c = await startCluster({ nats, upArgs: ["--replicas", "3"] });
  await startVms(c.nats.nc, "hostA", [guest("r1", 4)]);
}, 150_000);
afterAll(async () => {
  // The servers' own account of the kill, for whoever debugs a failure here.
  if (process.env.GW_FAULTS_NATS_LOGS && nats) await writeFile(process.env.GW_FAULTS_NATS_LOGS, nats.nodes.map((n, i) => `==== ${nats.names[i]}\n${n.log().slice(-30000)}`).join("\n"));
  await c?.stop();
}, 60_000);

async function expectEnded(r: CaseRecorder, s: GangSummary, w: MigrationWatch, from: string, to: string): Promise<void> {
  r.f.notes = `${r.f.notes ? `${r.f.notes}; ` : ""}${s.outcome}${s.reason ? ` (${s.reason.slice(0, 160)})` : ""}`;
  if (s.outcome === "succeeded") {
    w.stop();
    await expectSucceeded(c, r, s, { vms, source: from, target: to });
    at = to;
  } else {
    await expectRolledBack(c, r, s, w, { vms, source: from, target: to });
    // Decided by the node's death, not by waiting out the completion budget.
    expect(s.vms[0]!.reason).not.toMatch(/not completed within/);
  }
}

describe("fault: a node of a three-node NATS cluster killed", () => {
  it("14: the events stream's leader SIGKILLed mid-migration: completed or rolled back cleanly; with the node back, the next migration completes", () =>
    runCase("14", "one node (the events stream's leader) of a three-node NATS cluster, R3 everywhere, SIGKILLed while pages flow; restarted, then another migration", async (r) => {
      const jsm = await jetstreamManager(c.nats.nc);
      const info = await jsm.streams.info(EVENTS_STREAM);
      expect(info.config.num_replicas).toBe(3);
      expect(info.cluster?.replicas?.length).toBe(2);
      const leader = info.cluster!.leader!;
      expect(nats.names).toContain(leader);

      const from = at;
      const to = other();
      const migrationId = newMigrationId();
      const w = await MigrationWatch.start(c, migrationId);
      const t0 = Date.now();
      const done = migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to, migrationId, idleTimeoutMs: 90_000 });
      await w.waitFor("migration.progress");
      await killServer(nats.node(leader));
      r.f.faultsInjected++;
      const s = await done.catch(async (err: Error) => {
        // Say what the stream holds of the migration, and what the watch saw of it.
        const stored: string[] = [];
        for await (const e of readEvents(c.nats.nc, { filter: `gw.migration.${migrationId}.>` })) stored.push(e.subject.split(".").at(-1)!);
        throw new Error(`${err.message}; stored: ${stored.join(" ")}; watched: ${w.events.map((e) => e.type.split(".")[3]).join(" ")}`);
      });
      r.f.notes = `ended after ${Math.round((Date.now() - t0) / 100) / 10} s`;
      await expectEnded(r, s, w, from, to);
      const after = await jsm.streams.info(EVENTS_STREAM);
      expect(after.cluster?.leader).not.toBe(leader);

      // The node comes back (same store); the cluster catches it up, and the next migration
      // goes through. (On the two nodes left, nats-server 2.9 still placed some new consumers
      // with the dead node: object-store reads timed out and migrations rolled back.)
      await nats.restart(leader);
      await eventually(async () => {
        const i = await jsm.streams.info(EVENTS_STREAM).catch(() => undefined);
        return (i?.cluster?.replicas ?? []).filter((p) => p.current).length === 2 || undefined;
      }, 60_000, "the restarted node current again");
      const again = await migrateGang({ nc: c.nats.nc, vms, sourceHost: at, targetHost: other(), idleTimeoutMs: 90_000 });
      const [f2, t2] = [at, other()];
      if (again.outcome !== "succeeded") {
        const seen: string[] = [];
        for await (const e of readEvents(c.nats.nc, { filter: `gw.*.${again.migrationId}.>` })) seen.push(e.subject.split(".").slice(2).join("."));
        r.f.notes += `; the next migration: ${seen.join(" ").replaceAll(`${vms[0]}.`, "")}`;
      }
      expect(again.outcome, again.reason).toBe("succeeded");
      await expectSucceeded(c, r, again, { vms, source: f2, target: t2 });
      at = t2;
    }), 240_000);
});
