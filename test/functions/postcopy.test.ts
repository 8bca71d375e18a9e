/**
 * The decisions behind hybrid pre/post-copy, at unit level: the switch-over policy of the
 * dirty log, and page-request's claims (a page is asked of the source once, whatever is
 * repeated), with a small in-memory state.
 */
import { describe, expect, it } from "vitest";
import { decideSwitchover, type PassFigures } from "../../functions/dirtyLog/policy.ts";
import pageRequest, { PREFETCH_PAGES, rangesOf, windowOf } from "../../functions/pageRequest/index.ts";
import { dirtyLogFunctions, SLOT_LEASE_MS } from "../../functions/dirtyLog/index.ts";
import type { FunctionDefinition } from "../../kit/index.ts";
import { functionHarness } from "../helpers/functions.ts";
import { planKey } from "../../functions/plan/index.ts";

const pass = (round: number, pagesSent: number, expectedDowntimeMs = 5000): PassFigures => ({ round, pagesSent, remainingBytes: pagesSent * 4096, expectedDowntimeMs, transferRate: 8e6, dirtyRate: 3000 });
const limits = { maxDowntimeMs: 300, postcopy: true, maxRounds: 30, timeBudgetMs: 600_000 };

describe("switch-over policy", () => {
  it("goes on while passes shrink", () => {
    expect(decideSwitchover([pass(1, 20000), pass(2, 10000)], limits, 10_000)).toEqual({ action: "continue" });
  });
  it("stops and copies when the remainder fits the downtime limit", () => {
    expect(decideSwitchover([pass(1, 20000), pass(2, 500, 250)], limits, 10_000)).toMatchObject({ action: "stop-and-copy" });
  });
  it("switches to post-copy when passes stop shrinking, after the round limit, or after the time budget", () => {
    expect(decideSwitchover([pass(1, 20000), pass(2, 9000), pass(3, 8800), pass(4, 8700)], limits, 10_000)).toMatchObject({ action: "post-copy", reason: expect.stringMatching(/stopped shrinking/) });
    expect(decideSwitchover([pass(1, 20000), pass(2, 10000)], { ...limits, maxRounds: 3 }, 10_000)).toMatchObject({ action: "post-copy", reason: expect.stringMatching(/3 rounds/) });
    expect(decideSwitchover([pass(1, 20000)], limits, 700_000)).toMatchObject({ action: "post-copy", reason: expect.stringMatching(/budget/) });
  });
  it("without post-copy: a stuck pre-copy keeps trying until a hard limit, then aborts", () => {
    const stuck = [pass(1, 20000), pass(2, 9000), pass(3, 8800), pass(4, 8700)];
    expect(decideSwitchover(stuck, { ...limits, postcopy: false }, 10_000)).toEqual({ action: "continue" });
    expect(decideSwitchover(stuck, { ...limits, postcopy: false, maxRounds: 5 }, 10_000)).toMatchObject({ action: "abort", reason: expect.stringMatching(/did not converge/) });
  });
});

function harness(fn: FunctionDefinition) {
  const h = functionHarness();
  return { state: h.state, run: (data: Record<string, unknown>, id?: string, time?: string) => h.run(fn, data, id, time) };
}

const plan = { migrationId: "m", sourceHost: "A", targetHost: "B", vms: [{ vm: "v", tenant: "t", memoryBytes: 1 << 30 }], options: { maxDowntimeMs: 300, postcopy: true, maxRounds: 3, completionTimeoutPerGiB: 150 } };
const fault = (seq: number, page: number, blockBytes = 1 << 20) => ({ migrationId: "m", vm: "v", block: "pc.ram", blockBytes, ranges: [{ offset: page * 4096, length: 4096 }], seq });
const pagesAsked = (out: { data: Record<string, unknown> }[]) => out.flatMap((e) => (e.data.ranges as { offset: number; length: number }[]).flatMap((r) => Array.from({ length: r.length / 4096 }, (_, i) => r.offset / 4096 + i)));

describe("page-request", () => {
  it("asks for the faulting page's aligned window, clipped to the block", () => {
    expect(windowOf([{ offset: 20 * 4096, length: 4096 }], 1 << 20)).toEqual(Array.from({ length: PREFETCH_PAGES }, (_, i) => 16 + i));
    expect(windowOf([{ offset: 250 * 4096, length: 4096 }], 252 * 4096)).toEqual([240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251]);
    expect(rangesOf([1, 2, 3, 7])).toEqual([{ offset: 4096, length: 3 * 4096 }, { offset: 7 * 4096, length: 4096 }]);
  });

  it("every page is asked of the source once: repeated, overlapping and replayed requests ask for nothing again", async () => {
    const h = harness(pageRequest as unknown as FunctionDefinition);
    await h.state.put(planKey("m"), plan);
    const first = await h.run(fault(0, 20), "f0");
    expect(first).toHaveLength(1);
    expect(first[0]!.data).toMatchObject({ host: "A", vm: "v", block: "pc.ram", requestSeq: 0 });
    expect(pagesAsked(first)).toEqual(Array.from({ length: 16 }, (_, i) => 16 + i));
    // The same fault again (QEMU re-faulting, or an injected copy with a new id): nothing.
    expect(await h.run(fault(1, 20), "f1")).toEqual([]);
    expect(await h.run(fault(2, 31), "f2")).toEqual([]);
    // A redelivery of the first event asks again for exactly what it claimed (same derived id: a no-op copy on the stream).
    expect(pagesAsked(await h.run(fault(0, 20), "f0"))).toEqual(pagesAsked(first));
    // A neighbouring window is new.
    expect(pagesAsked(await h.run(fault(3, 40), "f3"))).toEqual(Array.from({ length: 16 }, (_, i) => 32 + i));
    // Across many faults, no page is asked twice.
    const all: number[] = [...pagesAsked(first), ...Array.from({ length: 16 }, (_, i) => 32 + i)];
    for (let seq = 4; seq < 60; seq++) all.push(...pagesAsked(await h.run(fault(seq, (seq * 37) % 256), `f${seq}`)));
    expect(new Set(all).size).toBe(all.length);
  });
});

describe("dirty-log", () => {
  const round = (r: number, pagesSent: number, expectedDowntimeMs: number) => ({ migrationId: "m", vm: "v", sourceHost: "A", round: r, pagesSent, pagesDirtied: 1000, durationMs: 1000, dirtyRate: 3000, transferRate: 8e6, remainingBytes: 1e7, expectedDowntimeMs });
  const fn = dirtyLogFunctions.find((f) => f.id === "dirty-log")!;

  it("decides once per VM and sends the decision to the source host", async () => {
    const h = harness(fn);
    await h.state.put(planKey("m"), plan);
    expect(await h.run(round(1, 20000, 5000))).toEqual([]);
    const out = await h.run(round(2, 19000, 5000));
    expect(out.map((e) => e.type)).toEqual(["io.gangway.agent.switchover.v1"]);
    expect(out[0]!.data).toMatchObject({ host: "A", vm: "v", mode: "post-copy" });
    expect(await h.run(round(3, 100, 10))).toEqual([]); // decided: history only
  });

  it("without post-copy, the round limit is an abort the commit function rolls back", async () => {
    const h = harness(fn);
    await h.state.put(planKey("m"), { ...plan, options: { ...plan.options, postcopy: false } });
    await h.run(round(1, 20000, 5000));
    const out = await h.run(round(2, 19000, 5000));
    expect(out.map((e) => e.type)).toEqual(["io.gangway.commit.abort.v1"]);
    expect(out[0]!.data).toMatchObject({ reportedBy: "dirty-log", reason: expect.stringMatching(/did not converge/) });
  });

  it("force-complete makes the switch-over asked for (virsh --timeout-suspend / --timeout-postcopy); post-copy only where allowed", async () => {
    const force = dirtyLogFunctions.find((f) => f.id === "dirty-log-force-complete")!;
    const modeOf = async (options: Record<string, unknown>, mode?: string) => {
      const h = harness(force);
      await h.state.put(planKey("m"), { ...plan, options: { ...plan.options, ...options } });
      const out = await h.run({ migrationId: "m", requestedBy: "t", ...(mode ? { mode } : {}) });
      expect(out.map((e) => e.type)).toEqual(["io.gangway.agent.switchover.v1"]);
      return out[0]!.data as { mode: string; reason: string };
    };
    expect((await modeOf({ postcopy: true })).mode).toBe("post-copy");
    expect((await modeOf({ postcopy: true }, "stop-and-copy")).mode).toBe("stop-and-copy");
    expect((await modeOf({ postcopy: false })).mode).toBe("stop-and-copy");
    expect(await modeOf({ postcopy: false }, "post-copy")).toMatchObject({ mode: "stop-and-copy", reason: expect.stringMatching(/post-copy was not allowed/) });
  });

  describe("switch-over slots (parallelSwitchovers): a gang's VMs stop for their last pass N at a time", () => {
    const gang = { ...plan, vms: [{ vm: "v", tenant: "t", memoryBytes: 1 << 30 }, { vm: "w", tenant: "t", memoryBytes: 1 << 30 }], options: { ...plan.options, postcopy: false, parallelSwitchovers: 1 } };
    const ready = (vm: string, r: number) => ({ ...round(r, 100, 10), vm });
    const fnNamed = (id: string) => dirtyLogFunctions.find((f) => f.id === id)!;
    const h = () => {
      const x = functionHarness();
      return { state: x.state, run: (f: FunctionDefinition, data: Record<string, unknown>) => x.run(f, data) };
    };

    it("the second VM ready to stop waits for the first one's outcome, then stops at its next pass", async () => {
      const x = h();
      await x.state.put(planKey("m"), gang);
      expect((await x.run(fn, ready("v", 1))).map((e) => e.data.vm)).toEqual(["v"]);
      expect(await x.run(fn, ready("w", 1))).toEqual([]);
      expect(await x.run(fn, ready("w", 2))).toEqual([]);
      // Another VM's outcome frees only its own slot.
      expect(await x.run(fnNamed("dirty-log-slot-rolledback"), { migrationId: "m", vm: "z", reason: "x", phase: "Running", sourceRunning: true })).toEqual([]);
      expect(await x.run(fn, ready("w", 3))).toEqual([]);
      await x.run(fnNamed("dirty-log-slot-committed"), { migrationId: "m", vm: "v", targetHost: "B", stats: { time_elapsed: 1, data_processed: 1 } });
      const out = await x.run(fn, ready("w", 4));
      expect(out.map((e) => [e.type, e.data.vm, e.data.mode])).toEqual([["io.gangway.agent.switchover.v1", "w", "stop-and-copy"]]);
    });

    it("a rollback frees the slot too; a slot held past its lease is taken over", async () => {
      const x = h();
      await x.state.put(planKey("m"), gang);
      await x.run(fn, ready("v", 1));
      await x.run(fnNamed("dirty-log-slot-rolledback"), { migrationId: "m", vm: "v", reason: "x", phase: "Running", sourceRunning: true });
      expect((await x.run(fn, ready("w", 1))).map((e) => e.data.vm)).toEqual(["w"]);
      const y = h();
      await y.state.put(planKey("m"), gang);
      await y.state.put("dirty.m.slot.0", { vm: "lost", since: Date.now() - SLOT_LEASE_MS - 1 });
      expect((await y.run(fn, ready("v", 1))).map((e) => e.data.vm)).toEqual(["v"]);
    });

    it("without parallelSwitchovers every VM stops when it is ready", async () => {
      const x = h();
      await x.state.put(planKey("m"), { ...gang, options: { ...gang.options, parallelSwitchovers: undefined } });
      expect((await x.run(fn, ready("v", 1))).map((e) => e.data.vm)).toEqual(["v"]);
      expect((await x.run(fn, ready("w", 1))).map((e) => e.data.vm)).toEqual(["w"]);
    });

    it("parallelSwitchovers lets that many stop at once; post-copy and aborts never wait", async () => {
      const x = h();
      await x.state.put(planKey("m"), { ...gang, options: { ...gang.options, parallelSwitchovers: 2 } });
      expect((await x.run(fn, ready("v", 1))).map((e) => e.data.vm)).toEqual(["v"]);
      expect((await x.run(fn, ready("w", 1))).map((e) => e.data.vm)).toEqual(["w"]);
      const y = h();
      await y.state.put(planKey("m"), { ...gang, options: { ...gang.options, postcopy: true } });
      expect((await y.run(fn, ready("v", 1))).map((e) => e.data.mode)).toEqual(["stop-and-copy"]);
      // w's passes stop shrinking while v holds the only slot: its post-copy goes at once.
      await y.run(fn, { ...round(1, 20000, 5000), vm: "w" });
      const out = await y.run(fn, { ...round(2, 19000, 5000), vm: "w" });
      expect(out.map((e) => [e.data.vm, e.data.mode])).toEqual([["w", "post-copy"]]);
    });
  });
});
