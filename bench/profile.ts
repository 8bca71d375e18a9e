/**
 * Top self-time functions of V8 CPU profiles (`node --cpu-prof`), to say where gangway's
 * processes spend their CPU during a benchmark. Profile the benchmark's gangway processes with
 *
 *   NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/gwprof" node bin/gangway.mjs bench --quick --workloads W1
 *   npx tsx bench/profile.ts /tmp/gwprof [TOP]
 *
 * Each process writes into DIR/<process>/ one profile per thread (the main thread does the
 * work; tsx's module loader thread is nearly idle and is skipped).
 */
import { readdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileSummary {
  file: string;
  seconds: number;
  /** Share of samples not idle. */
  busy: number;
  top: { fn: string; where: string; selfShare: number }[];
  /** Self time grouped by source file (node_modules packages collapsed). */
  byFile: { file: string; selfShare: number }[];
}

const shortUrl = (url: string) => {
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + 13).split("/").slice(0, url.slice(nm + 13).startsWith("@") ? 2 : 1).join("/");
  const i = url.indexOf("/work/main/");
  return i >= 0 ? url.slice(i + 11) : url.replace(/^file:\/\//, "") || "(native)";
};

export function summarizeProfile(file: string, p: CpuProfile, top = 15): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const hits = new Map<number, number>();
  if (p.samples) for (const s of p.samples) hits.set(s, (hits.get(s) ?? 0) + 1);
  else for (const n of p.nodes) hits.set(n.id, n.hitCount ?? 0);
  let total = 0;
  let idle = 0;
  const fns = new Map<string, number>();
  const files = new Map<string, number>();
  for (const [id, h] of hits) {
    const n = byId.get(id);
    if (!n) continue;
    total += h;
    const name = n.callFrame.functionName || "(anonymous)";
    if (name === "(idle)") idle += h;
    if (name === "(idle)") continue;
    const key = `${name}\u0000${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
    fns.set(key, (fns.get(key) ?? 0) + h);
    const f = name.startsWith("(") ? name : shortUrl(n.callFrame.url);
    files.set(f, (files.get(f) ?? 0) + h);
  }
  const busyHits = total - idle;
  const sorted = [...fns].sort((a, b) => b[1] - a[1]).slice(0, top);
  return {
    file,
    seconds: (p.endTime - p.startTime) / 1e6,
    busy: total ? busyHits / total : 0,
    top: sorted.map(([k, h]) => {
      const [fn, where] = k.split("\u0000");
      return { fn: fn!, where: where!, selfShare: busyHits ? h / busyHits : 0 };
    }),
    byFile: [...files].sort((a, b) => b[1] - a[1]).slice(0, top).map(([file, h]) => ({ file, selfShare: busyHits ? h / busyHits : 0 })),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const [dir, topArg] = process.argv.slice(2);
  if (!dir) {
    process.stderr.write("usage: npx tsx bench/profile.ts DIR_OF_CPUPROFILES [TOP]\n");
    process.exitCode = 64;
  } else {
    const files = (await readdir(dir, { recursive: true })).filter((x) => String(x).endsWith(".cpuprofile")).map(String).sort();
    for (const f of files) {
      const s = summarizeProfile(f, JSON.parse(await readFile(join(dir, f), "utf8")) as CpuProfile, Number(topArg ?? 15));
      if (s.busy < 0.02) {
        process.stdout.write(`\n== ${f}: ${s.seconds.toFixed(1)} s profiled, ${(s.busy * 100).toFixed(1)}% busy (a helper thread; skipped)\n`);
        continue;
      }
      process.stdout.write(`\n== ${f}: ${s.seconds.toFixed(1)} s profiled, ${(s.busy * 100).toFixed(0)}% busy\n  by file:\n`);
      for (const x of s.byFile) process.stdout.write(`    ${(x.selfShare * 100).toFixed(1).padStart(5)}%  ${x.file}\n`);
      process.stdout.write("  by function (self):\n");
      for (const x of s.top) process.stdout.write(`    ${(x.selfShare * 100).toFixed(1).padStart(5)}%  ${x.fn}  ${x.where}\n`);
    }
  }
}
