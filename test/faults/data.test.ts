/**
 * Fault case 5: page packs damaged in the object store after the preparation scan put
 * them there — bytes flipped, truncated, replaced by another pack's bytes (pages under the
 * wrong keys). The destination checks every pack before using a page of it: it never
 * resumes with wrong memory; the migration rolls back and the source runs. Each damaged pack
 * it met is removed and announced, the dedup index forgets its keys, and the next migration
 * sends those pages again and completes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { z } from "zod";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { waitForScans } from "../../cli/localCluster.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import type { packCorrupt, packStored } from "../../schemas/index.ts";
import { expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, startCluster, startVms, type Cluster } from "./harness.ts";

let c: Cluster;
beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest("x1", 1, { rate: 0 })]);
}, 120_000);
afterAll(async () => c?.stop(), 60_000);

describe("fault: damaged page packs", () => {
  it("5: corrupted, truncated and wrong-key packs: the destination never resumes with wrong memory", () =>
    runCase("5", "preseeded page packs overwritten in gw-packs (bytes flipped, truncated, another pack's bytes) before the migration", async (r) => {
      await waitForScans(c.nats.nc, "hostA", ["x1"]);
      const names: string[] = [];
      for await (const e of readEvents(c.nats.nc, { filter: "gw.pack.prep-hostA.stored" })) {
        if (e.result.ok && e.result.event.mode === "structured") names.push((e.result.event.data as z.infer<typeof packStored.data>).pack);
      }
      expect(names.length).toBeGreaterThan(4);
      const packs = await openPackStore(c.nats.nc);
      // Damage every preseeded pack, three ways in turn.
      for (let i = 0; i < names.length; i++) {
        const bytes = Buffer.from((await packs.get(names[i]!))!);
        if (i % 3 === 0) bytes[bytes.length >> 1] ^= 0xff;
        const damaged = i % 3 === 0 ? bytes : i % 3 === 1 ? bytes.subarray(0, bytes.length >> 1) : Buffer.from((await packs.get(names[(i + 1) % names.length]!))!);
        await packs.putUnchecked(names[i]!, damaged);
        r.f.faultsInjected++;
      }
      const migrationId = newMigrationId();
      const w = await MigrationWatch.start(c, migrationId);
      const s = await migrateGang({ nc: c.nats.nc, vms: ["x1"], sourceHost: "hostA", targetHost: "hostB", migrationId });
      await expectRolledBack(c, r, s, w, { vms: ["x1"], source: "hostA", target: "hostB", reason: /corrupt|does not match|pack/ });
      // The destination announced what it found damaged; those packs are gone from the store.
      const reported = new Set<string>();
      for await (const e of readEvents(c.nats.nc, { filter: "gw.pack.*.corrupt" })) {
        if (e.result.ok) reported.add((e.result.event.data as z.infer<typeof packCorrupt.data>).pack);
      }
      expect(reported.size).toBeGreaterThan(0);
      for (const name of reported) {
        expect(names).toContain(name);
        expect(await packs.get(name), `${name} removed from the store`).toBeNull();
      }
      r.f.notes = `${reported.size} damaged packs reported and removed after the first migration`;
      // Repaired: the dedup index forgot their keys, the source sends those pages again, and it moves.
      const again = await migrateGang({ nc: c.nats.nc, vms: ["x1"], sourceHost: "hostA", targetHost: "hostB" });
      expect(again.outcome, again.reason).toBe("succeeded");
      await expectSucceeded(c, r, again, { vms: ["x1"], source: "hostA", target: "hostB" });
    }), 240_000);
});
