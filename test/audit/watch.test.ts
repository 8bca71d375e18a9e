/**
 * `gangway watch`: the fold of migration events (bars never run backwards), its renderings,
 * and the command against a real nats-server with migrations recorded in flight and done.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { startTestNats, eventually, type TestNats } from "../helpers/nats.ts";
import { createPublisher, type EventPublisher } from "../../infra/events/publisher.ts";
import { migrationPlanned, migrationProgress, migrationRequested, migrationStarted, migrationCommitted, migrationSucceeded, migrationRolledBack, migrationFailed, type JobStats } from "../../schemas/index.ts";
import type { DecodedEvent } from "../../infra/events/binding.ts";
import { followMigrations, MigrationWatch, snapshotOf, type WatchedMigration } from "../../infra/audit/watch.ts";
import { bar, migrationLines, updateLine, watchPrinter } from "../../infra/audit/watchView.ts";
import { gangwayCli } from "./helpers.ts";

const ev = (type: string, data: Record<string, unknown>, at = "2026-01-01T00:00:00.000Z"): DecodedEvent => ({
  specversion: "1.0", id: Math.random().toString(36), source: "test", type: `io.gangway.migration.${type}.v1`, time: at, mode: "structured", data,
});
const stats = (s: Partial<JobStats>): JobStats => ({ time_elapsed: 0, data_processed: 0, ...s });
const MiB64 = 64 * 1024 * 1024;

describe("the watch fold and its views", () => {
  it("folds a gang's events: phases, monotonic percentages and rounds, commit, rollback and the gang's end", () => {
    const w = new MigrationWatch();
    const sub = (kind: string) => `gw.migration.m1.${kind}`;
    w.apply(sub("requested"), ev("requested", { migrationId: "m1", vms: ["a", "b"], sourceHost: "h1", requestedBy: "ops", reason: "drain" }));
    w.apply(sub("planned"), ev("planned", { migrationId: "m1", sourceHost: "h1", targetHost: "h2", vms: [{ vm: "a" }, { vm: "b" }] }));
    w.apply(sub("started"), ev("started", { migrationId: "m1", vm: "a" }));
    w.apply(sub("progress"), ev("progress", { migrationId: "m1", vm: "a", phase: "Running", stats: stats({ percent: 60, memory_iteration: 1, memory_total: MiB64, pages_sent: 100 }) }));
    // A later round re-sends dirty pages: the bar stays, the round goes up.
    w.apply(sub("progress"), ev("progress", { migrationId: "m1", vm: "a", phase: "Running", stats: stats({ percent: 20, memory_iteration: 2, memory_total: MiB64, pages_sent: 120 }) }));
    const m = w.migrations.get("m1")!;
    expect(m.vms.get("a")).toMatchObject({ phase: "Running", percent: 60, round: 2 });
    expect(m.vms.get("a")!.stats.pages_sent).toBe(120);
    expect(m.vms.get("b")).toMatchObject({ phase: "Scheduled", percent: 0 });
    expect(w.inFlight().map((x) => x.migrationId)).toEqual(["m1"]);
    const s = snapshotOf(m, Date.parse("2026-01-01T00:00:05Z"));
    expect(s).toMatchObject({ migrationId: "m1", sourceHost: "h1", targetHost: "h2", requestedBy: "ops", reason: "drain", outcome: "in-flight", time_elapsed: 5000 });
    expect(s.percent).toBe(60); // only a reported a memory total
    w.apply(sub("committed"), ev("committed", { migrationId: "m1", vm: "a" }));
    w.apply(sub("progress"), ev("progress", { migrationId: "m1", vm: "a", phase: "Succeeded", stats: stats({ percent: 100 }) }));
    w.apply(sub("rolledback"), ev("rolledback", { migrationId: "m1", vm: "b", reason: "host h2 stopped answering" }));
    w.apply(sub("failed"), ev("failed", { migrationId: "m1", reason: "1 of 2 VMs rolled back" }, "2026-01-01T00:00:09.000Z"));
    expect(m.vms.get("a")).toMatchObject({ phase: "Succeeded", outcome: "committed", percent: 100, round: 2 });
    expect(m.vms.get("b")).toMatchObject({ phase: "Failed", outcome: "rolledback", reason: "host h2 stopped answering" });
    expect(m).toMatchObject({ outcome: "failed", reason: "1 of 2 VMs rolled back" });
    expect(w.inFlight()).toEqual([]);
    expect(snapshotOf(m).time_elapsed).toBe(9000);
    // Events it does not show change nothing.
    expect(w.apply("gw.manifest.m1.a.header", ev("header", {}))).toBeUndefined();
  });

  it("draws bars and lines", () => {
    expect(bar(0, 10)).toBe("[----------]");
    expect(bar(50, 10)).toBe("[#####-----]");
    expect(bar(100, 10)).toBe("[##########]");
    const w = new MigrationWatch();
    w.apply("gw.migration.m2.requested", ev("requested", { migrationId: "m2", vms: ["a"], sourceHost: "h1", targetHost: "h2", requestedBy: "ops" }));
    w.apply("gw.migration.m2.progress", ev("progress", { migrationId: "m2", vm: "a", phase: "Running", stats: stats({ percent: 50, memory_iteration: 3, memory_total: MiB64, bytes_on_link: 5e6 }) }));
    const s = snapshotOf(w.migrations.get("m2")!, Date.parse("2026-01-01T00:00:01Z"));
    const lines = migrationLines(s);
    expect(lines[0]).toMatch(/^m2 {2}h1 → h2 {2}in-flight {2}1\.0s {2}by ops/);
    expect(lines[1]).toMatch(/a +\[#{12}-{12}\] +50% {2}round 3 {2}Running/);
    expect(lines[1]).toContain("link 5.0 MB");
    expect(updateLine(s)).toBe("2026-01-01T00:00:00.000Z m2 h1→h2 in-flight 50%: a Running 50% r3");
  });

  it("prints one line per update when not a terminal (at most one a second per migration, every end), redraws in a terminal", async () => {
    const written: string[] = [];
    const out = { write: (s: string) => (written.push(s), true) } as unknown as NodeJS.WritableStream;
    let clock = 0;
    const w = new MigrationWatch();
    const m = w.apply("gw.migration.m3.requested", ev("requested", { migrationId: "m3", vms: ["a"], sourceHost: "h1", requestedBy: "ops" }))!;
    const lines = watchPrinter({ json: false, tty: false, out, now: () => clock });
    lines.caughtUp(w);
    clock = 5000;
    lines.update(m, w);
    clock = 5500;
    lines.update(m, w); // within a second: folded
    w.apply("gw.migration.m3.succeeded", ev("succeeded", { migrationId: "m3", vms: ["a"] }));
    lines.update(m, w); // the end: always
    expect(written).toHaveLength(3);
    expect(written.at(-1)).toMatch(/m3 h1→\? succeeded/);

    written.length = 0;
    const json = watchPrinter({ json: true, tty: false, out, now: () => clock });
    json.update(m, w);
    json.done(w);
    expect(written.map((l) => JSON.parse(l).type)).toEqual(["migration", "summary"]);

    written.length = 0;
    const term = watchPrinter({ json: false, tty: true, out, now: () => Date.now() });
    term.caughtUp(w);
    term.update(m, w);
    await new Promise((r) => setTimeout(r, 250));
    term.done(w);
    expect(written.join("")).toContain("\x1b[2K");
    expect(written.join("")).toMatch(/\x1b\[\d+A/); // the second draw moves up over the first
  });
});

describe("gangway watch against a real nats-server", () => {
  let nats: TestNats;
  let pub: EventPublisher;
  beforeAll(async () => {
    nats = await startTestNats();
    pub = createPublisher(jetstream(nats.nc), "test/watch");
    // One migration done, one in flight (running, 40%).
    for (const [id, done] of [["mig-done", true], ["mig-flying", false]] as const) {
      const p = { migrationId: id };
      await pub.publish(migrationRequested, p, { migrationId: id, vms: ["v1"], sourceHost: "h1", targetHost: "h2", requestedBy: "ops", options: {} });
      await pub.publish(migrationPlanned, p, { migrationId: id, sourceHost: "h1", targetHost: "h2", vms: [{ vm: "v1", tenant: "t", memoryBytes: MiB64 }], options: {} as never });
      await pub.publish(migrationStarted, p, { migrationId: id, vm: "v1", sourceHost: "h1", targetHost: "h2", phase: "Running" });
      await pub.publish(migrationProgress, p, { migrationId: id, vm: "v1", phase: "Running", mode: "PreCopy", stats: stats({ percent: 40, memory_total: MiB64, memory_iteration: 1 }) });
      if (done) {
        await pub.publish(migrationCommitted, p, { migrationId: id, vm: "v1", targetHost: "h2", pages: 16384, digest: "ab".repeat(32), stats: stats({}) });
        await pub.publish(migrationSucceeded, p, { migrationId: id, vms: ["v1"], stats: stats({}) });
      }
    }
  });
  afterAll(async () => {
    await nats[Symbol.asyncDispose]();
  });

  it("watch --once --json prints the migration in flight now, and a summary", async () => {
    const r = await gangwayCli(["watch", "--once", "--json", "--nats", nats.url]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toEqual([
      expect.objectContaining({ type: "migration", migrationId: "mig-flying", outcome: "in-flight", sourceHost: "h1", targetHost: "h2", percent: 40, vms: [expect.objectContaining({ vm: "v1", phase: "Running", percent: 40, memory_iteration: 1 })] }),
      { type: "summary", in_flight: 1, migrations: ["mig-flying"] },
    ]);
    const text = await gangwayCli(["watch", "--once", "--nats", nats.url]);
    expect(text.stdout.trim().split("\n")).toEqual([expect.stringMatching(/mig-flying h1→h2 in-flight 40%: v1 Running 40% r1$/)]);
    const later = await gangwayCli(["watch", "--once", "--json", "--since", new Date(Date.now() + 60_000).toISOString(), "--nats", nats.url]);
    expect(later.stdout.trim()).toBe(JSON.stringify({ type: "summary", in_flight: 0, migrations: [] }));
    expect((await gangwayCli(["watch", "--since", "yesterday", "--nats", nats.url])).code).toBe(64);
  });

  it("follows new events after catching up, until stopped", async () => {
    const stop = new AbortController();
    const updates: WatchedMigration[] = [];
    let caught: string[] | undefined;
    const following = followMigrations(nats.nc, {
      signal: stop.signal,
      onCaughtUp: (w) => (caught = w.inFlight().map((m) => m.migrationId)),
      onUpdate: (m) => updates.push(m),
    });
    await eventually(() => caught, 10_000, "catching up");
    expect(caught).toEqual(["mig-flying"]);
    await pub.publish(migrationRolledBack, { migrationId: "mig-flying" }, { migrationId: "mig-flying", vm: "v1", reason: "cancelled", phase: "Failed", sourceRunning: true });
    await pub.publish(migrationFailed, { migrationId: "mig-flying" }, { migrationId: "mig-flying", reason: "1 of 1 VMs rolled back", phase: "Failed" });
    await eventually(() => updates.some((m) => m.outcome === "failed") || undefined, 10_000, "the failure to arrive");
    stop.abort();
    const w = await following;
    expect(w.inFlight()).toEqual([]);
    expect(w.migrations.get("mig-flying")!.vms.get("v1")).toMatchObject({ outcome: "rolledback", reason: "cancelled" });
  });
});
