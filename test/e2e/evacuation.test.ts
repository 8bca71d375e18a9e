/**
 * Host evacuation end to end: an evacuate command for a host with 4 VMs and two candidate
 * destinations; every VM leaves and verifies, VMs sharing pages go together, the host is
 * reported drained. Real QEMU, real nats-server, agents and functions as processes.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { hostVms, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, waitForScans, type GangwayProcess } from "../../cli/localCluster.ts";
import { affinity, groupByAffinity } from "../../functions/evacuate/index.ts";

const run = promisify(execFile);
let nats: TestNats;
let work: string;
let procs: GangwayProcess[] = [];

beforeEach(async () => {
  nats = await startTestNats();
  work = await mkdtemp(join(tmpdir(), "gangway-evac-"));
  procs = [];
});
afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  await nats[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

describe("grouping by shared pages", () => {
  it("puts VMs whose samples overlap together", () => {
    const s = new Map([["a", ["1", "2", "3", "4"]], ["b", ["1", "2", "3", "9"]], ["c", ["7", "8"]], ["d", ["7", "8", "5"]]]);
    expect(affinity(s.get("a")!, s.get("b")!)).toBe(0.75);
    expect(groupByAffinity(["a", "c", "b", "d"], s)).toEqual([["a", "b"], ["c", "d"]]);
  });
});

describe("evacuation (real QEMU, real nats-server)", () => {
  it("drains a host of 4 VMs onto two candidates, VMs of one image together, each verified", async () => {
    procs.push(await startFunctions(nats.url));
    for (const h of ["evA", "evB", "evC"]) procs.push(await startAgentProcess(nats.url, h, work));
    const specs = [
      testGuestSpec("e1", { memoryMiB: 64, seed: 1, image: 7, rate: 200 }),
      testGuestSpec("e3", { memoryMiB: 64, seed: 3, image: 9, rate: 200 }),
      testGuestSpec("e2", { memoryMiB: 64, seed: 2, image: 7, rate: 200 }),
      testGuestSpec("e4", { memoryMiB: 64, seed: 4, image: 9, rate: 200 }),
    ];
    await startVms(nats.nc, "evA", specs);
    await waitForScans(nats.nc, "evA", specs.map((s) => s.name)); // the samples placement uses

    // As an operator (or an autoscaler's CloudEvent) would: the CLI publishes gw.cmd.host.evA.evacuate.
    const { stdout } = await run(process.execPath, ["bin/gangway.mjs", "evacuate", "evA", "--to", "evB,evC", "--json", "--nats", nats.url], { timeout: 280_000 });
    const summary = JSON.parse(stdout.trim().split("\n").at(-1)!) as { type: string; drained: boolean; moved: { vm: string; to: string }[]; failed: unknown[] };
    expect(summary).toMatchObject({ type: "summary", drained: true, failed: [] });
    const to = new Map(summary.moved.map((m) => [m.vm, m.to]));
    expect([...to.keys()].sort()).toEqual(["e1", "e2", "e3", "e4"]);
    expect(to.get("e1")).toBe(to.get("e2")); // one image: one destination
    expect(to.get("e3")).toBe(to.get("e4"));
    expect(to.get("e1")).not.toBe(to.get("e3")); // the second group goes to the host with fewer VMs
    for (const [vm, host] of to) expect(await verifyGuest(nats.nc, host, vm)).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    expect([...(await hostVms(nats.nc, "evA")).keys()]).toEqual([]);
  }, 300_000);
});
