/** `gangway migrate VM... [--from HOST] [--to HOST]`: live-migrate VMs as a gang. */
import { parseCommandArgs, numberFlag, printJson } from "../args.ts";
import { CheckFailedError, UsageError } from "../errors.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { migrateGang } from "../gangMigration.ts";
import { hostOf } from "../localCluster.ts";
import { migrationCancel, migrationForceComplete } from "../../schemas/index.ts";
import { progressPrinter, summaryTable } from "../progressView.ts";
import { cliPublisher, cliUser } from "../requester.ts";

const help = `usage: gangway migrate VM... [--from HOST] [--to HOST] [options]
       gangway migrate --cancel MIGRATION_ID [--reason TEXT]
       gangway migrate --force-complete MIGRATION_ID

Live-migrates the VMs as one gang: each distinct page crosses the link once.

  --live                 accepted for virsh's sake: every gangway migration is live
  --from HOST            the host the VMs run on (default: the host whose inventory has them)
  --to HOST              destination (default: the host with most free memory)
  --max-downtime-ms N    largest acceptable downtime (default 300)
  --progress-timeout S   abort after S seconds without progress (default 150)
  --postcopy             allow a switch to post-copy when pre-copy stops converging (virsh --postcopy)
  --postcopy-after-precopy  switch to post-copy after the first pre-copy pass (implies --postcopy;
                         virsh's flag; the same as --postcopy --max-rounds 1)
  --max-rounds N         pre-copy passes before post-copy, or before giving up without it (default 30)
  --timeout S            not done after S seconds: switch over now, as virsh does (stop-and-copy,
                         i.e. the guest suspended for the rest: --timeout-suspend, the default; or
                         --timeout-postcopy, which needs --postcopy). Kept by this command: it
                         acts only while \`gangway migrate\` runs (like virsh's)
  --completion-timeout-per-gib S  KubeVirt's budget per GiB of guest RAM (default 150): then
                         post-copy where allowed, else the migration is aborted
  --bandwidth MIBPS      cap the migration stream at MIBPS MiB/s (virsh --bandwidth, same unit)
  --verbose              accepted for virsh's sake: progress is always shown (on stderr)
  --abort-on-error       accepted for virsh's sake: any error aborts a gangway migration
  --auto-converge        throttle the guest's vCPUs while pre-copy lags (libvirt --auto-converge)
  --auto-converge-max P  at most P percent of vCPU time (default 99)
  --parallel-switchovers N  at most N VMs of the gang stopped for their last pass at once
                         (default: no limit); each VM's pause is then its own work, not the
                         gang's, but a VM slow to finish holds the others (60 s at most)
  --reason TEXT          recorded in the audit trail
  --cancel ID            cancel a migration in whatever phase it is: VMs not yet committed roll back
  --force-complete ID    switch over now: post-copy where allowed, else stop-and-copy (Nova's force-complete)
  --json                 one JSON line per progress update, then the summary
${natsFlagHelp}`;

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    ...natsFlagSpec, from: { type: "string" }, to: { type: "string" }, json: { type: "boolean" }, "max-downtime-ms": { type: "string" }, "progress-timeout": { type: "string" }, reason: { type: "string" }, cancel: { type: "string" }, help: { type: "boolean" }, live: { type: "boolean" },
    postcopy: { type: "boolean" }, "max-rounds": { type: "string" }, bandwidth: { type: "string" }, "force-complete": { type: "string" }, "auto-converge": { type: "boolean" }, "auto-converge-max": { type: "string" },
    "parallel-switchovers": { type: "string" }, "postcopy-after-precopy": { type: "boolean" }, timeout: { type: "string" }, "timeout-suspend": { type: "boolean" },
    "timeout-postcopy": { type: "boolean" }, "completion-timeout-per-gib": { type: "string" }, verbose: { type: "boolean" }, "abort-on-error": { type: "boolean" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  for (const flag of ["cancel", "force-complete"] as const) {
    const migrationId = values[flag];
    if (migrationId === undefined) continue;
    if (positionals.length) throw new UsageError(`--${flag} takes a migration id and no VM names`);
    if (!TOKEN.test(migrationId)) throw new UsageError(`migration id "${migrationId}" must be letters, digits, _ or -`);
    const nc = await connectFromFlags(values, "gangway-migrate");
    try {
      const pub = cliPublisher(nc);
      const requestedBy = cliUser();
      if (flag === "cancel") await pub.publish(migrationCancel, { migrationId }, { migrationId, requestedBy, ...(values.reason ? { reason: values.reason } : {}) });
      else await pub.publish(migrationForceComplete, { migrationId }, { migrationId, requestedBy });
      if (values.json) printJson({ migrationId, [flag]: "requested" });
      else process.stdout.write(`${flag} of ${migrationId} requested\n`);
    } finally {
      await nc.close();
    }
    return;
  }
  if (positionals.length === 0) throw new UsageError("name at least one VM to migrate");
  for (const v of positionals) if (!TOKEN.test(v)) throw new UsageError(`VM name "${v}" must be letters, digits, _ or -`);
  for (const h of [values.from, values.to]) if (h !== undefined && !TOKEN.test(h)) throw new UsageError(`host "${h}" must be letters, digits, _ or -`);
  const maxDowntimeMs = numberFlag("max-downtime-ms", values["max-downtime-ms"], 300);
  const progressTimeoutSec = numberFlag("progress-timeout", values["progress-timeout"], 150);
  const afterPrecopy = Boolean(values["postcopy-after-precopy"]);
  const postcopy = Boolean(values.postcopy) || afterPrecopy;
  const maxRounds = numberFlag("max-rounds", values["max-rounds"], afterPrecopy ? 1 : 30);
  if (!Number.isInteger(maxRounds)) throw new UsageError(`--max-rounds must be a whole number, got "${values["max-rounds"]}"`);
  const timeout = timeoutOf(values, postcopy);
  const completionTimeoutPerGiB = values["completion-timeout-per-gib"] === undefined ? undefined : numberFlag("completion-timeout-per-gib", values["completion-timeout-per-gib"], 150);
  if (completionTimeoutPerGiB !== undefined && !Number.isInteger(completionTimeoutPerGiB)) throw new UsageError(`--completion-timeout-per-gib must be a whole number of seconds, got "${values["completion-timeout-per-gib"]}"`);
  // virsh's unit: MiB/s; the migration's options carry MB/s.
  const bandwidthMBps = values.bandwidth === undefined ? undefined : (numberFlag("bandwidth", values.bandwidth, 0) * 1024 * 1024) / 1e6;
  const autoConvergeMaxPercent = numberFlag("auto-converge-max", values["auto-converge-max"], 99);
  if (!Number.isInteger(autoConvergeMaxPercent) || autoConvergeMaxPercent > 99) throw new UsageError(`--auto-converge-max must be a whole percent from 1 to 99, got "${values["auto-converge-max"]}"`);
  const parallelSwitchovers = values["parallel-switchovers"] === undefined ? undefined : numberFlag("parallel-switchovers", values["parallel-switchovers"], 1);
  if (parallelSwitchovers !== undefined && !Number.isInteger(parallelSwitchovers)) throw new UsageError(`--parallel-switchovers must be a whole number, got "${values["parallel-switchovers"]}"`);
  const nc = await connectFromFlags(values, "gangway-migrate");
  try {
    const from = values.from ?? (await hostOf(nc, positionals));
    if (!from) throw new UsageError(`no host reports all of ${positionals.join(", ")}; name the source with --from HOST`);
    const printer = progressPrinter({ json: Boolean(values.json), tty: Boolean(process.stderr.isTTY) });
    let migrationId: string | undefined;
    const timer = timeout && setTimeout(() => {
      if (!migrationId) return;
      const pub = cliPublisher(nc);
      process.stderr.write(`gangway migrate: not done after ${timeout.seconds} s (--timeout): switching over, ${timeout.mode}\n`);
      void pub.publish(migrationForceComplete, { migrationId }, { migrationId, requestedBy: `${cliUser()} (--timeout ${timeout.seconds})`, mode: timeout.mode })
        .catch((e: Error) => process.stderr.write(`gangway migrate: the switch-over after --timeout was not sent: ${e.message}\n`));
    }, timeout.seconds * 1000);
    const summary = await migrateGang({
      nc, vms: positionals, sourceHost: from, ...(values.to ? { targetHost: values.to } : {}), ...(values.reason ? { reason: values.reason } : {}),
      options: {
        maxDowntimeMs, progressTimeoutSec, maxRounds, postcopy, autoConverge: Boolean(values["auto-converge"]), autoConvergeMaxPercent,
        ...(parallelSwitchovers ? { parallelSwitchovers } : {}), ...(bandwidthMBps ? { bandwidthMBps } : {}), ...(completionTimeoutPerGiB ? { completionTimeoutPerGiB } : {}),
      },
      onUpdate: (v) => {
        migrationId = v.migrationId;
        printer.update(v);
      },
      idleTimeoutMs: progressTimeoutSec * 1000 + 30_000,
    }).finally(() => clearTimeout(timer));
    printer.done();
    if (values.json) printJson({ type: "summary", ...summary });
    else process.stdout.write(summaryTable(summary) + "\n");
    if (summary.outcome !== "succeeded") throw new CheckFailedError(`migration ${summary.migrationId} failed${summary.reason ? `: ${summary.reason}` : ""}`);
  } finally {
    await nc.close();
  }
}

/** virsh's --timeout S [--timeout-suspend | --timeout-postcopy]: what to do, and when. */
function timeoutOf(values: { timeout?: string; "timeout-suspend"?: boolean; "timeout-postcopy"?: boolean }, postcopy: boolean): { seconds: number; mode: "stop-and-copy" | "post-copy" } | undefined {
  if (values["timeout-suspend"] && values["timeout-postcopy"]) throw new UsageError("--timeout-suspend and --timeout-postcopy exclude each other");
  if (values.timeout === undefined) {
    if (values["timeout-suspend"] || values["timeout-postcopy"]) throw new UsageError(`--${values["timeout-suspend"] ? "timeout-suspend" : "timeout-postcopy"} needs --timeout S`);
    return undefined;
  }
  const seconds = numberFlag("timeout", values.timeout, 0);
  if (!(seconds > 0)) throw new UsageError(`--timeout must be a number of seconds above 0, got "${values.timeout}"`);
  if (values["timeout-postcopy"] && !postcopy) throw new UsageError("--timeout-postcopy needs --postcopy (as virsh's does)");
  return { seconds, mode: values["timeout-postcopy"] ? "post-copy" : "stop-and-copy" };
}
