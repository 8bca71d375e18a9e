/** `gangway agent --host NAME`: a host agent that owns this host's VMs. */
import { join } from "node:path";
import { tmpdir } from "node:os";
import { startAgent } from "../../adapters/host/agent.ts";
import { createQemuDriver } from "../../adapters/host/qemuDriverImpl.ts";
import { createLogger } from "../../infra/log.ts";
import { startTelemetry } from "../../infra/telemetry.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec, untilSignal } from "../natsFlags.ts";
import { expectPositionals } from "../positionals.ts";

const help = `usage: gangway agent --host NAME [--nats URL] [--run-dir DIR] [--json]

Runs the host agent: starts and owns this host's VMs, publishes inventory, plays source
or destination in migrations. Stops (quitting its VMs) on SIGTERM or SIGINT.

  --host NAME       this host's name (a subject token: letters, digits, _ and -)
  --run-dir DIR     where VM sockets, logs and RAM files live (default: $TMPDIR/gangway-run/NAME)
  --json            print {"host":…,"ready":true} once serving
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, host: { type: "string" }, "run-dir": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  if (!values.host) throw new UsageError("--host NAME is required");
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(values.host)) throw new UsageError(`--host must be letters, digits, _ or - (a NATS subject token), got "${values.host}"`);
  const host = values.host;
  const log = createLogger({ component: "agent", host });
  const telemetry = startTelemetry({ serviceName: `gangway-agent` });
  const nc = await connectFromFlags(values, `gangway-agent-${host}`, { reconnect: true });
  try {
    const driver = createQemuDriver({ host, runDir: values["run-dir"] ?? join(tmpdir(), "gangway-run", host), log });
    const agent = await startAgent({ host, nc, driver, log });
    if (values.json) printJson({ host, ready: true });
    const sig = await untilSignal();
    log.info("stopping", { signal: sig });
    await agent.stop();
  } finally {
    await nc.drain().catch(() => nc.close());
    await telemetry.shutdown();
  }
}
