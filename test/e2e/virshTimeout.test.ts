/**
 * virsh's `migrate --timeout S` through the gangway command, end to end (real QEMU, real
 * nats-server, the CLI as a process): a guest that cannot converge on a capped stream is
 * switched over by stop-and-copy once S seconds have passed (--timeout-suspend, virsh's
 * default), and verifies at its destination.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { readEvents } from "../../infra/events/reader.ts";

let nats: TestNats;
let work: string;
let procs: GangwayProcess[];

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gangway-vt-"));
  procs = [];
});

afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  for (const f of await readdir("/dev/shm")) if (/^gangway-vt[AB]-/.test(f)) await rm(join("/dev/shm", f), { force: true });
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

describe("gangway migrate --timeout (virsh's)", () => {
  it("switches a migration that does not converge over by stop-and-copy after S seconds, and the guest verifies", async () => {
    procs.push(await startFunctions(nats.url));
    procs.push(await startAgentProcess(nats.url, "vtA", work), await startAgentProcess(nats.url, "vtB", work));
    // ~20 MB/s of dirtied pages against a stream capped at 4 MiB/s: pre-copy never catches up.
    await startVms(nats.nc, "vtA", [testGuestSpec("hot1", { memoryMiB: 64, seed: 3, rate: 5000 })]);
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, [
      "bin/gangway.mjs", "migrate", "hot1", "--live", "--to", "vtB", "--bandwidth", "4", "--max-rounds", "1000", "--timeout", "6", "--verbose", "--json", "--nats", nats.url,
    ], { env: { ...process.env, GANGWAY_LOG_LEVEL: "warn" }, timeout: 150_000 });
    const summary = JSON.parse(stdout.trim().split("\n").at(-1)!) as { type: string; migrationId: string; outcome: string; vms: { vm: string; outcome: string; mode?: string }[] };
    expect(summary).toMatchObject({ type: "summary", outcome: "succeeded", vms: [{ vm: "hot1", outcome: "committed" }] });
    expect(Date.now() - started).toBeGreaterThan(6000);

    const events: { type: string; data: Record<string, unknown> }[] = [];
    for (const filter of [`gw.*.${summary.migrationId}.>`, `gw.cmd.migration.${summary.migrationId}.>`]) {
      for await (const e of readEvents(nats.nc, { filter })) if (e.result.ok && e.result.event.mode === "structured") events.push({ type: e.result.event.type, data: e.result.event.data as Record<string, unknown> });
    }
    const switchover = events.find((e) => e.type === "io.gangway.migration.switchover.v1");
    expect(switchover?.data).toMatchObject({ mode: "stop-and-copy", reason: expect.stringMatching(/force-complete requested by .*\(--timeout 6\)/) });
    expect(events.some((e) => e.type === "io.gangway.migration.force-complete.v1" && e.data.mode === "stop-and-copy")).toBe(true);
    expect(await verifyGuest(nats.nc, "vtB", "hot1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
  }, 240_000);
});
