/**
 * `gangway demo`: the main job. Starts an embedded nats-server and the functions, then
 * (once the gang migration lands) migrates a gang of test VMs between two hosts.
 */
import { functions } from "../../functions/index.ts";
import { startEmbeddedServer } from "../../infra/nats/server.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";
import { serveFunctions } from "../../infra/runtime/functionHost.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { expectPositionals } from "../notYet.ts";

const help = `usage: gangway demo [--json]

Starts an embedded nats-server with JetStream and every function, checks the stack,
and stops it again.`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  await using server = await startEmbeddedServer({ name: "gangway-demo" });
  const nc = await connectNats({ servers: server.url, name: "gangway-demo", reconnect: false });
  try {
    await provision(nc);
    const served = await serveFunctions(functions, nc);
    const summary = { nats: server.url, functions: functions.map((f) => f.id), gangMigration: "not built yet" };
    if (values.json) printJson(summary);
    else process.stdout.write(`embedded NATS at ${server.url}; functions serving: ${summary.functions.join(", ")}.\nThe gang migration itself is not built yet.\n`);
    await served.stop();
  } finally {
    await nc.close();
  }
}
