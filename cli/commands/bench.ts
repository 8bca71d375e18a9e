/** `gangway bench`: gangway against native QEMU over a shaped link; `--pipeline`: gangway's data path alone, without QEMU. */
import { writeFile } from "node:fs/promises";
import { numberFlag, parseCommandArgs, printJson } from "../args.ts";
import { CheckFailedError, UsageError } from "../errors.ts";
import { expectPositionals } from "../positionals.ts";
import { formatReport, runBench } from "../../bench/run.ts";
import { formatSweep, runSweep } from "../../bench/sweep.ts";
import { ALL_WORKLOADS, parseWorkloads, type WorkloadId } from "../../bench/workloads.ts";
import type { MixId } from "../../bench/pipelineMix.ts";

const help = `usage: gangway bench [--quick] [--json] [--reps N] [--link-mbps N[,N…]] [--workloads W1,W2,W3,W4] [--out FILE] [--cpu-prof DIR]
       gangway bench --pipeline [--quick] [--json] [--size-mib N] [--vms 1,4] [--mix present,new,w2] [--out FILE] [--cpu-prof DIR]

Migrates the same workloads with native QEMU (plain pre-copy; multifd with zstd) and with
gangway over one shaped link (a rate-limiting TCP relay, default 1000 Mbit/s each way,
shared by the whole gang), N repetitions each (default 3; --quick: 1, 128 MiB VMs
but W4, W1,W3,W4), and reports min and median of gang time, bytes on the link, downtime, and
gangway's CPU seconds and peak memory, with gangway/native ratios and the targets.

  W1  4 test VMs, one image (25% zero, 25% shared), 1,000 pages/s dirtied
  W2  4 VMs booting a Debian kernel with a busybox initramfs
  W3  1 VM of all-unique random pages
  W4  1 VM dirtying 60,000 pages/s (twice what a 1 Gbit/s link carries)

--link-mbps 100,1000,10000 sweeps the link: every rate in one run, interleaved (each
repetition runs every rate), each rate's table, then the rates side by side; --json prints
{"type":"bench-sweep","links":[…one report per rate]}.

--json prints one JSON object; --out FILE also writes it to FILE. Progress goes to stderr.
--cpu-prof DIR runs gangway's processes under node --cpu-prof (summarize with
\`npx tsx bench/profile.ts DIR/W1-1\`); profiling slows them down.

--pipeline: the data path without QEMU (bench/pipeline.ts). Synthetic QEMU 7.2 streams of a
gang go through the real source pipeline, a real nats-server with the functions, and the
real destination pipeline into a sink that checks every page against the source stream
(a page wrong or missing fails the run, exit 1). Per side: MB/s of QEMU stream, CPU-seconds
per GB of it, peak RSS; the source side counts nats-server and the functions (hash) too.
  --size-mib N   guest RAM per VM (default 256; --quick: 16)
  --vms LIST     gang sizes, one run each (default 1,4)
  --mix LIST     present (every page already held), new (every page new), w2 (W2-like mix)
--json prints one JSON line per run as it ends, the last line {"type":"pipeline","mixes":[…]}.
--cpu-prof DIR profiles both sides' main threads over each run's migration (bench/profile.ts).`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    quick: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean" },
    reps: { type: "string" }, "link-mbps": { type: "string" }, workloads: { type: "string" }, out: { type: "string" }, "cpu-prof": { type: "string" },
    pipeline: { type: "boolean" }, "size-mib": { type: "string" }, vms: { type: "string" }, mix: { type: "string" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  const quick = Boolean(values.quick);
  if (values.pipeline) {
    for (const flag of ["reps", "link-mbps", "workloads"] as const) if (values[flag] !== undefined) throw new UsageError(`--${flag} is for the QEMU benchmark, not with --pipeline`);
    return runPipeline({ quick, json: Boolean(values.json), out: values.out, cpuProf: values["cpu-prof"], sizeMib: values["size-mib"], vms: values.vms, mix: values.mix });
  }
  for (const flag of ["size-mib", "vms", "mix"] as const) if (values[flag] !== undefined) throw new UsageError(`--${flag} is for the pipeline benchmark: add --pipeline`);
  const reps = numberFlag("reps", values.reps, quick ? 1 : 3);
  if (!Number.isInteger(reps)) throw new UsageError(`--reps must be a whole number, got "${values.reps}"`);
  const links = (values["link-mbps"] ?? "1000").split(",").map((x) => numberFlag("link-mbps", x.trim(), 1000));
  if (new Set(links).size !== links.length) throw new UsageError(`--link-mbps names a rate twice: "${values["link-mbps"]}"`);
  let workloads: WorkloadId[];
  try {
    workloads = values.workloads ? parseWorkloads(values.workloads) : quick ? ["W1", "W3", "W4"] : ALL_WORKLOADS;
  } catch (err) {
    throw new UsageError(`--workloads: ${(err as Error).message}`);
  }
  if (workloads.length === 0) throw new UsageError("--workloads names no workload");

  const common = { quick, reps, workloads, ...(values["cpu-prof"] ? { cpuProfileDir: values["cpu-prof"] } : {}), log: (s: string) => process.stderr.write(`bench: ${s}\n`) };
  const report = links.length > 1 ? await runSweep({ ...common, links }) : await runBench({ ...common, linkMbps: links[0]! });
  if (values.out) await writeFile(values.out, JSON.stringify(report, null, 1) + "\n");
  if (values.json) printJson(report);
  else process.stdout.write((report.type === "bench-sweep" ? formatSweep(report) : formatReport(report)) + "\n");
}

/** Gang sizes: whole numbers 1–16, each once. */
function parseGangSizes(s: string): number[] {
  const out: number[] = [];
  for (const part of s.split(",").map((x) => x.trim()).filter(Boolean)) {
    const n = Number(part);
    if (!Number.isInteger(n) || n < 1 || n > 16) throw new UsageError(`--vms takes gang sizes from 1 to 16, comma separated; got "${part}"`);
    if (!out.includes(n)) out.push(n);
  }
  if (out.length === 0) throw new UsageError("--vms names no gang size");
  return out;
}

async function runPipeline(o: { quick: boolean; json: boolean; out: string | undefined; cpuProf: string | undefined; sizeMib: string | undefined; vms: string | undefined; mix: string | undefined }): Promise<void> {
  // Loaded only here: the pipeline benchmark pulls in the whole data path.
  const { runPipelineBench } = await import("../../bench/pipeline.ts");
  const { formatPipelineReport } = await import("../../bench/pipelineReport.ts");
  const { parseMixes } = await import("../../bench/pipelineMix.ts");
  const { isPipelineCheckError } = await import("../../bench/pipelineChild.ts");
  const sizeMiB = o.sizeMib === undefined ? undefined : numberFlag("size-mib", o.sizeMib, 0);
  if (sizeMiB !== undefined && (!Number.isInteger(sizeMiB) || sizeMiB > 65536)) throw new UsageError(`--size-mib must be a whole number of MiB up to 65536, got "${o.sizeMib}"`);
  let mixes: MixId[] | undefined;
  try {
    mixes = o.mix === undefined ? undefined : parseMixes(o.mix);
  } catch (err) {
    throw new UsageError(`--mix: ${(err as Error).message}`);
  }
  if (mixes?.length === 0) throw new UsageError("--mix names no mix");
  const vms = o.vms === undefined ? undefined : parseGangSizes(o.vms);
  try {
    const report = await runPipelineBench({
      quick: o.quick, ...(sizeMiB ? { sizeMiB } : {}), ...(o.cpuProf ? { cpuProfileDir: o.cpuProf } : {}), ...(vms ? { vms } : {}), ...(mixes ? { mixes } : {}),
      log: (s) => process.stderr.write(`bench --pipeline: ${s}\n`),
      onRun: (run) => {
        if (o.json) printJson({ type: "run", ...run });
      },
    });
    if (o.out) await writeFile(o.out, JSON.stringify(report, null, 1) + "\n");
    if (o.json) printJson(report);
    else process.stdout.write(formatPipelineReport(report) + "\n");
  } catch (err) {
    // A page wrong or missing at the sink: the pipeline is broken, not the benchmark.
    if (isPipelineCheckError(err)) throw new CheckFailedError(`page check failed: ${err.message}`, { cause: err });
    throw err;
  }
}
