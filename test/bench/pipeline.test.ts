/**
 * `gangway bench --pipeline` end to end, with a real nats-server and the real functions: the
 * quick mode checks every page of every run and prints the report as its last JSON line; a
 * page the destination spoils or leaves out fails the run (exit 1) with the page named.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { resolve } from "node:path";

const BIN = resolve(import.meta.dirname, "../../bin/gangway.mjs");

function gangway(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: "error", ...env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("exit", (code) => res({ code, stdout, stderr }));
  });
}

const side = expect.objectContaining({ mb_per_s: expect.any(Number), cpu_s_per_gb: expect.any(Number), peak_rss_mb: expect.any(Number) });

describe("bench --pipeline", () => {
  it("--quick runs every mix with 1 and 4 VMs, checks every page, and ends with the pipeline report", async () => {
    const r = await gangway(["bench", "--pipeline", "--quick", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    const report = lines[lines.length - 1] as { type: string; mixes: { mix: string; vms: number; pages_checked: number; pages_expected: number; pages_sent: number; source: Record<string, number>; destination: Record<string, number> }[] };
    expect(report.type).toBe("pipeline");
    expect(report.mixes.map((m) => `${m.mix}×${m.vms}`)).toEqual(["present×1", "present×4", "new×1", "new×4", "w2×1", "w2×4"]);
    expect(lines.slice(0, -1).map((l) => l.type)).toEqual(Array(6).fill("run"));
    for (const m of report.mixes) {
      expect(m.source).toEqual(side);
      expect(m.destination).toEqual(side);
      for (const s of [m.source, m.destination]) for (const k of ["mb_per_s", "cpu_s_per_gb", "peak_rss_mb"]) expect(s[k]).toBeGreaterThan(0);
      // 16 MiB of m0 plus the small blocks, per VM: every page there and checked.
      expect(m.pages_checked).toBe(m.vms * (4096 + 130));
      expect(m.pages_checked).toBe(m.pages_expected);
    }
    const sent = Object.fromEntries(report.mixes.map((m) => [`${m.mix}×${m.vms}`, m.pages_sent]));
    expect(sent["present×4"]).toBe(0);
    expect(sent["new×4"]).toBe(4 * (4096 + 130));
    expect(sent["w2×4"]).toBeGreaterThan(0);
  }, 120_000);

  it("fails with the page named when the destination alters a page", async () => {
    const r = await gangway(["bench", "--pipeline", "--mix", "new", "--vms", "1", "--size-mib", "4"], { GANGWAY_TEST_FAULTS: "pipeline-alter-page:vm1" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/page check failed: .*vm1: page m0\+0x[0-9a-f]+ differs from what the source stream carried \(first at byte 17/);
  }, 60_000);

  it("fails when the destination leaves a page out", async () => {
    const r = await gangway(["bench", "--pipeline", "--mix", "w2", "--vms", "1", "--size-mib", "4"], { GANGWAY_TEST_FAULTS: "pipeline-drop-page:vm1" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/page check failed: .*vm1: 1 page\(s\) the source stream carried never reached the destination's stream \(first: m0\+0x[0-9a-f]+\)/);
  }, 60_000);

  it("says what is wrong with a bad flag", async () => {
    const r = await gangway(["bench", "--pipeline", "--mix", "w9"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/--mix: unknown mix "w9"/);
    const v = await gangway(["bench", "--vms", "1"]);
    expect(v.code).toBe(64);
    expect(v.stderr).toMatch(/--vms is for the pipeline benchmark: add --pipeline/);
  }, 30_000);
});
