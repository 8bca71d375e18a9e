/** `gangway agent --host NAME`: a host agent that owns this host's VMs. */
import { parseCommandArgs } from "../args.ts";
import { UsageError } from "../errors.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { expectPositionals, NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway agent --host NAME [--nats URL] [--run-dir DIR]

Runs the host agent: starts and owns this host's VMs, publishes inventory and
heartbeats, plays source or destination in migrations.

  --host NAME       this host's name (a subject token: letters, digits, _ and -)
  --run-dir DIR     where VM sockets, logs and RAM files live
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, host: { type: "string" }, "run-dir": { type: "string" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  if (!values.host) throw new UsageError("--host NAME is required");
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(values.host)) throw new UsageError(`--host must be letters, digits, _ or - (a NATS subject token), got "${values.host}"`);
  throw new NotBuiltYetError("agent", "the host agent");
}
