/** The CloudEvents binding and schemas: round trips, and rejections with readable reasons. */
import { describe, expect, it } from "vitest";
import { headers } from "@nats-io/transport-node";
import { decodeMessage, encodeBinary, encodeStructured, subjectMatches, familyOfSubject } from "../../infra/events/binding.ts";
import { definitionsByType, hashLookup, manifestBatch, manifestVerified, migrationRequested, scanBatch, MANIFEST_RECORD_BYTES } from "../../schemas/index.ts";

describe("CloudEvents binding", () => {
  it("round-trips a structured event with defaults filled in", () => {
    const msg = encodeStructured(migrationRequested, { migrationId: "m1" }, { migrationId: "m1", vms: ["a", "b"], sourceHost: "h1", requestedBy: "me" }, { source: "test", id: "ev-1" });
    expect(msg.subject).toBe("gw.migration.m1.requested");
    expect(msg.headers.get("Content-Type")).toBe("application/cloudevents+json");
    const json = JSON.parse(new TextDecoder().decode(msg.payload));
    expect(json).toMatchObject({ specversion: "1.0", id: "ev-1", source: "test", type: "io.gangway.migration.requested.v1", subject: "migration/m1" });
    const d = decodeMessage(msg.subject, msg.payload, msg.headers);
    expect(d.ok).toBe(true);
    if (d.ok && d.event.mode === "structured") {
      expect(d.definition).toBe(migrationRequested);
      expect(d.event.data).toMatchObject({ vms: ["a", "b"], options: { maxDowntimeMs: 300, progressTimeoutSec: 150 } });
    }
  });

  it("round-trips a binary-mode event with extensions in ce- headers", () => {
    const body = new Uint8Array(3 * 16).map((_, i) => i);
    const msg = encodeBinary(hashLookup, { migrationId: "m1", shard: "0" }, { migrationId: "m1", vm: "vm-1", tenant: "t", targetHost: "b", shard: 0, seq: 2, count: 3 }, body.map((b, i) => (i % 16 === 0 ? 0x10 : b)), { source: "host/a b" });
    expect(msg.headers.get("ce-type")).toBe("io.gangway.hash.lookup.v1");
    expect(msg.headers.get("ce-source")).toBe("host%2Fa%20b");
    const d = decodeMessage(msg.subject, msg.payload, msg.headers);
    expect(d.ok).toBe(true);
    if (d.ok && d.event.mode === "binary") {
      expect(d.event.source).toBe("host/a b");
      expect(d.event.ext).toMatchObject({ shard: 0, seq: 2, count: 3, vm: "vm-1" });
      expect(d.event.data.byteLength).toBe(48);
    }
  });

  it("rejects a look-up whose keys are not of its shard", () => {
    const keys = new Uint8Array(16).fill(0xff); // shard 3
    expect(() => encodeBinary(hashLookup, { migrationId: "m", shard: "0" }, { migrationId: "m", vm: "v", tenant: "t", targetHost: "b", shard: 0, seq: 0, count: 1 }, keys, { source: "t" })).toThrow(/not of shard 0/);
  });

  it("rejects a binary body that does not fit its extensions", () => {
    const msg = encodeBinary(scanBatch, { host: "a", vm: "v" }, { host: "a", vm: "v", tenant: "t", pass: 0, seq: 0, count: 2 }, new Uint8Array(48), { source: "t" });
    const d = decodeMessage(msg.subject, new Uint8Array(47), msg.headers);
    expect(d).toMatchObject({ ok: false, family: "scan" });
    expect(!d.ok && d.reason).toMatch(/body has 47 bytes, expected count 2 × 24/);
    expect(() => encodeBinary(manifestBatch, { migrationId: "m", vm: "v" }, { migrationId: "m", vm: "v", tenant: "t", round: 0, seq: 0, count: 1, final: false }, new Uint8Array(MANIFEST_RECORD_BYTES).fill(9), { source: "t" })).toThrow(/kind 9/);
  });

  it("a source proof carries its repaired pages after the records only when it says inline", () => {
    const ext = { migrationId: "m", vm: "v", tenant: "t", count: 1, sourceramdigest: "a".repeat(64), sentdigest: "a".repeat(64), devicestatedigest: "b".repeat(64), differing: 1, readms: 3 };
    const record = new Uint8Array(MANIFEST_RECORD_BYTES);
    record[9] = 1; // a page record
    const withPage = new Uint8Array(MANIFEST_RECORD_BYTES + 4096);
    withPage.set(record);
    const msg = encodeBinary(manifestVerified, { migrationId: "m", vm: "v" }, { ...ext, inline: true }, withPage, { source: "t" });
    const d = decodeMessage(msg.subject, msg.payload, msg.headers);
    expect(d.ok && d.event.mode === "binary" && d.event.ext).toMatchObject({ inline: true, count: 1 });
    // Without the flag the same body is refused, and a flagged body without its page too.
    expect(() => encodeBinary(manifestVerified, { migrationId: "m", vm: "v" }, ext, withPage, { source: "t" })).toThrow(/expected 1 records/);
    expect(() => encodeBinary(manifestVerified, { migrationId: "m", vm: "v" }, { ...ext, inline: true }, record, { source: "t" })).toThrow(/and 1 pages/);
    const plain = decodeMessage(msg.subject, record, encodeBinary(manifestVerified, { migrationId: "m", vm: "v" }, ext, record, { source: "t" }).headers);
    expect(plain.ok && plain.event.mode === "binary" && plain.event.ext["inline"]).toBeFalsy();
  });

  it("rejects events on the wrong subject, unknown types, and bad envelopes", () => {
    const good = encodeStructured(migrationRequested, { migrationId: "m1" }, { migrationId: "m1", vms: ["a"], sourceHost: "h", requestedBy: "me" }, { source: "t" });
    const wrongSubject = decodeMessage("gw.migration.m1.planned", good.payload, good.headers);
    expect(!wrongSubject.ok && wrongSubject.reason).toMatch(/does not travel on gw\.migration\.m1\.planned/);
    const h = headers();
    const noType = decodeMessage("gw.migration.x.requested", new TextEncoder().encode(JSON.stringify({ specversion: "1.0", id: "1", source: "s", time: new Date().toISOString() })), h);
    expect(!noType.ok && noType.reason).toMatch(/^not a CloudEvent: type: /);
    const badTime = decodeMessage("gw.migration.x.requested", new TextEncoder().encode(JSON.stringify({ specversion: "1.0", id: "1", source: "s", type: "io.gangway.migration.requested.v1", time: "yesterday", data: {} })), h);
    expect(!badTime.ok && badTime.reason).toMatch(/time: /);
    expect(decodeMessage("gw.x", new Uint8Array([0xff, 0xfe]), h)).toMatchObject({ ok: false, family: "x" });
  });

  it("refuses to build a subject from a token with a dot or wildcard", () => {
    expect(() => migrationRequested.subject({ migrationId: "a.b" })).toThrow(/migrationId/);
    expect(() => migrationRequested.subject({ migrationId: "*" })).toThrow(/migrationId/);
  });

  it("matches subjects like NATS does", () => {
    expect(subjectMatches("gw.>", "gw.a.b")).toBe(true);
    expect(subjectMatches("gw.*.x", "gw.a.x")).toBe(true);
    expect(subjectMatches("gw.*.x", "gw.a.b.x")).toBe(false);
    expect(subjectMatches("gw.>", "gw")).toBe(false);
    expect(familyOfSubject("gw.cmd.host.h1.evacuate")).toBe("host");
  });

  it("every definition has a unique type, a versioned name, and a subject under gw.", () => {
    expect(definitionsByType.size).toBeGreaterThan(25);
    for (const [type, def] of definitionsByType) {
      expect(type).toMatch(/^io\.gangway\.[a-z-]+\.[a-z-]+\.v\d+$/);
      expect(def.filter.startsWith("gw.")).toBe(true);
    }
    const filters = [...definitionsByType.values()].map((d) => d.filter);
    expect(new Set(filters).size).toBe(filters.length);
  });
});
