/**
 * Fault case 5: page packs damaged in the object store after the preparation scan put
 * them there — bytes flipped, truncated, replaced by another pack's bytes (pages under the
 * wrong keys) — each kind on its own, on its own share of the preseeded packs. The
 * destination (an agent started afresh, with no page of the VM at hand) checks every pack
 * before using a page of it: the damage is caught there,
 * before any page of it reaches QEMU (the destination never says it holds the memory: no
 * `commit.ready`), with the reason that kind of damage gives (another pack's keys name
 * another pack; a flipped or cut payload does not decode or no longer matches its keys;
 * the object store's checksum may see it first); the migration rolls back
 * and the source runs. Each damaged pack it met is removed and announced, the dedup index
 * forgets its keys, and a later migration sends those pages again and completes (one that
 * meets another damaged pack of the share first rolls back on it too).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { z } from "zod";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { hostVms, waitForScans } from "../../cli/localCluster.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { openPackStore, type PackStore } from "../../adapters/dataplane/packStore.ts";
import { packNameOf } from "../../adapters/dataplane/pagePack.ts";
import type { packCorrupt, packStored } from "../../schemas/index.ts";
import { eventually, expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, startCluster, startVms, type CaseRecorder, type Cluster } from "./harness.ts";

let c: Cluster;
let packs: PackStore;
/** The preseeded packs, in three shares: one per kind of damage. */
const shares: string[][] = [[], [], []];
/** Where x1 runs now. */
let at = "hostA";
const other = () => (at === "hostA" ? "hostB" : "hostA");
const vms = ["x1"];

beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest("x1", 1, { rate: 0 })]);
  await waitForScans(c.nats.nc, "hostA", ["x1"]);
  const names: string[] = [];
  for await (const e of readEvents(c.nats.nc, { filter: "gw.pack.prep-hostA.stored" })) {
    if (e.result.ok && e.result.event.mode === "structured") names.push((e.result.event.data as z.infer<typeof packStored.data>).pack);
  }
  names.forEach((n, i) => shares[i % 3]!.push(n));
  packs = await openPackStore(c.nats.nc);
}, 180_000);
afterAll(async () => c?.stop(), 60_000);

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const STORE_CHECKSUM = "the object store's checksum does not match its bytes";
/**
 * How the destination names a pack's damage: its keys name another pack (bytes swapped in),
 * the store's checksum, a payload that does not decode or is short (truncated), or a page
 * that does not match its key (a flipped payload byte: the name is the keys', so it holds).
 */
const DAMAGE = `its content hashes to pack-[0-9a-f]{32}|${STORE_CHECKSUM}|pack payload does not decompress \\(lz4\\)|pack truncated: .+|pack holds \\d+ page bytes, expected .+|page \\d+ does not match its key [0-9a-f]{32}`;

/**
 * Overwrites the packs of one share with `damage(bytes)`, migrates x1, and requires: rolled
 * back, each damaged pack the destination met announced with exactly the reason its damaged
 * bytes give, removed from the store; no commit.ready (nothing reached the proof of loaded
 * memory); then the next migration completes and its proof holds.
 */
async function damagedMigration(r: CaseRecorder, share: string[], damage: (bytes: Buffer, name: string) => Promise<Buffer> | Buffer): Promise<void> {
  expect(share.length, "packs to damage").toBeGreaterThan(0);
  // What the store will return for each pack, and so the hash the destination will find.
  const damaged = new Map<string, string>();
  for (const name of share) {
    const bytes = Buffer.from((await packs.get(name))!);
    const bad = await damage(bytes, name);
    expect(bad.equals(bytes), `${name} damaged`).toBe(false);
    damaged.set(name, packNameOf(bad));
    await packs.putUnchecked(name, bad);
    r.f.faultsInjected++;
  }
  const [from, to] = [at, other()];
  // A destination agent of its own: what an earlier migration brought it (its page cache)
  // is not at hand, so it must fetch the packs.
  await c.agents.get(to)!.stop();
  await c.startAgent(to);
  const migrationId = newMigrationId();
  const w = await MigrationWatch.start(c, migrationId);
  const s = await migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to, migrationId });
  // Failed on a damaged pack of this share (found corrupt by its hash, or, for a later key
  // of it, known damaged already) — not on the proof of what QEMU loaded.
  const names = [...damaged.keys()].map(escape).join("|");
  await expectRolledBack(c, r, s, w, { vms, source: from, target: to, reason: new RegExp(`pack (${names})( is corrupt: (${DAMAGE})| was found damaged or missing)`) });
  expect(w.has("commit.ready"), "the destination reported the memory as loaded").toBe(false);
  // Announced (on the subject of whoever stored it: prep-hostA; the announcements may follow
  // the rollback), each with the hash its damaged bytes have; then gone from the store. The
  // destination stops at the first damaged pack, so it need not meet them all.
  const reported = await eventually(async () => {
    const m = new Map<string, string>();
    for await (const e of readEvents(c.nats.nc, { filter: "gw.pack.*.corrupt" })) {
      if (!e.result.ok) continue;
      const d = e.result.event.data as z.infer<typeof packCorrupt.data>;
      if (damaged.has(d.pack)) m.set(d.pack, d.reason);
    }
    return m.size > 0 ? m : undefined;
  }, 30_000, `a damaged pack of the ${damaged.size} announced`);
  for (const [name, reason] of reported) {
    expect(damaged.has(name), `${name} is one of the packs damaged here`).toBe(true);
    // The object store's own checksum may see the damage before gangway's check of the pack.
    expect(reason, name).toMatch(new RegExp(`pack ${escape(name)} is corrupt: (${damaged.get(name) === name ? DAMAGE : `its content hashes to ${damaged.get(name)}|${STORE_CHECKSUM}`})`));
    expect(await packs.get(name), `${name} removed from the store`).toBeNull();
  }
  r.f.notes = `${r.f.notes ? `${r.f.notes}; ` : ""}${reported.size} of ${damaged.size} damaged packs reported and removed`;
  // Repaired: the dedup index forgot their keys, the source sends those pages again, and it
  // moves. A pack is found damaged only when a destination reads it, and it stops at the first:
  // a later migration may meet other damaged packs of this share — it must then roll back on
  // one of them too (never commit, never fail otherwise) — before one completes.
  // Each damaged pack can fail at most one migration (once met it is announced and removed).
  for (let attempt = 1; ; attempt++) {
    const again = await migrateGang({ nc: c.nats.nc, vms, sourceHost: from, targetHost: to });
    if (again.outcome === "succeeded" || attempt > damaged.size) {
      await expectSucceeded(c, r, again, { vms, source: from, target: to });
      r.f.notes = `${r.f.notes}; moved at attempt ${attempt} after the damage`;
      break;
    }
    expect(again.vms[0]!.reason, `attempt ${attempt}`).toMatch(new RegExp(`pack (${names})( is corrupt| was found damaged or missing| is announced but not in the store)`));
    await eventually(async () => (await hostVms(c.nats.nc, from)).get("x1") === "running" || undefined, 60_000, "x1 running again at its source");
  }
  at = to;
}

describe("fault: damaged page packs", () => {
  it("5: packs holding another pack's bytes (pages under the wrong keys): caught at the destination, rolled back; then the VM moves", () =>
    runCase("5-packs-swapped", "preseeded page packs overwritten in gw-packs with another pack's bytes", async (r) => {
      // The bytes of a pack of another share, still intact (read before anything is damaged).
      const donors = shares[1]!.length ? shares[1]! : shares[2]!;
      await damagedMigration(r, shares[0]!, async (_bytes, name) => Buffer.from((await packs.get(donors[shares[0]!.indexOf(name) % donors.length]!))!));
    }), 600_000);

  it("5: packs with a byte flipped: caught at the destination, rolled back; then the VM moves", () =>
    runCase("5-packs-flipped", "preseeded page packs overwritten in gw-packs with one byte flipped", (r) =>
      damagedMigration(r, shares[1]!, (bytes) => {
        const b = Buffer.from(bytes);
        b[b.length >> 1] ^= 0xff;
        return b;
      })), 600_000);

  it("5: truncated packs: caught at the destination, rolled back; then the VM moves", () =>
    runCase("5-packs-truncated", "preseeded page packs overwritten in gw-packs with their first half", (r) =>
      damagedMigration(r, shares[2]!, (bytes) => Buffer.from(bytes.subarray(0, bytes.length >> 1)))), 600_000);
});
