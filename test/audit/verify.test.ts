/**
 * The audit's re-verification against a real nats-server, on migrations recorded event by
 * event (no QEMU): what verifies, and each failure named — a key no pack of its tenant
 * holds, a digest that differs, a missing manifest batch, a pack missing from the store.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { createPublisher, type EventPublisher } from "../../infra/events/publisher.ts";
import { createPageKeyer, keyHex, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { ImageDigest } from "../../adapters/dataplane/imageDigest.ts";
import { ManifestWriter } from "../../adapters/dataplane/manifestRecords.ts";
import { encodePack } from "../../adapters/dataplane/pagePack.ts";
import { openPackStore, type PackStore } from "../../adapters/dataplane/packStore.ts";
import {
  commitReady, manifestBatch, manifestCompleted, manifestVerified, manifestHeader, migrationCommitted, migrationPlanned, migrationRequested, migrationRolledBack, migrationSucceeded, migrationFailed, packStored,
} from "../../schemas/index.ts";
import { auditMigration, listMigrations } from "../../infra/audit/audit.ts";
import { formatAuditReport, formatMigrationList } from "../../infra/audit/format.ts";

let nats: TestNats;
let pub: EventPublisher;
let packs: PackStore;

beforeAll(async () => {
  nats = await startTestNats();
  pub = createPublisher(jetstream(nats.nc), "test/audit");
  packs = await openPackStore(nats.nc);
});
afterAll(async () => {
  await nats[Symbol.asyncDispose]();
});

const PAGES = 16;
const page = () => new Uint8Array(randomBytes(PAGE_SIZE));

/** Stores a pack of `pages` for a tenant and announces it as stored by `by` (a migration id or prep-<host>). */
async function storePack(by: string, tenant: string, pages: Uint8Array[], o: { store?: boolean } = {}) {
  const keyer = createPageKeyer(tenant);
  const keys = new Uint8Array(pages.length * 16);
  pages.forEach((p, i) => keyer.keyInto(p, keys, i * 16));
  const body = new Uint8Array(pages.length * PAGE_SIZE);
  pages.forEach((p, i) => body.set(p, i * PAGE_SIZE));
  const pack = encodePack(keys, body);
  if (o.store !== false) await packs.put(pack.name, pack.bytes);
  await pub.publish(packStored, { migrationId: by }, {
    migrationId: by, sourceHost: "h1", vm: "v1", tenant, pack: pack.name, codec: pack.codec,
    keys: pages.map((_, i) => keyHex(keys, i * 16)), rawBytes: pack.rawBytes, storedBytes: pack.bytes.byteLength,
  });
  return pack.name;
}

interface Scenario {
  /** Round 1 writes pages 0..15 (page 3 a zero page); round 2 rewrites pages 0 and 1. */
  round1: Uint8Array[];
  round2: Uint8Array[];
  /** Manifest batches to leave out (by seq). */
  dropBatches?: number[];
  /** Digest the commit records, if not the true one. */
  committedDigest?: string;
  outcome?: "committed" | "rolledback";
  /** The source's RAM held this page at this offset otherwise than its stream: repaired; `ramDigest` overrides what its proof says. */
  repair?: { offset: number; bytes: Uint8Array; ramDigest?: string };
}

/** Records a one-VM migration the way source, destination and commit function do. */
async function recordMigration(id: string, tenant: string, s: Scenario): Promise<string> {
  const keyer = createPageKeyer(tenant);
  await pub.publish(migrationRequested, { migrationId: id }, { migrationId: id, vms: ["v1"], sourceHost: "h1", targetHost: "h2", requestedBy: "evacuator", reason: "host h1 drains", evacuationId: "ev-1", options: {} });
  await pub.publish(migrationPlanned, { migrationId: id }, { migrationId: id, sourceHost: "h1", targetHost: "h2", vms: [{ vm: "v1", tenant, memoryBytes: PAGES * PAGE_SIZE }], options: {} as never });
  await pub.publish(manifestHeader, { migrationId: id, vm: "v1" }, {
    migrationId: id, vm: "v1", tenant, sourceHost: "h1", machine: "pc", blocks: [{ id: "m0", usedBytes: PAGES * PAGE_SIZE }], ramSetupWord: "65536", configRaw: "", ramSection: { id: 2, instance: 0, version: 4 },
  });
  const digest = new ImageDigest([PAGES * PAGE_SIZE]);
  let seq = 0;
  let records = 0;
  const batch = async (round: number, pages: { offset: number; bytes?: Uint8Array }[], final: boolean) => {
    const w = new ManifestWriter(pages.length);
    for (const p of pages) {
      if (!p.bytes) {
        w.addZero(p.offset, 0, 0);
        digest.fill(0, p.offset, 0);
      } else {
        const k = keyer.key(p.bytes);
        w.addPage(p.offset, 0, k);
        digest.keyed(0, p.offset, k);
      }
    }
    const { count, body } = w.take();
    records += count;
    const n = seq++;
    if (!s.dropBatches?.includes(n)) await pub.publishBinary(manifestBatch, { migrationId: id, vm: "v1" }, { migrationId: id, vm: "v1", tenant, round, seq: n, count, final }, body);
  };
  await batch(1, s.round1.slice(0, 8).map((bytes, i) => ({ offset: i * PAGE_SIZE, ...(i === 3 ? {} : { bytes }) })), false);
  await batch(1, s.round1.slice(8).map((bytes, i) => ({ offset: (8 + i) * PAGE_SIZE, bytes })), false);
  await batch(2, s.round2.map((bytes, i) => ({ offset: i * PAGE_SIZE, bytes })), true);
  const streamDigest = digest.digest();
  let d = streamDigest;
  let verified: { sourceram: string; sent: string } | undefined;
  if (s.repair) {
    const w = new ManifestWriter(1);
    const k = keyer.key(s.repair.bytes);
    w.addPage(s.repair.offset, 0, k);
    digest.keyed(0, s.repair.offset, k);
    d = digest.digest();
    verified = { sourceram: s.repair.ramDigest ?? d, sent: d };
    await pub.publishBinary(manifestVerified, { migrationId: id, vm: "v1" }, {
      migrationId: id, vm: "v1", tenant, count: 1, sourceramdigest: verified.sourceram, sentdigest: verified.sent, devicestatedigest: "ee".repeat(32), differing: 1, readms: 3, firstdiffering: `m0+0x${s.repair.offset.toString(16)}`,
    }, w.take().body);
  }
  await pub.publish(manifestCompleted, { migrationId: id, vm: "v1" }, { migrationId: id, vm: "v1", deviceState: `state-${id}-v1`, deviceStateBytes: 10, rounds: 2, batches: seq, records, digest: streamDigest });
  await pub.publish(commitReady, { migrationId: id }, { migrationId: id, vm: "v1", targetHost: "h2", pagesExpected: PAGES, pagesDelivered: PAGES, digest: s.committedDigest ?? d });
  if (s.outcome === "rolledback") {
    await pub.publish(migrationRolledBack, { migrationId: id }, { migrationId: id, vm: "v1", reason: "destination memory does not match", phase: "Failed", sourceRunning: true });
    await pub.publish(migrationFailed, { migrationId: id }, { migrationId: id, reason: "1 of 1 VMs rolled back", phase: "Failed" });
  } else {
    await pub.publish(migrationCommitted, { migrationId: id }, { migrationId: id, vm: "v1", targetHost: "h2", pages: PAGES, digest: s.committedDigest ?? d,
      ...(verified ? { proof: { source_ram_digest: verified.sourceram, sent_digest: verified.sent, destination_digest: s.committedDigest ?? d, pages_repaired: 1 } } : {}),
      stats: { time_elapsed: 0, data_processed: 0, memory_iteration: 2 } });
    await pub.publish(migrationSucceeded, { migrationId: id }, { migrationId: id, vms: ["v1"], stats: { time_elapsed: 0, data_processed: 0 } });
  }
  return d;
}

/** Pages for a scenario, their packs stored: most by the migration, two preseeded by a prep pass. */
async function pagesStored(id: string, tenant: string) {
  const round1 = Array.from({ length: PAGES }, page);
  const round2 = [page(), page()];
  await storePack(id, tenant, [...round1.slice(0, 3), ...round1.slice(4, 14), ...round2]);
  await storePack("prep-h1", tenant, round1.slice(14));
  return { round1, round2 };
}

describe("audit re-verification (real nats-server, recorded events)", () => {
  it("verifies a migration whose pages live in its own packs and a preparation pass's, every round's content", async () => {
    const p = await pagesStored("m-good", "t1");
    const digest = await recordMigration("m-good", "t1", p);
    const r = await auditMigration(nats.nc, "m-good");
    expect(r.failures).toEqual([]);
    expect(r.verified).toBe(true);
    expect(r.verification.vms).toEqual([
      expect.objectContaining({ vm: "v1", tenant: "t1", entries: 18, pageEntries: 17, fillEntries: 1, distinctKeys: 17, batches: 3, rounds: 2, pagesCovered: 16, pagesTotal: 16, rebuiltDigest: digest, digestVerified: true, entriesVerified: true }),
    ]);
    expect(r.verification.packs).toMatchObject({ candidates: 2, fetched: 2, verified: 2, pages: 17 });
    expect(r.timeline.requested).toMatchObject({ requestedBy: "evacuator", reason: "host h1 drains", evacuationId: "ev-1" });
    expect(r.timeline.vms[0]).toMatchObject({ vm: "v1", outcome: "committed", rounds: 2, digests: { source: digest, committed: digest, destination: digest } });
    expect(formatAuditReport(r)).toMatch(/^VERIFIED/m);
  });

  it("names the VM and the key when a key resolves to no pack of its tenant (another tenant's identical page does not count)", async () => {
    const p = await pagesStored("m-tenant", "t1");
    const lonely = page();
    p.round2[1] = lonely;
    await storePack("m-other", "t2", [lonely]); // same bytes, other tenant: another key
    await recordMigration("m-tenant", "t1", p);
    const r = await auditMigration(nats.nc, "m-tenant");
    expect(r.verified).toBe(false);
    expect(r.failures).toEqual([
      expect.objectContaining({ kind: "unresolved-keys", vm: "v1", tenant: "t1", keys: [keyHex(createPageKeyer("t1").key(lonely))], keyCount: 1, entries: 1 }),
    ]);
    expect(formatAuditReport(r)).toContain(keyHex(createPageKeyer("t1").key(lonely)));
  });

  it("reports a digest recorded at commit that the manifest does not rebuild", async () => {
    const p = await pagesStored("m-digest", "t1");
    const truth = await recordMigration("m-digest", "t1", { ...p, committedDigest: "ab".repeat(32) });
    const r = await auditMigration(nats.nc, "m-digest");
    // The commit recorded what the destination proved: both differ from the rebuilt image.
    expect(r.failures).toEqual([
      expect.objectContaining({ kind: "digest", vm: "v1", against: "committed", recorded: "ab".repeat(32), rebuilt: truth }),
      expect.objectContaining({ kind: "digest", vm: "v1", against: "destination", recorded: "ab".repeat(32), rebuilt: truth }),
    ]);
    expect(r.verification.vms[0]).toMatchObject({ digestVerified: false, entriesVerified: true, sourceDigest: truth });
  });

  it("reports a manifest batch that is not retained", async () => {
    const p = await pagesStored("m-batch", "t1");
    await recordMigration("m-batch", "t1", { ...p, dropBatches: [1] });
    const r = await auditMigration(nats.nc, "m-batch");
    const kinds = r.failures.map((f) => f.kind);
    expect(new Set(kinds)).toEqual(new Set(["manifest", "digest"]));
    expect(r.failures.filter((f) => f.kind === "manifest").map((f) => f.message).join("\n")).toMatch(/1 manifest batches are missing/);
  });

  it("reports a pack announced but missing from the store, once, charging it the entries it leaves unresolved", async () => {
    const round1 = Array.from({ length: PAGES }, page);
    const round2 = [page(), page()];
    await storePack("m-missing", "t1", [...round1.slice(0, 3), ...round1.slice(4, 14)]);
    const gone = await storePack("m-missing", "t1", round2, { store: false });
    await storePack("prep-h1", "t1", round1.slice(14));
    await recordMigration("m-missing", "t1", { round1, round2 });
    const r = await auditMigration(nats.nc, "m-missing");
    expect(r.failures).toEqual([expect.objectContaining({ kind: "pack", pack: gone, problems: ["missing from the pack store"], vms: ["v1"], entries: 2 })]);
  });

  it("keeps a rollback and its reason in the timeline, and lists migrations by host", async () => {
    const p = await pagesStored("m-rolled", "t1");
    await recordMigration("m-rolled", "t1", { ...p, outcome: "rolledback" });
    const r = await auditMigration(nats.nc, "m-rolled");
    expect(r.timeline.outcome).toBe("failed");
    expect(r.timeline.vms[0]).toMatchObject({ outcome: "rolledback", reason: "destination memory does not match" });
    expect(r.verified).toBe(true); // what was recorded still verifies: the rollback is the record
    const h1 = await listMigrations(nats.nc, { host: "h1" });
    expect(h1.map((m) => m.migrationId)).toEqual(expect.arrayContaining(["m-good", "m-rolled"]));
    expect(h1.find((m) => m.migrationId === "m-rolled")).toMatchObject({ role: "source", outcome: "failed", rolledBack: ["v1"], committed: [], failureReason: "1 of 1 VMs rolled back", evacuationId: "ev-1" });
    expect(h1.find((m) => m.migrationId === "m-good")).toMatchObject({ outcome: "succeeded", committed: ["v1"] });
    expect((await listMigrations(nats.nc, { host: "h2" })).every((m) => m.role === "target")).toBe(true);
    expect(await listMigrations(nats.nc, { host: "h9" })).toEqual([]);
    const text = formatMigrationList("h1", h1);
    expect(text).toMatch(/m-rolled .* source h1 → h2 +failed .*by evacuator \(host h1 drains\) — 1 of 1 VMs rolled back/);
    expect(formatMigrationList("h9", [])).toBe("no migration involved host h9");
  });

  it("verifies a repair pass: the stream's image plus the pages the source's RAM held otherwise is what was committed", async () => {
    const p = await pagesStored("m-repair", "t1");
    const fresh = page();
    await storePack("m-repair", "t1", [fresh]);
    const delivered = await recordMigration("m-repair", "t1", { ...p, repair: { offset: 5 * PAGE_SIZE, bytes: fresh } });
    const r = await auditMigration(nats.nc, "m-repair");
    expect(r.failures).toEqual([]);
    expect(r.verification.vms[0]).toMatchObject({ pagesRepaired: 1, deliveredDigest: delivered, digestVerified: true, entriesVerified: true });
    expect(r.verification.vms[0]!.rebuiltDigest).not.toBe(delivered);
    expect(r.timeline.vms[0]!.proof).toMatchObject({ source_ram_digest: delivered, sent_digest: delivered, destination_digest: delivered, pages_repaired: 1 });
  });

  it("reports a source-RAM digest that the stream and its repair pass do not rebuild", async () => {
    const p = await pagesStored("m-ram", "t1");
    const fresh = page();
    await storePack("m-ram", "t1", [fresh]);
    await recordMigration("m-ram", "t1", { ...p, repair: { offset: 5 * PAGE_SIZE, bytes: fresh, ramDigest: "cd".repeat(32) } });
    const r = await auditMigration(nats.nc, "m-ram");
    expect(r.verified).toBe(false);
    expect(r.failures.map((f) => f.kind === "digest" && f.against)).toEqual(["source-ram", "source-ram"]);
  });
});
