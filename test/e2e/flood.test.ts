/**
 * A gang migration whose own subjects are flooded while it runs: unreadable bytes, events of
 * the wrong type for their subject, events naming another migration, replayed and
 * out-of-order manifest sequence numbers, a second header, messages from a foreign source,
 * on the manifest, pack announcement, commit and dedup subjects, through JetStream and
 * plain core publish. The gang must still complete, every guest verify its memory on the
 * destination, and every flooded message be found on gw.dlq.> with a reason.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import type { z } from "zod";
import { startTestNats, eventually, type TestNats } from "../helpers/nats.ts";
import { startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang, newMigrationId } from "../../cli/gangMigration.ts";
import { encodeBinary, encodeStructured, type EncodedMessage } from "../../infra/events/binding.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { ManifestWriter } from "../../adapters/dataplane/manifestRecords.ts";
import {
  commitAbort, commitReady, deadLetter, hashResolved, manifestBatch, manifestCommand, manifestCompleted, manifestHeader, manifestVerified, packStored, RESOLVED_RECORD_BYTES,
} from "../../schemas/index.ts";

let nats: TestNats;
let work: string;
let procs: GangwayProcess[];

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gangway-flood-"));
  procs = [];
});

afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

type Header = z.infer<typeof manifestHeader.data>;
type DeadLetter = z.infer<typeof deadLetter.data>;
const SOURCE = "gangway/host/hostA";
const FOREIGN = "mig-19990101000000-f0f0f0f0";

interface Flooded {
  name: string;
  subject: string;
  payload: Uint8Array;
  headers: ReturnType<typeof natsHeaders>;
  /** Plain core publish (the stream stores it all the same), not a JetStream one. */
  core?: boolean;
}

const raw = (name: string, subject: string, payload: Uint8Array, core = false): Flooded => ({ name, subject, payload, headers: natsHeaders(), core });
const as = (name: string, m: EncodedMessage, subject = m.subject): Flooded => ({ name, subject, payload: m.payload, headers: m.headers });
const bytes = (s: string) => new TextEncoder().encode(s);

/** What is flooded onto one VM's manifest subjects. */
function manifestFlood(migrationId: string, vm: string, h: Header): Flooded[] {
  const p = { migrationId, vm };
  const base = `gw.manifest.${migrationId}.${vm}`;
  const w = new ManifestWriter(1);
  w.addZero(0, 0, 0x5a);
  const { count, body } = w.take();
  const ext = { migrationId, vm, tenant: h.tenant, round: 0, seq: 0, count, final: false };
  const batch = (seq: number, source = SOURCE, e: Partial<typeof ext> = {}) => encodeBinary(manifestBatch, p, { ...ext, ...e, seq }, body, { source, id: `flood-${vm}-b${seq}-${randomBytes(4).toString("hex")}` });
  const ping = (source: string) => encodeStructured(manifestCommand, p, { migrationId, vm, seq: 1, command: { cmd: "ping", value: 7 } }, { source });
  const completed = (m: string) => encodeStructured(manifestCompleted, { migrationId: m, vm }, { migrationId: m, vm, deviceState: "state-x", deviceStateBytes: 0, rounds: 0, batches: 1, records: 1, digest: "00".repeat(32) }, { source: SOURCE });
  return [
    raw(`${vm}-batch-unparsable`, `${base}.batch`, new Uint8Array([0xff, 0xfe, 0x00, 0x80]), true),
    raw(`${vm}-command-not-json`, `${base}.command`, bytes("{ not json")),
    raw(`${vm}-header-not-json`, `${base}.header`, bytes("[1,2"), true),
    as(`${vm}-batch-wrong-type`, ping(SOURCE), `${base}.batch`),
    as(`${vm}-batch-other-migration`, batch(0, SOURCE, { migrationId: FOREIGN }), `${base}.batch`),
    as(`${vm}-batch-replayed-seq`, batch(0)),
    as(`${vm}-batch-gap-seq`, batch(1_000_000)),
    as(`${vm}-header-second`, encodeStructured(manifestHeader, p, h, { source: SOURCE })),
    as(`${vm}-command-foreign-source`, ping("gangway/host/mallory")),
    as(`${vm}-completed-other-migration`, completed(FOREIGN), `${base}.completed`),
    raw(`${vm}-completed-unparsable`, `${base}.completed`, bytes("\u0000"), true),
    // Well-formed, of this very migration and VM, but not from its source host.
    as(`${vm}-completed-forged-source`, encodeStructured(manifestCompleted, p, { migrationId, vm, deviceState: "state-x", deviceStateBytes: 0, rounds: 0, batches: 1, records: 1, digest: "00".repeat(32) }, { source: "gangway/host/mallory" })),
    raw(`${vm}-verified-unparsable`, `${base}.verified`, bytes("junk")),
    as(`${vm}-verified-forged-source`, encodeBinary(manifestVerified, p, {
      migrationId, vm, tenant: h.tenant, count: 0, sourceramdigest: "00".repeat(32), sentdigest: "00".repeat(32), devicestatedigest: "00".repeat(32), differing: 0, readms: 1,
    }, new Uint8Array(0), { source: "gangway/host/mallory" })),
  ];
}

/** What is flooded onto the migration's pack, commit and dedup subjects. */
function otherFlood(migrationId: string, h: Header): Flooded[] {
  const key = (shard0 = false) => {
    const k = randomBytes(16);
    if (shard0) k[0] = k[0]! & 0x3f;
    return k;
  };
  const pack = (m: string, source: string) =>
    encodeStructured(packStored, { migrationId: m }, { migrationId: m, sourceHost: "hostA", vm: h.vm, tenant: h.tenant, pack: `pack-${randomBytes(16).toString("hex")}`, codec: "lz4", keys: [key().toString("hex")], rawBytes: 4096, storedBytes: 64 }, { source });
  const abort = (m: string) => encodeStructured(commitAbort, { migrationId: m }, { migrationId: m, vm: h.vm, reason: "forged", reportedBy: "mallory" }, { source: "gangway/host/mallory" });
  const ready = encodeStructured(commitReady, { migrationId: FOREIGN }, { migrationId: FOREIGN, vm: h.vm, targetHost: "hostB", pagesExpected: 1, pagesDelivered: 1, digest: "00".repeat(32) }, { source: "gangway/host/mallory" });
  const answer = new Uint8Array(RESOLVED_RECORD_BYTES);
  answer[0] = 1;
  answer.set(key(true), 1);
  const resolved = encodeBinary(hashResolved, { shard: "0" }, { migrationId, vm: h.vm, tenant: h.tenant, targetHost: "hostB", shard: 0, seq: 0, count: 1, lookupId: `lk-${migrationId}-forged-999999999` }, answer, { source: "gangway/function/hash" });
  return [
    raw("pack-unparsable", `gw.pack.${migrationId}.stored`, new Uint8Array([1, 2, 3]), true),
    as("pack-other-migration", pack(FOREIGN, SOURCE), `gw.pack.${migrationId}.stored`),
    as("pack-foreign-source", pack(migrationId, "gangway/host/mallory")),
    raw("commit-ready-unparsable", `gw.commit.${migrationId}.ready`, bytes("nope")),
    as("commit-ready-forged-source", encodeStructured(commitReady, { migrationId }, { migrationId, vm: h.vm, targetHost: "hostB", pagesExpected: 1, pagesDelivered: 1, digest: "00".repeat(32) }, { source: "gangway/host/mallory" })),
    as("commit-ready-other-migration", ready, `gw.commit.${migrationId}.ready`),
    as("commit-ready-wrong-type", abort(migrationId), `gw.commit.${migrationId}.ready`),
    as("commit-abort-other-migration", abort(FOREIGN), `gw.commit.${migrationId}.abort`),
    raw("commit-abort-unparsable", `gw.commit.${migrationId}.abort`, bytes("{}"), true),
    raw("hash-resolved-unparsable", "gw.hash.resolved.0", bytes("not an answer"), true),
    as("hash-resolved-unknown-lookup", resolved),
    raw("hash-lookup-unparsable", `gw.hash.${migrationId}.lookup.0`, bytes("{\"x\":1}")),
  ];
}

async function header(migrationId: string, vm: string): Promise<Header | undefined> {
  for await (const e of readEvents(nats.nc, { filter: `gw.manifest.${migrationId}.${vm}.header` })) if (e.result.ok) return e.result.event.data as Header;
  return undefined;
}
async function batches(migrationId: string, vm: string): Promise<number> {
  let n = 0;
  for await (const e of readEvents(nats.nc, { filter: `gw.manifest.${migrationId}.${vm}.batch` })) if (e.result.ok) n++;
  return n;
}

describe("flooded gang migration (real QEMU, real nats-server)", () => {
  it("completes and verifies while its subjects are flooded; every flooded message is dead-lettered with a reason", async () => {
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "hostA", work), await startAgentProcess(nats.url, "hostB", work));
    const vms = ["f1", "f2"];
    await startVms(nats.nc, "hostA", vms.map((n, i) => testGuestSpec(n, { memoryMiB: 128, seed: i + 11, image: 5, zero: 10, rate: 500 })));
    const migrationId = newMigrationId();
    // QEMU's own bandwidth cap keeps the manifest coming for a while: the flood lands inside it.
    const done = migrateGang({ nc: nats.nc, vms, sourceHost: "hostA", targetHost: "hostB", migrationId, options: { bandwidthMBps: 4 }, idleTimeoutMs: 180_000 });
    const headers = new Map<string, Header>();
    for (const vm of vms) {
      headers.set(vm, await eventually(async () => ((await batches(migrationId, vm)) >= 1 ? header(migrationId, vm) : undefined), 120_000, `${vm}'s first manifest batch`));
    }
    const flood = [...vms.flatMap((vm) => manifestFlood(migrationId, vm, headers.get(vm)!)), ...otherFlood(migrationId, headers.get(vms[0]!)!)];
    const js = jetstream(nats.nc);
    for (const f of flood) {
      f.headers.set("x-probe", f.name);
      if (f.core) nats.nc.publish(f.subject, f.payload, { headers: f.headers });
      else await js.publish(f.subject, f.payload, { headers: f.headers, msgID: `flood-${migrationId}-${f.name}` });
    }
    await nats.nc.flush();
    let completedSeq = Infinity;
    const floodedAt = (await (await jetstreamManager(nats.nc)).streams.info(EVENTS_STREAM)).state.last_seq;

    const s = await done;
    expect(s.outcome, s.reason).toBe("succeeded");
    for (const vm of vms) expect(await verifyGuest(nats.nc, "hostB", vm)).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    // The flood landed inside the manifests: before either source completed (its own completed events, not the forged ones).
    for (const vm of vms) for await (const e of readEvents(nats.nc, { filter: `gw.manifest.${migrationId}.${vm}.completed` })) if (e.result.ok && e.result.event.source === SOURCE) completedSeq = Math.min(completedSeq, e.seq);
    expect(floodedAt).toBeLessThan(completedSeq);

    const deadLetters = async () => {
      const m = new Map<string, DeadLetter[]>();
      for await (const e of readEvents(nats.nc, { filter: "gw.dlq.>" })) {
        if (!e.result.ok || e.result.event.mode !== "structured") continue;
        const d = e.result.event.data as DeadLetter;
        const p = d.originalHeaders["x-probe"];
        if (p) m.set(p, [...(m.get(p) ?? []), d]);
      }
      return m;
    };
    let byProbe = await deadLetters();
    for (const end = Date.now() + 30_000; Date.now() < end && !flood.every((f) => byProbe.has(f.name)); byProbe = await deadLetters()) await new Promise((r) => setTimeout(r, 500));
    expect(flood.map((f) => f.name).filter((n) => !byProbe.has(n)), "flooded messages without a dead letter").toEqual([]);
    const summary: string[] = [];
    for (const f of flood) {
      const ds = byProbe.get(f.name)!;
      for (const d of ds) {
        expect(d.reason.length, f.name).toBeGreaterThan(0);
        expect(d.originalSubject, f.name).toBe(f.subject);
      }
      summary.push(`${f.name} → ${ds.map((d) => `${d.function}: ${d.reason.slice(0, 90)}`).join(" | ")}`);
    }
    console.log(`flood: ${flood.length} messages, all dead-lettered\n${summary.join("\n")}`);
    // The manifest's own refusals say why precisely.
    const reason = (name: string) => byProbe.get(name)!.map((d) => d.reason).join(" | ");
    for (const vm of vms) {
      expect(reason(`${vm}-batch-replayed-seq`)).toMatch(/seq 0 was taken already/);
      expect(reason(`${vm}-batch-gap-seq`)).toMatch(/seq 1000000 is out of order/);
      expect(reason(`${vm}-header-second`)).toMatch(/a second manifest header/);
      expect(reason(`${vm}-batch-other-migration`)).toMatch(new RegExp(`names migrationId ${FOREIGN}`));
      expect(reason(`${vm}-batch-wrong-type`)).toMatch(/does not travel on/);
      expect(reason(`${vm}-command-foreign-source`)).toMatch(/sent by gangway\/host\/mallory/);
      expect(reason(`${vm}-completed-forged-source`)).toMatch(/mallory/);
      expect(reason(`${vm}-verified-forged-source`)).toMatch(/not by the source host hostA|not from its source host hostA/);
    }
    expect(reason("commit-abort-other-migration")).toMatch(new RegExp(`names migrationId ${FOREIGN} but travels on gw\\.commit\\.${migrationId}\\.abort`));
    expect(reason("pack-foreign-source")).toMatch(/not by its source host hostA/);
    expect(reason("commit-ready-forged-source")).toMatch(/not from its target host hostB/);
    expect(reason("hash-resolved-unknown-lookup")).toMatch(/answers no look-up this resolver sent/);
  }, 420_000);
});
