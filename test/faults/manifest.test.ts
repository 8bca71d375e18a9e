/**
 * Fault case 5, the manifest side: extra gw.manifest.<migration>.<vm>.batch events
 * published into a running migration — an old batch replayed after newer ones (reordered),
 * a batch re-published under its own id (duplicated), a batch whose page records trade keys
 * (pages under the wrong keys), one whose pages are forged as filled pages, and one naming a
 * key no pack holds. The destination takes only the source host's manifest messages, in
 * their sequence: every stored forgery is dead-lettered (with the reason: not the source
 * host's, or out of sequence) and the migration moves the VM as if none had been published —
 * its proof holds (the three digests, the RAM dumps of both ends identical) and the guest
 * verifies. A rollback, or a stall the suite has to cancel, fails the case.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeliverPolicy, jetstream, type ConsumerMessages } from "@nats-io/jetstream";
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { resolve } from "node:path";
import { migrateGang, newMigrationId, type GangSummary } from "../../cli/gangMigration.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { MANIFEST_RECORD_BYTES, ManifestKind, manifestBatch } from "../../schemas/index.ts";
import { eventually, expectRolledBack, expectSucceeded, guest, MigrationWatch, runCase, startCluster, startVms, type CaseRecorder, type Cluster } from "./harness.ts";

const BIN = resolve(import.meta.dirname, "../../bin/gangway.mjs");
let c: Cluster;
const vm = "m1";
let at = "hostA";
const other = () => (at === "hostA" ? "hostB" : "hostA");

beforeAll(async () => {
  c = await startCluster();
  await startVms(c.nats.nc, "hostA", [guest(vm, 5)]);
}, 120_000);
afterAll(async () => c?.stop(), 60_000);

interface Batch {
  id: string;
  ext: { migrationId: string; vm: string; tenant: string; round: number; seq: number; count: number; final: boolean };
  body: Uint8Array;
}

/** The VM's manifest batches as the source publishes them. */
async function captureBatches(migrationId: string): Promise<{ batches: Batch[]; stop(): void }> {
  const js = jetstream(c.nats.nc);
  const consumer = await js.consumers.get(EVENTS_STREAM, { filter_subjects: `gw.manifest.${migrationId}.${vm}.batch`, deliver_policy: DeliverPolicy.All });
  const messages: ConsumerMessages = await consumer.consume();
  const batches: Batch[] = [];
  void (async () => {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      if (d.ok && d.event.mode === "binary") batches.push({ id: d.event.id, ext: d.event.ext as Batch["ext"], body: new Uint8Array(d.event.data) });
    }
  })().catch(() => undefined);
  return {
    batches,
    stop() {
      messages.stop();
      void consumer.delete().catch(() => undefined);
    },
  };
}

const pageRecords = (b: Batch) => Array.from({ length: b.ext.count }, (_, i) => i).filter((i) => b.body[i * MANIFEST_RECORD_BYTES + 9] === ManifestKind.page);

/** How each forgery is made from the batches seen so far; returns the events to publish. */
const FORGERIES: Record<string, { title: string; make(seen: Batch[]): { ext: Batch["ext"]; body: Uint8Array; id: string }[] }> = {
  reordered: {
    title: "the first batch replayed (new event id) after later ones, and re-published under its own id",
    make: (seen) => [
      { ext: seen[0]!.ext, body: seen[0]!.body, id: `forged-replay-${seen[0]!.id}` },
      { ext: seen[0]!.ext, body: seen[0]!.body, id: seen[0]!.id },
    ],
  },
  "wrong-key": {
    title: "a batch whose page records trade keys (each page under another page's key)",
    make: (seen) => {
      const b = seen.find((x) => pageRecords(x).length >= 2) ?? seen[0]!;
      const body = Uint8Array.from(b.body);
      const recs = pageRecords(b);
      for (let n = 0; n + 1 < recs.length; n += 2) {
        const [i, j] = [recs[n]! * MANIFEST_RECORD_BYTES + 10, recs[n + 1]! * MANIFEST_RECORD_BYTES + 10];
        const ki = body.slice(i, i + 16);
        body.copyWithin(i, j, j + 16);
        body.set(ki, j);
      }
      return [{ ext: { ...b.ext, seq: seen.at(-1)!.ext.seq + 1 }, body, id: `forged-swap-${b.id}` }];
    },
  },
  forged: {
    title: "a batch whose pages are forged as pages filled with 0xa5",
    make: (seen) => {
      const b = seen.at(-1)!;
      const body = Uint8Array.from(b.body);
      for (let i = 0; i < b.ext.count; i++) {
        const at = i * MANIFEST_RECORD_BYTES;
        body[at + 9] = ManifestKind.zero;
        body.fill(0, at + 10, at + 26);
        body[at + 10] = 0xa5;
      }
      return [{ ext: { ...b.ext, seq: b.ext.seq + 1, final: false }, body, id: `forged-fill-${b.id}` }];
    },
  },
  "unknown-key": {
    title: "a batch naming a page key that no pack holds",
    make: (seen) => {
      const b = seen.find((x) => pageRecords(x).length > 0) ?? seen[0]!;
      const i = pageRecords(b)[0] ?? 0;
      const body = Uint8Array.from(b.body.subarray(i * MANIFEST_RECORD_BYTES, (i + 1) * MANIFEST_RECORD_BYTES));
      body[9] = ManifestKind.page;
      body.set(randomBytes(16), 10);
      return [{ ext: { ...b.ext, seq: seen.at(-1)!.ext.seq + 1, count: 1, final: false }, body, id: `forged-unknown-${b.id}` }];
    },
  },
};

async function forgedMigration(r: CaseRecorder, kind: keyof typeof FORGERIES): Promise<GangSummary> {
  const from = at;
  const to = other();
  const migrationId = newMigrationId();
  const w = await MigrationWatch.start(c, migrationId);
  const cap = await captureBatches(migrationId);
  // A capped link (QEMU's own bandwidth limit) keeps batches coming for several seconds.
  const done = migrateGang({ nc: c.nats.nc, vms: [vm], sourceHost: from, targetHost: to, migrationId, options: { bandwidthMBps: 8, progressTimeoutSec: 10 }, idleTimeoutMs: 120_000 });
  await eventually(() => cap.batches.length >= 3 || undefined, 60_000, "three manifest batches");
  const pub = createPublisher(jetstream(c.nats.nc), "test/forger");
  const seqs: number[] = [];
  const stored: string[] = [];
  for (const f of FORGERIES[kind]!.make([...cap.batches])) {
    const ack = await pub.publishBinary(manifestBatch, { migrationId, vm }, f.ext, f.body, { id: f.id });
    if (!ack.duplicate) {
      seqs.push(ack.seq);
      stored.push(f.id);
    }
    r.f.faultsInjected++;
  }
  // A migration that stalls is a finding, not a reason to wait out its completion budget
  // (150 s): after 60 s it is cancelled (and must then roll back cleanly), and what the
  // stream holds of it goes into the notes.
  let stalled = "";
  const timer = setTimeout(() => {
    void (async () => {
      const seen: string[] = [];
      for await (const e of readEvents(c.nats.nc, { filter: `gw.*.${migrationId}.>` })) seen.push(e.subject.split(".").slice(2).join(".").replace(`${vm}.`, ""));
      stalled = `stalled 60 s, cancelled; last events: ${seen.filter((x) => !x.startsWith("lookup")).slice(-12).join(" ")}`;
      execFileSync(process.execPath, [BIN, "migrate", "--cancel", migrationId, "--reason", "fault suite: stalled", "--nats", c.nats.url]);
    })().catch(() => undefined);
  }, 60_000);
  const s = await done.finally(() => clearTimeout(timer));
  if (stalled) r.f.notes = `${r.f.notes ? `${r.f.notes}; ` : ""}${kind}: ${stalled}`;
  cap.stop();
  // The forgeries landed inside the manifest (before the source's completed event).
  let completedSeq = Infinity;
  for await (const e of readEvents(c.nats.nc, { filter: `gw.manifest.${migrationId}.${vm}.completed` })) completedSeq = Math.min(completedSeq, e.seq);
  expect(seqs.length).toBeGreaterThan(0);
  for (const q of seqs) expect(q, "forged batch stored before the source completed").toBeLessThan(completedSeq);
  // Each stored forgery was refused by the destination, with its reason.
  const refused = await eventually(async () => {
    const ids = new Map<string, string>();
    for await (const e of readEvents(c.nats.nc, { filter: "gw.dlq.manifest" })) {
      if (!e.result.ok || e.result.event.mode !== "structured") continue;
      const d = e.result.event.data as { reason: string; originalHeaders: Record<string, string> };
      const id = d.originalHeaders["ce-id"];
      if (id) ids.set(decodeURIComponent(id), d.reason);
    }
    return stored.every((id) => ids.has(id)) ? ids : undefined;
  }, 15_000, "a dead letter for each stored forgery");
  for (const id of stored) expect(refused.get(id), id).toMatch(/sent by test\/forger|seq \d+ (was taken already|is out of order)/);
  r.f.notes = `${r.f.notes ? `${r.f.notes}; ` : ""}${kind}: ${s.outcome}${s.reason ? ` (${s.vms[0]?.reason?.slice(0, 120) ?? s.reason.slice(0, 120)})` : ""}`;
  // Every forgery was refused before the destination read it, so nothing may change: the VM
  // moves as if none had been published. A stall the suite cancelled is a failure here (its
  // rollback reason is the suite's own cancel text, not a detection); so is any rollback.
  expect(stalled, `${kind}: the migration stalled and the suite cancelled it`).toBe("");
  if (s.outcome !== "succeeded") {
    await expectRolledBack(c, r, s, w, { vms: [vm], source: from, target: to });
    expect(s.vms[0]?.reason ?? "").not.toMatch(/fault suite/);
  }
  expect(s.outcome, `${kind}: ${s.vms[0]?.reason ?? s.reason}`).toBe("succeeded");
  w.stop();
  await expectSucceeded(c, r, s, { vms: [vm], source: from, target: to });
  at = to;
  return s;
}

describe("fault: forged, reordered and duplicated manifest batches", () => {
  it("5: the destination never resumes with wrong memory", () =>
    runCase("5-manifest", "extra manifest batches published into running migrations: an old one replayed late and re-sent under its id, keys traded between pages, pages forged as filled, a key no pack holds", async (r) => {
      const outcomes: Record<string, string> = {};
      for (const kind of Object.keys(FORGERIES)) outcomes[kind] = (await forgedMigration(r, kind)).outcome;
      // Forgeries that would change memory never reach QEMU: each is dead-lettered (not the
      // source host's, or out of the manifest's sequence) and the VM moves and verifies.
      for (const kind of Object.keys(FORGERIES)) expect(outcomes[kind], kind).toBe("succeeded");
    }), 300_000);
});
