/**
 * The destination's manifest reader against messages that do not belong: each kind of bad
 * message published among a legit manifest (unreadable bytes, the wrong type for its
 * subject, another migration's or VM's event, a replayed seq, a gap, a second header, a
 * message before the header, one from another source, a completed that miscounts) goes to
 * gw.dlq.manifest with its reason, and the rebuild yields exactly the records the clean
 * manifest yields. Also: pack announcements and dedup answers that do not belong are
 * dead-lettered, and a commit fact naming another migration than its subject is refused
 * at the binding.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import type { z } from "zod";
import { startTestNats, eventually, type TestNats } from "../helpers/nats.ts";
import { decodeMessage, encodeBinary, encodeStructured, type EncodedMessage } from "../../infra/events/binding.ts";
import { deadLetterSink } from "../../infra/events/deadLetter.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { targetRecords, type TargetState } from "../../adapters/host/targetMigration.ts";
import { openPageSource, type PageSource } from "../../adapters/host/packLocator.ts";
import { createKeyResolver } from "../../adapters/host/keyResolver.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { ManifestWriter } from "../../adapters/dataplane/manifestRecords.ts";
import type { PageKeyer } from "../../adapters/dataplane/contentKey.ts";
import type { PackStore } from "../../adapters/dataplane/packStore.ts";
import type { StreamRecord } from "../../adapters/qemu/stream/records.ts";
import { commitAbort, deadLetter, hashResolved, manifestBatch, manifestCommand, manifestCompleted, manifestHeader, packStored, RESOLVED_RECORD_BYTES } from "../../schemas/index.ts";

type DeadLetter = z.infer<typeof deadLetter.data>;

let nats: TestNats;
let js: JetStreamClient;
beforeAll(async () => {
  nats = await startTestNats();
  js = jetstream(nats.nc);
}, 60_000);
afterAll(async () => nats?.[Symbol.asyncDispose](), 30_000);

const VM = "vm1";
const SOURCE = "gangway/host/hostA";
const BLOCK = { id: "pc.ram", usedBytes: 16 * 4096 };
const digestHex = "ab".repeat(32);

/** The manifest as a source publishes it: header, batch 0, a command (seq 1), batch 2, completed. */
function legit(migrationId: string, source = SOURCE) {
  const p = { migrationId, vm: VM };
  const batch = (seq: number, fills: number[]) => {
    const w = new ManifestWriter(fills.length);
    fills.forEach((f, i) => w.addZero((seq * 4 + i) * 4096, 0, f));
    const { count, body } = w.take();
    return encodeBinary(manifestBatch, p, { migrationId, vm: VM, tenant: "t1", round: 0, seq, count, final: seq === 2 }, body, { source, id: `${migrationId}-${VM}-m${seq}` });
  };
  return {
    header: encodeStructured(manifestHeader, p, {
      migrationId, vm: VM, tenant: "t1", sourceHost: "hostA", machine: "pc-i440fx-7.2", blocks: [BLOCK], ramSetupWord: String(BLOCK.usedBytes | 4), configRaw: "", ramSection: { id: 2, instance: 0, version: 4 }, commands: [],
    }, { source, id: `${migrationId}-${VM}-header` }),
    b0: batch(0, [0, 7, 0, 9]),
    c1: encodeStructured(manifestCommand, p, { migrationId, vm: VM, seq: 1, command: { cmd: "ping", value: 3 } }, { source, id: `${migrationId}-${VM}-m1` }),
    b2: batch(2, [5, 0, 6]),
    completed: encodeStructured(manifestCompleted, p, { migrationId, vm: VM, deviceState: `state-${migrationId}-${VM}`, deviceStateBytes: 0, rounds: 0, batches: 3, records: 7, digest: digestHex }, { source, id: `${migrationId}-${VM}-completed` }),
  };
}

/** Marks a message so that its dead letter can be found (headers travel in the dead letter). */
const probe = (name: string, m: EncodedMessage): EncodedMessage => {
  m.headers.set("x-probe", name);
  return m;
};
const publish = (m: EncodedMessage) => js.publish(m.subject, m.payload, { msgID: m.id, headers: m.headers });

async function rebuild(migrationId: string, sink = deadLetterSink(js, SOURCE, "target-migration")) {
  const fail = () => Promise.reject(new Error("no page expected: the test manifest has fills only"));
  const pages = { page: fail } as unknown as PageSource;
  const packs = { getObject: async () => undefined } as unknown as PackStore;
  const keyer = { tenant: "t1" } as unknown as PageKeyer;
  const state: TargetState = { pagesWritten: 0 };
  const out: unknown[] = [];
  for await (const r of targetRecords({ nc: nats.nc, migrationId, vm: VM, tenant: "t1", keyer, pages, packs, progressTimeoutMs: 20_000, deadLetters: sink }, state)) out.push(comparable(r));
  await sink.flush();
  return { records: out, state };
}

/** A record with its bytes as hex (typed arrays do not compare well). */
function comparable(r: StreamRecord): unknown {
  return JSON.parse(JSON.stringify(r, (_, v: unknown) => (v instanceof Uint8Array || v instanceof Float64Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex") : v)));
}

async function deadLettersByProbe(family: string): Promise<Map<string, DeadLetter>> {
  const out = new Map<string, DeadLetter>();
  for await (const e of readEvents(nats.nc, { filter: `gw.dlq.${family}` })) {
    if (!e.result.ok || e.result.event.mode !== "structured") continue;
    const d = e.result.event.data as DeadLetter;
    const p = d.originalHeaders["x-probe"];
    if (p) out.set(p, d);
  }
  return out;
}

describe("destination manifest: messages that do not belong are dead-lettered and skipped", () => {
  it("rebuilds the same records as the clean manifest, and dead-letters each bad message with its reason", async () => {
    const clean = "mig-clean-1";
    const c = legit(clean);
    for (const m of [c.header, c.b0, c.c1, c.b2, c.completed]) await publish(m);
    const want = await rebuild(clean);

    const id = "mig-flood-1";
    const l = legit(id);
    const p = { migrationId: id, vm: VM };
    const raw = (name: string, subject: string, payload: Uint8Array, h: MsgHdrs = natsHeaders()) => {
      h.set("x-probe", name);
      return js.publish(subject, payload, { headers: h, msgID: `raw-${name}` });
    };
    const other = legit("mig-other-9");
    // Before the header: anything but the header is out of sequence.
    await publish(probe("before-header", encodeBinary(manifestBatch, p, { ...(decodeExt(l.b0)), seq: 0 }, l.b0.payload, { source: SOURCE, id: "bad-before-header" })));
    await publish(l.header);
    await raw("unparsable", `gw.manifest.${id}.${VM}.batch`, new Uint8Array([0xff, 0xfe, 0x00, 0x01]));
    await raw("not-json", `gw.manifest.${id}.${VM}.command`, new TextEncoder().encode("{ not json"));
    await publish(probe("second-header", encodeStructured(manifestHeader, p, { ...(decodeData(l.header) as object), blocks: [{ id: "pc.ram", usedBytes: 4096 }] }, { source: SOURCE, id: "bad-second-header" })));
    await publish(l.b0);
    // The wrong type for its subject: a command event on the batch subject.
    const wrongType = encodeStructured(manifestCommand, p, { migrationId: id, vm: VM, seq: 1, command: { cmd: "ping", value: 1 } }, { source: SOURCE, id: "bad-wrong-type" });
    await publish(probe("wrong-type", { ...wrongType, subject: `gw.manifest.${id}.${VM}.batch` }));
    // Another migration's batch on this migration's subject (its data names mig-other-9).
    await publish(probe("other-migration", { ...other.b0, subject: `gw.manifest.${id}.${VM}.batch`, id: "bad-other-migration" }));
    // Another VM's command on this VM's subject.
    await publish(probe("other-vm", { ...encodeStructured(manifestCommand, { migrationId: id, vm: "vm2" }, { migrationId: id, vm: "vm2", seq: 1, command: { cmd: "ping", value: 1 } }, { source: SOURCE, id: "bad-other-vm" }), subject: `gw.manifest.${id}.${VM}.command` }));
    // seq 0 again under a new id (a replay), and seq 7 (a gap: next is 1).
    await publish(probe("replayed-seq", { ...l.b0, id: "bad-replay", headers: copyHeaders(l.b0.headers, { "ce-id": "bad-replay" }) }));
    await publish(probe("gap-seq", encodeBinary(manifestBatch, p, { ...decodeExt(l.b0), seq: 7 }, l.b0.payload, { source: SOURCE, id: "bad-gap" })));
    // The right next seq, but not from the source host.
    await publish(probe("foreign-source", encodeStructured(manifestCommand, p, { migrationId: id, vm: VM, seq: 1, command: { cmd: "ping", value: 99 } }, { source: "gangway/host/mallory", id: "bad-foreign-source" })));
    // Records the header's blocks cannot hold.
    const w = new ManifestWriter(1);
    w.addZero(BLOCK.usedBytes, 0, 1);
    const { body } = w.take();
    await publish(probe("outside-block", encodeBinary(manifestBatch, p, { ...decodeExt(l.b0), seq: 1, count: 1 }, body, { source: SOURCE, id: "bad-outside-block" })));
    await publish(l.c1);
    await publish(probe("early-completed", encodeStructured(manifestCompleted, p, { ...(decodeData(l.completed) as object), batches: 5 }, { source: SOURCE, id: "bad-early-completed" })));
    await publish(l.b2);
    await publish(probe("replayed-command", { ...l.c1, id: "bad-replayed-command", headers: copyHeaders(l.c1.headers, {}), payload: new TextEncoder().encode(new TextDecoder().decode(l.c1.payload).replace(`"id":"${id}-${VM}-m1"`, '"id":"bad-replayed-command"')) }));
    await publish(l.completed);

    const got = await rebuild(id);
    // What QEMU is handed, and what the destination proves, is the clean manifest's.
    expect(got.records).toEqual(want.records);
    expect(got.state.delivered!.digest()).toBe(want.state.delivered!.digest());
    expect(got.state.pagesWritten).toBe(want.state.pagesWritten);
    expect(got.state.seqWritten).toBe(2);
    expect(got.state.completed?.batches).toBe(3);

    const reasons: Record<string, RegExp> = {
      "before-header": /before the manifest header/,
      unparsable: /unreadable manifest event: payload is not UTF-8/,
      "not-json": /unreadable manifest event: payload is not JSON/,
      "second-header": /a second manifest header/,
      "wrong-type": /unreadable manifest event: .*command\.v1 does not travel on gw\.manifest\.mig-flood-1\.vm1\.batch/,
      "other-migration": /names migrationId mig-other-9 but travels on/,
      "other-vm": /names vm vm2 but travels on/,
      "replayed-seq": /seq 0 was taken already/,
      "gap-seq": /seq 7 is out of order: next is 1/,
      "foreign-source": /sent by gangway\/host\/mallory, not by the source host hostA/,
      "outside-block": /is not a page of block pc\.ram/,
      "early-completed": /completed counts 5 batches and commands, 2 came/,
      "replayed-command": /seq 1 was taken already/,
    };
    const dl = await eventually(async () => {
      const m = await deadLettersByProbe("manifest");
      return m.size >= Object.keys(reasons).length ? m : undefined;
    }, 15_000, "a dead letter for every bad message");
    for (const [name, re] of Object.entries(reasons)) {
      const d = dl.get(name);
      expect(d, name).toBeDefined();
      expect(d!.reason, name).toMatch(re);
      expect(d!.function).toBe("target-migration");
      expect(d!.originalSubject).toMatch(new RegExp(`^gw\\.manifest\\.${id}\\.${VM}\\.`));
      expect(d!.streamSequence).toBeGreaterThan(0);
    }
    expect(dl.size).toBe(Object.keys(reasons).length);
  }, 60_000);

  it("dead-letters pack announcements that do not belong, and takes the legit one", async () => {
    const packs = { get: async () => undefined } as unknown as PackStore;
    const source = await openPageSource(nats.nc, packs, { host: "hostB" });
    try {
      const id = "mig-pack-1";
      const key = "11".repeat(16);
      const data = { migrationId: id, sourceHost: "hostA", vm: VM, tenant: "t1", pack: `pack-${"cd".repeat(16)}`, codec: "lz4" as const, keys: [key], rawBytes: 4096, storedBytes: 100 };
      const announce = (name: string, d: typeof data, src: string, subjectId = id) => {
        const m = encodeStructured(packStored, { migrationId: id }, d, { source: src, id: `pk-${name}` });
        return publish(probe(name, { ...m, subject: `gw.pack.${subjectId}.stored` }));
      };
      await announce("pack-other-migration", { ...data, migrationId: "mig-pack-2" }, SOURCE);
      await announce("pack-foreign-source", data, "gangway/host/mallory");
      const h = natsHeaders();
      h.set("x-probe", "pack-unparsable");
      await js.publish(`gw.pack.${id}.stored`, new Uint8Array([0, 1, 2]), { headers: h });
      await publish(probe("pack-wrong-type", { ...encodeStructured(manifestCommand, { migrationId: id, vm: VM }, { migrationId: id, vm: VM, seq: 0, command: { cmd: "ping", value: 0 } }, { source: SOURCE, id: "pk-wrong-type" }), subject: `gw.pack.${id}.stored` }));
      const dl = await eventually(async () => {
        const m = await deadLettersByProbe("pack");
        return m.size >= 4 ? m : undefined;
      }, 15_000, "the pack dead letters");
      expect(dl.get("pack-other-migration")!.reason).toMatch(/names migrationId mig-pack-2 but travels on gw\.pack\.mig-pack-1\.stored/);
      expect(dl.get("pack-foreign-source")!.reason).toMatch(/sent by gangway\/host\/mallory, not by its source host hostA/);
      expect(dl.get("pack-unparsable")!.reason).toMatch(/unreadable pack announcement/);
      expect(dl.get("pack-wrong-type")!.reason).toMatch(/does not travel on/);
      for (const d of dl.values()) expect(d.function).toBe("pack-locator");
      // None of them located the key: asking for it times out.
      await expect(source.page("t1", key, { tenant: "t1" } as unknown as PageKeyer, 500)).rejects.toThrow(/no page pack holds key/);
      // The legit announcement is taken (the pack is then fetched: absent from this fake store).
      await announce("pack-legit", data, SOURCE);
      await expect(source.page("t1", key, { tenant: "t1" } as unknown as PageKeyer, 5_000)).rejects.toThrow(/announced but not in the store/);
    } finally {
      await source.close();
    }
  }, 60_000);

  it("dead-letters dedup answers that fit no look-up, and resolves with the right one", async () => {
    const id = "mig-hash-1";
    const pub = createPublisher(js, "gangway/host/hostA");
    const r = createKeyResolver(nats.nc, pub, { migrationId: id, targetHost: "hostB", timeoutMs: 20_000, coalesceMs: 1 });
    try {
      // Observe the look-up, answer it wrongly, then rightly.
      const sub = nats.nc.subscribe(`gw.hash.${id}.lookup.*`, { max: 1 });
      const key = new Uint8Array(16).fill(0x11); // shard 0
      const answer = r.resolve(VM, "t1", key);
      let lookup: { ext: Record<string, unknown>; id: string } | undefined;
      for await (const m of sub) {
        const d = decodeMessage(m.subject, m.data, m.headers);
        if (d.ok && d.event.mode === "binary") lookup = { ext: d.event.ext, id: d.event.id };
      }
      const ext = { ...(lookup!.ext as { migrationId: string; vm: string; tenant: string; targetHost: string; shard: number; seq: number; count: number }), lookupId: lookup!.id };
      const body = (status: number, k = key) => {
        const b = new Uint8Array(RESOLVED_RECORD_BYTES);
        b[0] = status;
        b.set(k, 1);
        return b;
      };
      const send = (name: string, e: typeof ext, b: Uint8Array) => publish(probe(name, encodeBinary(hashResolved, { shard: "0" }, e, b, { source: "gangway/function/hash", id: `ans-${name}` })));
      await send("answer-other-key", ext, body(0, new Uint8Array(16).fill(0x12)));
      await send("answer-unknown-lookup", { ...ext, lookupId: `lk-${id}-${VM}-999` }, body(0));
      const h = natsHeaders();
      h.set("x-probe", "answer-unparsable");
      await js.publish("gw.hash.resolved.0", new TextEncoder().encode("nope"), { headers: h });
      await send("answer-legit", ext, body(1));
      expect([...(await answer)]).toEqual([1]);
      const dl = await eventually(async () => {
        const m = await deadLettersByProbe("hash");
        return m.size >= 3 ? m : undefined;
      }, 15_000, "the dedup answer dead letters");
      expect(dl.get("answer-other-key")!.reason).toMatch(/about another key/);
      expect(dl.get("answer-unknown-lookup")!.reason).toMatch(/answers no look-up this resolver sent/);
      expect(dl.get("answer-unparsable")!.reason).toMatch(/unreadable dedup answer/);
      expect(dl.has("answer-legit")).toBe(false);
    } finally {
      r.close();
    }
  }, 60_000);

  it("refuses a commit fact that names another migration than its subject", () => {
    const m = encodeStructured(commitAbort, { migrationId: "mig-b" }, { migrationId: "mig-b", vm: VM, reason: "forged", reportedBy: "mallory" }, { source: "x" });
    const d = decodeMessage("gw.commit.mig-a.abort", m.payload, m.headers);
    expect(d.ok).toBe(false);
    expect(!d.ok && d.reason).toMatch(/names migrationId mig-b but travels on gw\.commit\.mig-a\.abort/);
    expect(decodeMessage(m.subject, m.payload, m.headers).ok).toBe(true);
  });
});

function decodeExt(m: EncodedMessage) {
  const d = decodeMessage(m.subject, m.payload, m.headers);
  if (!d.ok || d.event.mode !== "binary") throw new Error("not a binary event");
  return d.event.ext as z.infer<typeof manifestBatch.extensions>;
}
function decodeData(m: EncodedMessage): unknown {
  const d = decodeMessage(m.subject, m.payload, m.headers);
  if (!d.ok || d.event.mode !== "structured") throw new Error("not a structured event");
  return d.event.data;
}
function copyHeaders(h: MsgHdrs, set: Record<string, string>): MsgHdrs {
  const out = natsHeaders();
  for (const k of h.keys()) out.set(k, h.get(k));
  for (const [k, v] of Object.entries(set)) out.set(k, v);
  return out;
}
