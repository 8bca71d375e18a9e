/** `gangway agent --host NAME`: a host agent that owns this host's VMs. */
import { join } from "node:path";
import { tmpdir } from "node:os";
import { startAgent } from "../../adapters/host/agent.ts";
import { createQemuDriver } from "../../adapters/host/qemuDriverImpl.ts";
import { createLogger } from "../../infra/log.ts";
import { startTelemetry } from "../../infra/telemetry.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";
import { connectFromFlags, connectOptionsFromFlags, natsFlagHelp, natsFlagSpec, untilSignal } from "../natsFlags.ts";
import { expectPositionals } from "../positionals.ts";

const help = `usage: gangway agent --host NAME [--nats URL] [--run-dir DIR] [--stop-vms-on-exit] [--peer-gone-timeout S] [--peer-silence-timeout S] [--json]

Runs the host agent: starts and owns this host's VMs, publishes inventory, plays source
or destination in migrations. Its VMs outlive it, like libvirt's domains: when the agent
crashes, is killed or stops (SIGTERM, SIGINT), its running VMs go on, and the next agent
started with the same --host and --run-dir adopts them (each VM's record is in its run
directory). A migration the agent was in is settled by the next one: an outgoing VM is
resumed or quit as the commit decided; an incoming one (never resumed) dies with its agent.

  --host NAME          this host's name (a subject token: letters, digits, _ and -)
  --run-dir DIR        where VM sockets, logs and records live (default: $TMPDIR/gangway-run/NAME)
  --stop-vms-on-exit   on SIGTERM or SIGINT quit the VMs too (a crash still leaves them running)
  --peer-gone-timeout S     a migration's peer whose agent is gone from NATS (its process or link
                            died) this long is given up (default 5)
  --peer-silence-timeout S  a peer that is there but does not answer (busy, frozen) is suspected,
                            and given up after this long (default 60; KubeVirt's progressTimeout is 150)
  --json               print {"host":…,"ready":true} once serving
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, host: { type: "string" }, "run-dir": { type: "string" }, "stop-vms-on-exit": { type: "boolean" }, "peer-gone-timeout": { type: "string" }, "peer-silence-timeout": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  if (!values.host) throw new UsageError("--host NAME is required");
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(values.host)) throw new UsageError(`--host must be letters, digits, _ or - (a NATS subject token), got "${values.host}"`);
  const host = values.host;
  const log = createLogger({ component: "agent", host });
  const telemetry = startTelemetry({ serviceName: `gangway-agent` });
  const seconds = (flag: "peer-gone-timeout" | "peer-silence-timeout", fallback: number) => {
    const v = values[flag];
    if (v === undefined) return fallback * 1000;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0 || n > 86_400) throw new UsageError(`--${flag} takes seconds (a number > 0), got "${v}"`);
    return n * 1000;
  };
  const liveness = { goneAfterMs: seconds("peer-gone-timeout", 5), silentAfterMs: seconds("peer-silence-timeout", 60) };
  const connect = connectOptionsFromFlags(values, `gangway-agent-${host}`, { reconnect: true });
  const nc = await connectFromFlags(values, `gangway-agent-${host}`, { reconnect: true });
  try {
    const driver = createQemuDriver({ host, runDir: values["run-dir"] ?? join(tmpdir(), "gangway-run", host), log, vmsOutliveAgent: true });
    const agent = await startAgent({ host, nc, driver, log, liveness: { ...liveness, connect } });
    if (values.json) printJson({ host, ready: true });
    const sig = await untilSignal();
    const keepVms = !values["stop-vms-on-exit"];
    log.info("stopping", { signal: sig, vms: keepVms ? "left running for the next agent" : "quit" });
    await agent.stop({ keepVms });
  } finally {
    await nc.drain().catch(() => nc.close());
    await telemetry.shutdown();
  }
}
