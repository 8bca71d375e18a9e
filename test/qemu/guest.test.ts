/**
 * The test guest under real QEMU (TCG): it boots to READY, checks itself, fills RAM with
 * exactly the zero/shared/unique mix the TypeScript mirror predicts (read from the
 * /dev/shm RAM files), shares shared pages byte for byte across VMs of one image, and
 * dirties unique pages at roughly the rate asked.
 */
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import {
  checkTestGuestPage,
  PageKind,
  pauseTestGuest,
  resumeTestGuest,
  testGuestConfig,
  testGuestPage,
  testGuestPageKind,
  testGuestStatus,
  verifyTestGuest,
  waitTestGuestReady,
  type TestGuestParams,
} from "../../adapters/qemu/index.ts";
import { buildTestGuest, fleet, pageAt, randomName } from "./helpers.ts";

const ZERO = Buffer.alloc(4096);
const vms = fleet();
beforeAll(buildTestGuest);
afterEach(() => vms.stopAll());

describe("test guest", () => {
  it("boots to READY in a few seconds and its self-check passes", async () => {
    const t0 = Date.now();
    const vm = await vms.start(testGuestConfig(randomName("boot"), { seed: 5, rate: 500 }));
    const ready = await waitTestGuestReady(vm.serial, 15_000);
    const bootMs = Date.now() - t0;
    expect(bootMs).toBeLessThan(10_000); // ~0.6 s here; generous for a busy 2-core machine
    expect(ready.first).toBe(512);
    expect(ready.pages).toBeGreaterThan(60_000); // 256 MiB less the low 2 MiB and firmware's top
    expect(ready.zero + ready.shared + ready.unique).toBe(ready.pages);
    expect(await verifyTestGuest(vm.serial, 15_000)).toEqual({ ok: true, pages: ready.pages });
    expect(await vm.qmp.queryStatus()).toMatchObject({ status: "running", running: true });
    expect(readFileSync(vm.paths.serialLog, "utf8")).toMatch(/^READY pages=/m);
  });

  it("fills RAM with the predicted mix; VMs of one image share exactly the shared pages", async () => {
    const pa: TestGuestParams = { seed: 11, image: 7, zero: 30, shared: 40 };
    const pb: TestGuestParams = { ...pa, seed: 12 };
    const [a, b] = await Promise.all([vms.start(testGuestConfig(randomName("img-a"), pa)), vms.start(testGuestConfig(randomName("img-b"), pb))]);
    const [ra, rb] = await Promise.all([waitTestGuestReady(a.serial, 15_000), waitTestGuestReady(b.serial, 15_000)]);
    expect(rb).toEqual(ra); // the mix depends on the image seed only
    const [ramA, ramB] = await Promise.all([readFile(a.ramPath), readFile(b.ramPath)]);
    expect(ramA.length).toBe(256 * 1024 * 1024);

    const counts = { zero: 0, shared: 0, unique: 0 };
    let zeroBytesPages = 0;
    const bad: string[] = [];
    for (let i = ra.first; i < ra.first + ra.pages; i++) {
      const kind = testGuestPageKind(i, pa);
      counts[kind]++;
      const pageA = pageAt(ramA, i);
      const pageB = pageAt(ramB, i);
      const check = checkTestGuestPage(pageA, i, pa);
      if (!check.ok && bad.length < 5) bad.push(`page ${i}: ${check.reason}`);
      if (kind === PageKind.Zero) {
        if (pageA.equals(ZERO) && pageB.equals(ZERO)) zeroBytesPages++;
      } else if (kind === PageKind.Shared) {
        if (!pageA.equals(pageB) && bad.length < 5) bad.push(`shared page ${i} differs between the VMs`);
      } else if (pageA.equals(pageB) && bad.length < 5) {
        bad.push(`unique page ${i} is the same in both VMs`);
      }
    }
    expect(bad).toEqual([]);
    expect(counts).toEqual({ zero: ra.zero, shared: ra.shared, unique: ra.unique }); // guest and mirror agree
    expect(zeroBytesPages).toBe(ra.zero);
    expect(ra.zero / ra.pages).toBeCloseTo(0.3, 1);
    expect(ra.shared / ra.pages).toBeCloseTo(0.4, 1);
    // Spot-check the mirror's generator against the guest for the other VM too.
    const someUnique = Array.from({ length: 2000 }, (_, k) => ra.first + k).find((i) => testGuestPageKind(i, pb) === PageKind.Unique)!;
    expect(pageAt(ramB, someUnique).equals(testGuestPage(PageKind.Unique, someUnique, pb, 0))).toBe(true);
  });

  it("dirties unique pages at about the rate asked, pauses and resumes, and stays consistent", async () => {
    const params: TestGuestParams = { seed: 21, rate: 2000 };
    const vm = await vms.start(testGuestConfig(randomName("dirty"), params));
    const ready = await waitTestGuestReady(vm.serial, 15_000);
    const s0 = await testGuestStatus(vm.serial);
    await new Promise((r) => setTimeout(r, 1500));
    const s1 = await testGuestStatus(vm.serial);
    // Per guest tick (1 ms of its PIT). A vCPU starved by a busy host drops work rather
    // than bursting, so only the upper bound is tight.
    const rate = ((s1.dirtied - s0.dirtied) * 1000) / Math.max(1, s1.ticks - s0.ticks);
    expect(rate).toBeGreaterThan(400);
    expect(rate).toBeLessThan(2400);

    await pauseTestGuest(vm.serial);
    const p0 = await testGuestStatus(vm.serial);
    await new Promise((r) => setTimeout(r, 300));
    const p1 = await testGuestStatus(vm.serial);
    expect(p1).toMatchObject({ paused: true, dirtied: p0.dirtied });

    // Paused, the RAM file is stable: every page is exactly some version the guest wrote.
    const ram = await readFile(vm.ramPath);
    let rewritten = 0;
    const bad: string[] = [];
    for (let i = ready.first; i < ready.first + ready.pages; i++) {
      const c = checkTestGuestPage(pageAt(ram, i), i, params);
      if (!c.ok && bad.length < 5) bad.push(`page ${i}: ${c.reason}`);
      if ((c.version ?? 0) > 0) rewritten++;
    }
    expect(bad).toEqual([]);
    // Counted against the guest's own counter, not the wall clock (a busy host starves it).
    expect(p0.dirtied).toBeGreaterThan(0);
    expect(rewritten).toBeGreaterThan(0);
    expect(rewritten).toBeLessThanOrEqual(p0.dirtied);
    await resumeTestGuest(vm.serial);
    expect((await verifyTestGuest(vm.serial)).ok).toBe(true);
  });

  it("removes its RAM file when QEMU exits", async () => {
    const vm = await vms.start(testGuestConfig(randomName("gone")));
    await waitTestGuestReady(vm.serial, 15_000);
    expect(existsSync(vm.ramPath)).toBe(true);
    expect(await vm.stop()).toEqual({ code: 0, signal: null });
    expect(existsSync(vm.ramPath)).toBe(false);
    expect(existsSync(vm.paths.qmpSocket)).toBe(false);
  });
});
