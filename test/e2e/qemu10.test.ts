/**
 * QEMU 10.0 end to end (bookworm-backports, unpacked beside the system's 7.2): its stream
 * parses and re-encodes byte for byte (SWITCHOVER_START, new in 10.0, included); a dirtying
 * guest moves through gangway's proxies and passes its self-check; a gang of two moves
 * through the agents with its three-digest proof and both ends' RAM equal byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { migrateThroughProxies } from "../../adapters/qemu/proxyPipe.ts";
import { parseBuffer } from "../../adapters/qemu/stream/stream.ts";
import { encodeRecords } from "../../adapters/qemu/stream/encoder.ts";
import { startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang } from "../../cli/gangMigration.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { compareRamDumps } from "../helpers/ramDumps.ts";
import { requireQemu10 } from "../helpers/qemu10.ts";
import { captureStream, runState, streamFleet, TEST_GUEST, vmName, type StreamFleet } from "../stream/helpers/vms.ts";

const qemu = requireQemu10();
// Every VM this file starts (its own and its agents') runs on 10.0.
process.env.GANGWAY_QEMU = qemu;

let fleet: StreamFleet;
beforeAll(async () => {
  fleet = await streamFleet();
});
afterAll(async () => fleet?.stopAll());

const guest = (rate: number) => ({ name: vmName("q10"), memoryMiB: 128, kernel: TEST_GUEST, append: `seed=5 image=3 zero=25 shared=25 rate=${rate}` });

describe("QEMU 10.0", () => {
  it("its multi-round stream parses, carries SWITCHOVER_START, and re-encodes byte for byte; inspect names the 10.0 machine", async () => {
    const src = await fleet.start(guest(1000));
    expect(((await src.qmp.execute("query-version")) as { qemu: { major: number } }).qemu.major).toBe(10);
    await src.serial.waitFor(/READY/, 30_000);
    await src.qmp.migrateSetParameters({ "max-bandwidth": 100 * 1024 * 1024 });
    const file = join(fleet.dir, "q10.stream");
    await captureStream(src, file);
    const stream = await readFile(file);
    const records = parseBuffer(stream);
    expect(records.filter((r) => r.type === "round").length).toBeGreaterThan(1);
    expect(records.some((r) => r.type === "command" && r.command.cmd === "switchoverStart")).toBe(true);
    expect(encodeRecords(records).equals(stream)).toBe(true);
    const inspected = JSON.parse(execFileSync(process.execPath, ["bin/gangway.mjs", "stream", "inspect", file, "--json"], { encoding: "utf8" })) as { machine?: string };
    expect(inspected.machine).toMatch(/^pc-i440fx-10\.0/);
    await rm(file, { force: true });
  }, 120_000);

  it("a dirtying guest moves 10.0 to 10.0 through gangway's proxies and passes its self-check", async () => {
    const config = guest(1000);
    const src = await fleet.start(config);
    const dst = await fleet.start(config, { role: "destination" });
    await src.serial.waitFor(/READY/, 30_000);
    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp });
    expect(report.ok).toBe(true);
    expect(await runState(dst)).toBe("paused");
    await dst.qmp.cont();
    expect((await dst.serial.request("v", /VERIFY (OK|FAIL).*/, 30_000))[0]).toMatch(/^VERIFY OK/);
  }, 120_000);
});

describe("a gang on QEMU 10.0 through the agents", () => {
  let nats: TestNats;
  let work: string;
  const procs: GangwayProcess[] = [];
  beforeAll(async () => {
    nats = await startTestNats();
    work = await mkdtemp(join(tmpdir(), "gangway-q10-"));
  });
  afterAll(async () => {
    for (const p of procs.reverse()) await p.stop().catch(() => undefined);
    await nats?.[Symbol.asyncDispose]();
    await rm(work, { recursive: true, force: true });
  });

  it("migrates 2 dirtying VMs: committed with three equal digests, both ends' RAM identical, each guest verifies on its new host", async () => {
    const dumps = join(work, "ram-dumps");
    procs.push(await startFunctions(nats.url));
    for (const h of ["q10A", "q10B"]) procs.push(await startAgentProcess(nats.url, h, work, { env: { GANGWAY_RAM_DUMP_DIR: dumps } }));
    // Each host says which QEMU it runs (the plan refuses hosts whose versions differ).
    const versions: string[] = [];
    for await (const e of readEvents(nats.nc, { filter: "gw.host.q10B.inventory" })) if (e.result.ok && e.result.event.mode === "structured") versions.push(String((e.result.event.data as { qemuVersion?: string }).qemuVersion));
    expect(versions.at(-1)).toMatch(/^10\.0\.\d+$/);
    const gang = ["k1", "k2"];
    await startVms(nats.nc, "q10A", gang.map((n, i) => testGuestSpec(n, { memoryMiB: 128, seed: i + 1, image: 7, rate: 500 })));
    const s = await migrateGang({ nc: nats.nc, vms: gang, sourceHost: "q10A", targetHost: "q10B" });
    expect(s.outcome, s.reason).toBe("succeeded");
    expect(await compareRamDumps(dumps, s.migrationId, gang)).toEqual(Object.fromEntries(gang.map((v) => [v, "identical"])));
    for (const v of s.vms) {
      expect(v.proof, v.vm).toBeDefined();
      expect(v.proof!.sent_digest).toBe(v.proof!.source_ram_digest);
      expect(v.proof!.destination_digest).toBe(v.proof!.source_ram_digest);
      expect(await verifyGuest(nats.nc, "q10B", v.vm)).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    }
    // What the repair pass had to send on 10.0 (on 7.2 under TCG it is never 0: lost dirty bits).
    console.log(`QEMU 10.0 gang: pages repaired ${s.vms.map((v) => `${v.vm}=${v.proof?.pages_repaired}`).join(" ")}, downtime ${s.vms.map((v) => `${v.vm}=${v.downtime_ms} ms`).join(" ")}`);
  }, 300_000);
});
