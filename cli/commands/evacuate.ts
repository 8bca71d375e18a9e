/** `gangway evacuate HOST`: move every VM off a host, gangs placed by shared pages. */
import { randomUUID } from "node:crypto";
import { DeliverPolicy, jetstream, type ConsumerMessages } from "@nats-io/jetstream";
import { hostDrained, hostEvacuate, hostEvacuateCancel, hostEvacuationProgress } from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { numberFlag, parseCommandArgs, printJson } from "../args.ts";
import { CheckFailedError, UsageError } from "../errors.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { expectPositionals } from "../positionals.ts";
import { cliPublisher, cliUser } from "../requester.ts";

const help = `usage: gangway evacuate HOST [--to HOST,HOST...] [--parallel N] [--reason TEXT] [--json]
       gangway evacuate HOST --cancel EVACUATION_ID

Publishes the evacuate command (the same CloudEvent an autoscaler can publish on
gw.cmd.host.HOST.evacuate) and follows the evacuation until the host is drained.
VMs sharing the most pages move together, to where they share most.

  --to HOSTS        candidate destinations (default: every other host)
  --parallel N      VMs migrating at once from HOST (default 2, KubeVirt's per-node limit)
  --reason TEXT     recorded in the audit trail
  --cancel ID       stop that evacuation from starting more gangs (gangs under way finish or roll back)
  --json            one JSON line per progress event, then the summary
${natsFlagHelp}`;

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

export interface EvacuationSummary {
  evacuationId: string;
  host: string;
  drained: boolean;
  moved: { vm: string; to: string; migrationId: string }[];
  failed: { vm: string; reason: string }[];
}

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, to: { type: "string" }, parallel: { type: "string" }, reason: { type: "string" }, cancel: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 1, 1, "HOST to evacuate");
  const host = positionals[0]!;
  const to = values.to?.split(",").map((h) => h.trim()).filter(Boolean);
  for (const h of [host, ...(to ?? [])]) if (!TOKEN.test(h)) throw new UsageError(`host "${h}" must be letters, digits, _ or -`);
  if (to?.includes(host)) throw new UsageError(`--to names ${host}, the host being evacuated`);
  const parallel = Math.round(numberFlag("parallel", values.parallel, 2));
  if (values.cancel !== undefined) {
    if (!TOKEN.test(values.cancel)) throw new UsageError(`evacuation id "${values.cancel}" must be letters, digits, _ or -`);
    const nc = await connectFromFlags(values, "gangway-evacuate");
    try {
      await cliPublisher(nc).publish(hostEvacuateCancel, { host }, { host, evacuationId: values.cancel, requestedBy: cliUser() });
      if (values.json) printJson({ host, evacuationId: values.cancel, cancel: "requested" });
      else process.stdout.write(`cancel of ${values.cancel} requested\n`);
    } finally {
      await nc.close();
    }
    return;
  }

  const nc = await connectFromFlags(values, "gangway-evacuate");
  try {
    const evacuationId = `evac-${host}-${randomUUID().slice(0, 8)}`;
    const js = jetstream(nc);
    const consumer = await js.consumers.get(EVENTS_STREAM, { filter_subjects: `gw.host.${host}.>`, deliver_policy: DeliverPolicy.New });
    const messages: ConsumerMessages = await consumer.consume();
    await cliPublisher(nc).publish(hostEvacuate, { host }, {
      host, evacuationId, requestedBy: cliUser(), ...(values.reason ? { reason: values.reason } : {}), ...(to ? { candidates: to } : {}),
      limits: { parallelMigrations: Math.max(parallel, 5), parallelOutboundPerHost: parallel },
    });
    const summary: EvacuationSummary = { evacuationId, host, drained: false, moved: [], failed: [] };
    try {
      for await (const m of messages) {
        const d = decodeMessage(m.subject, m.data, m.headers);
        if (!d.ok || d.event.mode !== "structured") continue;
        const data = d.event.data as { evacuationId?: string };
        if (data.evacuationId !== evacuationId) continue;
        if (d.event.type === hostEvacuationProgress.type) {
          const p = d.event.data as { remaining: string[]; moved: EvacuationSummary["moved"]; failed: EvacuationSummary["failed"] };
          summary.moved = p.moved;
          summary.failed = p.failed;
          if (values.json) printJson({ type: "progress", evacuationId, remaining: p.remaining, moved: p.moved, failed: p.failed });
          else process.stderr.write(`evacuating ${host}: ${p.moved.length} moved, ${p.remaining.length} remaining, ${p.failed.length} failed\n`);
          if (p.remaining.length === 0 && p.failed.length > 0) break;
        } else if (d.event.type === hostDrained.type) {
          summary.drained = true;
          break;
        }
      }
    } finally {
      messages.stop();
    }
    if (values.json) printJson({ type: "summary", ...summary });
    else {
      for (const m of summary.moved) process.stdout.write(`${m.vm} → ${m.to} (${m.migrationId})\n`);
      for (const f of summary.failed) process.stdout.write(`${f.vm} NOT moved: ${f.reason}\n`);
      process.stdout.write(summary.drained ? `${host} is drained\n` : `${host} is not drained\n`);
    }
    if (!summary.drained) throw new CheckFailedError(`${host} was not drained: ${summary.failed.length} VM(s) could not be moved`);
  } finally {
    await nc.close();
  }
}
