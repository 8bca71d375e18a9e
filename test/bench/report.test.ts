/** The benchmark's bookkeeping: statistics, the table, the chart, and its command line (no QEMU). */
import { describe, expect, it } from "vitest";
import { run } from "../../cli/commands/bench.ts";
import { UsageError } from "../../cli/errors.ts";
import { renderChart } from "../../bench/chart.ts";
import { formatReport, stat, type BenchReport } from "../../bench/run.ts";
import { parseWorkloads } from "../../bench/workloads.ts";
import { formatSweep, mergeRepetitions } from "../../bench/sweep.ts";
import type { NativeResult } from "../../bench/native.ts";

const report: BenchReport = {
  type: "bench",
  startedAt: "2026-01-01T00:00:00Z",
  machine: { cpus: 2, cpu_model: "test", memory_gib: 24, accel: "tcg", qemu: "QEMU 7.2", nats_server: "nats-server: v2.9.10", node: "v20" },
  link: { mbps: 1000, bytes_per_second: 125e6 },
  quick: true,
  reps: 1,
  workloads: [
    {
      id: "W3",
      title: "one VM",
      native: {
        plain: { runs: 1, completed: 1, verified: 1, time_ms: { min: 1000, median: 1000, n: 1 }, bytes_on_link: { min: 135e6, median: 135e6, n: 1 }, downtime_max_ms: { min: 200, median: 200, n: 1 } },
        "multifd-zstd": { runs: 1, completed: 0, verified: 0 },
        postcopy: { runs: 0, completed: 0, verified: 0 },
      },
      gangway: { runs: 1, completed: 1, verified: 1, time_ms: { min: 2000, median: 2000, n: 1 }, bytes_on_link: { min: 150e6, median: 150e6, n: 1 }, prep_bytes_on_link: { min: 130e6, median: 130e6, n: 1 }, migration_bytes_on_link: { min: 20e6, median: 20e6, n: 1 } },
      ratios: { plain: { bytes: 1.111, time: 2 }, "multifd-zstd": {}, postcopy: {} },
      targets: [{ what: "time ≤ 1.1× the faster native", limit: 1.1, value: 2, met: false }],
      raw: { native: { plain: [], "multifd-zstd": [], postcopy: [] }, gangway: [], errors: [], load: [] },
    },
  ],
};

describe("bench report", () => {
  it("takes min and median", () => {
    expect(stat([])).toBeUndefined();
    expect(stat([3, 1, 2])).toEqual({ min: 1, median: 2, n: 3 });
    expect(stat([4, 1, 2, 3])).toEqual({ min: 1, median: 2.5, n: 4 });
  });

  it("prints a table with the ratios and the targets", () => {
    const t = formatReport(report);
    expect(t).toMatch(/\| W3 \| native plain pre-copy \| 1\/1 ok, 1 verified \| 1\.00 \/ 1\.00 \| 135\.0 \/ 135\.0 \|/);
    expect(t).toMatch(/\| W3 \| \*\*gangway, both phases\*\* \| \| \| \*\*150\.0 \/ 150\.0\*\*/);
    expect(t).toContain("| W3 | native plain | 1.11× | - | 2.00× |");
    expect(t).toContain("W3: time ≤ 1.1× the faster native: 2.00 → MISSED");
  });

  it("draws an SVG with a bar per configuration and a note for what did not finish", () => {
    const svg = renderChart(report);
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("did not finish");
    expect(svg.match(/<rect /g)!.length).toBeGreaterThan(6);
  });

  it("rejects unknown workloads and bad flags as usage errors", async () => {
    expect(parseWorkloads("w1, W3")).toEqual(["W1", "W3"]);
    expect(() => parseWorkloads("W9")).toThrow(/unknown workload "W9"/);
    await expect(run(["--workloads", "W9"])).rejects.toBeInstanceOf(UsageError);
    await expect(run(["--reps", "0"])).rejects.toBeInstanceOf(UsageError);
    await expect(run(["--link-mbps", "fast"])).rejects.toBeInstanceOf(UsageError);
    await expect(run(["extra"])).rejects.toBeInstanceOf(UsageError);
    await expect(run(["--link-mbps", "100,1000,100"])).rejects.toThrow(/names a rate twice/);
    await expect(run(["--link-mbps", "100,,1000"])).rejects.toBeInstanceOf(UsageError);
  });

  it("sweep: one link's repetitions merge into one summary, and the rates stand side by side", () => {
    const plain = (time_ms: number, bytes: number): NativeResult => ({ mode: "plain", completed: true, time_ms, bytes_on_link: bytes, bytes_up: bytes, bytes_down: 0, connections: 1, vms: [{ vm: "v1", status: "completed", verified: true, check: "VERIFY OK", downtime_ms: 100 }] });
    const rep = (mbps: number, r: NativeResult): BenchReport => ({
      ...report, link: { mbps, bytes_per_second: (mbps * 1e6) / 8 },
      workloads: [{ ...report.workloads[0]!, raw: { native: { plain: [r], "multifd-zstd": [], postcopy: [] }, gangway: [], errors: [], load: [] } }],
    });
    const merged = mergeRepetitions([rep(100, plain(10_000, 100e6)), rep(100, plain(30_000, 120e6)), rep(100, plain(20_000, 110e6))]);
    expect(merged.reps).toBe(3);
    expect(merged.workloads[0]!.native.plain.time_ms).toEqual({ min: 10_000, median: 20_000, n: 3 });
    expect(merged.workloads[0]!.native.plain.bytes_on_link).toEqual({ min: 100e6, median: 110e6, n: 3 });
    const t = formatSweep({ type: "bench-sweep", startedAt: "2026-01-01T00:00:00Z", reps: 3, links: [merged, mergeRepetitions([rep(1000, plain(2000, 110e6))])] });
    expect(t).toContain("## 100 Mbit/s");
    expect(t).toContain("## 1000 Mbit/s");
    // 110 MB in 20 s: what the link really carried for native plain.
    expect(t).toMatch(/\| 100 Mbit\/s \| W3 \| 5\.5 \|/);
    expect(t).toMatch(/\| 1000 Mbit\/s \| W3 \| 55\.0 \|/);
  });
});
