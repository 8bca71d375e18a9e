import { describe, expect, it } from "vitest";
import { paceToDestination } from "../../adapters/host/destinationPace.ts";
import type { StreamRecord } from "../../adapters/qemu/stream/records.ts";

const pages = (n: number): StreamRecord[] => Array.from({ length: n }, () => ({ type: "pages" }) as unknown as StreamRecord);
async function* from(rs: StreamRecord[]) {
  yield* rs;
}

describe("pacing a source to its destination", () => {
  it("hands on the record with `holding` set, then holds QEMU's stream while the destination is more than `window` behind", async () => {
    let written = 2;
    const t0 = Date.now();
    setTimeout(() => (written = 4), 150);
    const pacer = paceToDestination(from(pages(3)), { published: () => 5, destinationWritten: async () => written, window: 1, pollMs: 10 });
    const seen: { at: number; holding: boolean }[] = [];
    for await (const _ of pacer.records) seen.push({ at: Date.now() - t0, holding: pacer.holding });
    expect(seen.map((s) => s.holding)).toEqual([true, false, false]);
    expect(seen[0]!.at).toBeLessThan(100);
    expect(seen[1]!.at).toBeGreaterThanOrEqual(140);
    expect(pacer.holding).toBe(false);
  });

  it("waits at most maxWaitMs, and not at all when the destination cannot say or pacing is off", async () => {
    const warnings: string[] = [];
    const log = { debug() {}, info() {}, warn: (m: string) => void warnings.push(m), error() {}, child() { return log; } };
    const t0 = Date.now();
    for await (const _ of paceToDestination(from(pages(1)), { published: () => 10, destinationWritten: async () => 0, maxWaitMs: 100, pollMs: 10, log }).records) void _;
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(warnings).toHaveLength(1);
    const t1 = Date.now();
    for await (const _ of paceToDestination(from(pages(3)), { published: () => 10, destinationWritten: async () => undefined, pollMs: 10 }).records) void _;
    for await (const _ of paceToDestination(from(pages(3)), { published: () => 10, destinationWritten: async () => 0, active: () => false, pollMs: 10 }).records) void _;
    expect(Date.now() - t1).toBeLessThan(100);
  });
});
