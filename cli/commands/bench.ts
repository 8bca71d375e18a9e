/** `gangway bench`: gangway against native QEMU over a shaped link. */
import { writeFile } from "node:fs/promises";
import { numberFlag, parseCommandArgs, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";
import { expectPositionals } from "../positionals.ts";
import { formatReport, runBench } from "../../bench/run.ts";
import { ALL_WORKLOADS, parseWorkloads, type WorkloadId } from "../../bench/workloads.ts";

const help = `usage: gangway bench [--quick] [--json] [--reps N] [--link-mbps N] [--workloads W1,W2,W3,W4] [--out FILE] [--cpu-prof DIR]

Migrates the same workloads with native QEMU (plain pre-copy; multifd with zstd) and with
gangway over one shaped link (a rate-limiting TCP relay, default 1000 Mbit/s each way,
shared by the whole gang), N repetitions each (default 3; --quick: 1, 128 MiB VMs
but W4, W1,W3,W4), and reports min and median of gang time, bytes on the link, downtime, and
gangway's CPU seconds and peak memory, with gangway/native ratios and the targets.

  W1  4 test VMs, one image (25% zero, 25% shared), 1,000 pages/s dirtied
  W2  4 VMs booting a Debian kernel with a busybox initramfs
  W3  1 VM of all-unique random pages
  W4  1 VM dirtying 60,000 pages/s (twice what a 1 Gbit/s link carries)

--json prints one JSON object; --out FILE also writes it to FILE. Progress goes to stderr.
--cpu-prof DIR runs gangway's processes under node --cpu-prof (summarize with
\`npx tsx bench/profile.ts DIR/W1-1\`); profiling slows them down.`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    quick: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean" },
    reps: { type: "string" }, "link-mbps": { type: "string" }, workloads: { type: "string" }, out: { type: "string" }, "cpu-prof": { type: "string" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  const quick = Boolean(values.quick);
  const reps = numberFlag("reps", values.reps, quick ? 1 : 3);
  if (!Number.isInteger(reps)) throw new UsageError(`--reps must be a whole number, got "${values.reps}"`);
  const linkMbps = numberFlag("link-mbps", values["link-mbps"], 1000);
  let workloads: WorkloadId[];
  try {
    workloads = values.workloads ? parseWorkloads(values.workloads) : quick ? ["W1", "W3", "W4"] : ALL_WORKLOADS;
  } catch (err) {
    throw new UsageError(`--workloads: ${(err as Error).message}`);
  }
  if (workloads.length === 0) throw new UsageError("--workloads names no workload");

  const report = await runBench({ quick, reps, linkMbps, workloads, ...(values["cpu-prof"] ? { cpuProfileDir: values["cpu-prof"] } : {}), log: (s) => process.stderr.write(`bench: ${s}\n`) });
  if (values.out) await writeFile(values.out, JSON.stringify(report, null, 1) + "\n");
  if (values.json) printJson(report);
  else process.stdout.write(formatReport(report) + "\n");
}
