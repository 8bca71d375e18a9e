/**
 * An SVG chart of a benchmark report: per workload, link bytes and gang time side by side,
 * native plain, native multifd+zstd and gangway (bytes stacked: preparation + migration).
 * Medians; runs that did not finish are drawn faded and dashed (what they had moved, and
 * how long they ran, when the time limit stopped them) and labelled.
 *
 *   npx tsx bench/chart.ts REPORT.json [OUT.svg]      (default bench/results.svg)
 */
import { readFile, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import type { BenchReport, WorkloadReport } from "./run.ts";

const COLORS = { plain: "#8c8c8c", multifd: "#4e79a7", gangway: "#e15759", prep: "#f1a6a7" };

interface Bar {
  label: string;
  value: number;
  stack?: number; // lower part (preparation) of a stacked bar
  color: string;
  note?: string;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? undefined : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function bars(w: WorkloadReport, kind: "bytes" | "time"): Bar[] {
  const out: Bar[] = [];
  const nat = (m: "plain" | "multifd-zstd", label: string, color: string) => {
    const s = w.native[m];
    const v = kind === "bytes" ? s.bytes_on_link?.median : s.time_ms?.median;
    if (v !== undefined) out.push({ label, value: kind === "bytes" ? v / 1e6 : v / 1000, color });
    else {
      // Runs that hit the time limit: what they had moved by then, drawn faded.
      const raw = w.raw.native[m];
      const at = median(raw.map((r) => (kind === "bytes" ? r.bytes_on_link / 1e6 : r.time_ms / 1000)));
      out.push({ label, value: at ?? 0, color, note: s.runs ? "did not finish" : "not run" });
    }
  };
  nat("plain", "native plain", COLORS.plain);
  nat("multifd-zstd", "native multifd+zstd", COLORS.multifd);
  const g = w.gangway;
  if (g?.time_ms && g.bytes_on_link) {
    if (kind === "bytes") out.push({ label: "gangway", value: g.bytes_on_link.median / 1e6, stack: (g.prep_bytes_on_link?.median ?? 0) / 1e6, color: COLORS.gangway });
    else out.push({ label: "gangway", value: g.time_ms.median / 1000, color: COLORS.gangway });
  } else {
    const raw = w.raw.gangway.filter((r): r is Extract<typeof r, { completed: boolean }> => !("error" in r));
    const at = median(raw.map((r) => (kind === "bytes" ? r.total_bytes_on_link / 1e6 : r.time_ms / 1000)));
    out.push({ label: "gangway", value: at ?? 0, color: COLORS.gangway, note: g?.runs ? "did not finish" : "not run" });
  }
  return out;
}

const SHORT: Record<string, string[]> = {
  W1: ["4 test VMs,", "one image,", "1k pages/s"],
  W2: ["4 Debian VMs,", "busybox initramfs"],
  W3: ["1 VM, all pages", "unique random"],
  W4: ["1 VM dirtying", "60k pages/s"],
};

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");

export function renderChart(r: BenchReport): string {
  const ws = r.workloads.filter((w) => !w.skipped);
  const panelW = 300;
  const panelH = 200;
  const top = 70;
  const rowH = panelH + 90;
  const left = 150;
  const width = left + 2 * (panelW + 60) + 20;
  const height = top + ws.length * rowH + 40;
  const s: string[] = [];
  s.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  s.push(`<rect width="100%" height="100%" fill="white"/>`);
  s.push(`<text x="10" y="22" font-size="16" font-weight="bold">gangway vs native QEMU over a ${r.link.mbps} Mbit/s shaped link (medians of ${r.reps} run(s))</text>`);
  s.push(`<text x="10" y="42" fill="#555">${esc(`${r.machine.cpus} cores, ${r.machine.memory_gib} GiB, QEMU TCG; ${r.quick ? "quick mode (128 MiB VMs, W4 256 MiB); " : ""}gangway bytes = preparation (light) + migration (dark); time = migration phase`)}</text>`);
  const legend = [["native plain pre-copy", COLORS.plain], ["native multifd+zstd", COLORS.multifd], ["gangway migration", COLORS.gangway], ["gangway preparation", COLORS.prep]] as const;
  legend.forEach(([l, c], i) => {
    s.push(`<rect x="${10 + i * 190}" y="50" width="12" height="12" fill="${c}"/><text x="${26 + i * 190}" y="60">${l}</text>`);
  });
  ws.forEach((w, row) => {
    const y0 = top + row * rowH + 20;
    s.push(`<text x="10" y="${y0 + panelH / 2}" font-weight="bold" font-size="14">${w.id}</text>`);
    SHORT[w.id].forEach((line, i) => s.push(`<text x="10" y="${y0 + panelH / 2 + 16 + i * 13}" fill="#555" font-size="10">${esc(line)}</text>`));
    (["bytes", "time"] as const).forEach((kind, col) => {
      const x0 = left + col * (panelW + 60);
      const bs = bars(w, kind);
      const max = Math.max(1e-9, ...bs.map((b) => b.value)) * 1.15;
      s.push(`<text x="${x0}" y="${y0 - 6}" font-weight="bold">${kind === "bytes" ? "bytes on the link (MB)" : "gang migration time (s)"}</text>`);
      s.push(`<line x1="${x0}" y1="${y0 + panelH}" x2="${x0 + panelW}" y2="${y0 + panelH}" stroke="#333"/>`);
      const bw = panelW / bs.length - 24;
      bs.forEach((b, i) => {
        const bx = x0 + 12 + i * (panelW / bs.length);
        const h = (b.value / max) * panelH;
        if (b.note) {
          if (b.value > 0) {
            s.push(`<rect x="${bx}" y="${y0 + panelH - h}" width="${bw}" height="${h}" fill="${b.color}" fill-opacity="0.3" stroke="${b.color}" stroke-dasharray="4 3"/>`);
            s.push(`<text x="${bx + bw / 2}" y="${y0 + panelH - h - 4}" text-anchor="middle">${kind === "bytes" ? b.value.toFixed(0) : b.value.toFixed(0)}</text>`);
          }
          s.push(`<text x="${bx + bw / 2}" y="${y0 + panelH - 6}" text-anchor="middle" fill="#a00" font-size="10">${b.note}</text>`);
        } else {
          s.push(`<rect x="${bx}" y="${y0 + panelH - h}" width="${bw}" height="${h}" fill="${b.color}"/>`);
          if (b.stack) {
            const hs = (b.stack / max) * panelH;
            s.push(`<rect x="${bx}" y="${y0 + panelH - hs}" width="${bw}" height="${hs}" fill="${COLORS.prep}"/>`);
          }
          s.push(`<text x="${bx + bw / 2}" y="${y0 + panelH - h - 4}" text-anchor="middle">${kind === "bytes" ? b.value.toFixed(0) : b.value.toFixed(1)}</text>`);
        }
        s.push(`<text x="${bx + bw / 2}" y="${y0 + panelH + 14}" text-anchor="middle" font-size="10">${esc(b.label)}</text>`);
      });
    });
  });
  s.push(`</svg>`);
  return s.join("\n") + "\n";
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const [input, output = resolve(import.meta.dirname, "results.svg")] = process.argv.slice(2);
  if (!input) {
    process.stderr.write("usage: npx tsx bench/chart.ts REPORT.json [OUT.svg]\n");
    process.exitCode = 64;
  } else {
    const report = JSON.parse(await readFile(input, "utf8")) as BenchReport;
    await writeFile(output, renderChart(report));
    process.stdout.write(`wrote ${output}\n`);
  }
}
