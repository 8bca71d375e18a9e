/**
 * Native QEMU migration between two VMs started by the launcher (source running the test
 * guest, destination with -incoming defer -S), over a unix socket. The destination's RAM
 * file holds a consistent image before it runs, and the guest's own check passes after
 * `cont`: the self-check survives migration. The source can still be resumed afterwards
 * (rollback), and a guest that is not dirtying arrives byte for byte.
 */
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  checkTestGuestPage,
  pauseTestGuest,
  testGuestConfig,
  testGuestStatus,
  verifyTestGuest,
  waitTestGuestReady,
  type TestGuestParams,
  type VmHandle,
} from "../../adapters/qemu/index.ts";
import { buildTestGuest, fleet, randomName } from "./helpers.ts";

const vms = fleet();
beforeAll(buildTestGuest);
afterEach(() => vms.stopAll());

async function migrate(src: VmHandle, dst: VmHandle) {
  const uri = `unix:${join(dst.runDir, "migrate.sock")}`;
  await Promise.all([src.qmp.migrateSetCapabilities({ events: true }), dst.qmp.migrateSetCapabilities({ events: true })]);
  await dst.qmp.migrateIncoming(uri);
  const completed = src.qmp.waitForEvent("MIGRATION", { where: (d) => d.status === "completed" || d.status === "failed", timeoutMs: 45_000 });
  await src.qmp.migrate(uri);
  const event = await completed;
  const info = await src.qmp.waitForMigration({ timeoutMs: 10_000 });
  const incoming = await dst.qmp.waitForMigration({ timeoutMs: 10_000 });
  return { event, info, incoming };
}

describe("native migration between launcher VMs", () => {
  it("moves a dirtying guest; the destination's RAM is consistent and its self-check passes after cont", async () => {
    const params: TestGuestParams = { seed: 31, image: 4, zero: 20, shared: 30, rate: 1000 };
    const config = testGuestConfig(randomName("mig"), params);
    const src = await vms.start(config);
    const dst = await vms.start(config, { role: "destination" });
    const ready = await waitTestGuestReady(src.serial, 15_000);
    await new Promise((r) => setTimeout(r, 300)); // let it dirty a little first

    const { event, info, incoming } = await migrate(src, dst);
    expect(event.data.status).toBe("completed");
    expect(info.status).toBe("completed");
    expect(incoming.status).toBe("completed");
    expect(info.ram!.transferred).toBeGreaterThan(0);
    expect(await src.qmp.queryStatus()).toMatchObject({ status: "postmigrate", running: false });
    expect(await dst.qmp.queryStatus()).toMatchObject({ status: "paused", running: false });

    // Before the destination runs, each page of its RAM file is some version the guest
    // wrote, except at most the one unique page the vCPU was rewriting when it stopped
    // (it finishes that page after cont).
    const ram = await readFile(dst.ramPath);
    const bad: string[] = [];
    for (let i = ready.first; i < ready.first + ready.pages; i++) {
      const c = checkTestGuestPage(ram.subarray(i * 4096, (i + 1) * 4096), i, params);
      if (!c.ok) bad.push(`${c.kind} page ${i}: ${c.reason}`);
    }
    expect(bad.length, bad.slice(0, 5).join("; ")).toBeLessThanOrEqual(1);
    expect(bad.filter((b) => !b.startsWith("unique"))).toEqual([]);

    const resumed = dst.qmp.waitForEvent("RESUME", { timeoutMs: 5000 });
    await dst.qmp.cont();
    await resumed;
    expect(await verifyTestGuest(dst.serial, 20_000)).toEqual({ ok: true, pages: ready.pages });
    const s0 = await testGuestStatus(dst.serial);
    await new Promise((r) => setTimeout(r, 500));
    expect((await testGuestStatus(dst.serial)).dirtied).toBeGreaterThan(s0.dirtied); // it carries on where it was

    // Rollback path: the source, parked in postmigrate, can run again and is intact too.
    await src.qmp.cont();
    expect(await src.qmp.queryStatus()).toMatchObject({ status: "running" });
    expect((await verifyTestGuest(src.serial, 20_000)).ok).toBe(true);
  });

  it("moves a quiet guest byte for byte", async () => {
    const config = testGuestConfig(randomName("quiet"), { seed: 32, rate: 500 });
    const src = await vms.start(config);
    const dst = await vms.start(config, { role: "destination" });
    const ready = await waitTestGuestReady(src.serial, 15_000);
    await pauseTestGuest(src.serial); // its managed pages stop changing
    const { info } = await migrate(src, dst);
    expect(info.status).toBe("completed");
    const [a, b] = await Promise.all([readFile(src.ramPath), readFile(dst.ramPath)]);
    const lo = ready.first * 4096;
    const hi = (ready.first + ready.pages) * 4096;
    expect(a.subarray(lo, hi).equals(b.subarray(lo, hi))).toBe(true);
    await dst.qmp.cont();
    expect((await verifyTestGuest(dst.serial, 20_000)).ok).toBe(true);
  });
});
