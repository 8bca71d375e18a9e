/** `gangway evacuate HOST`: move every VM off a host. */
import { parseCommandArgs } from "../args.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { expectPositionals, NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway evacuate HOST [--to HOST,...] [--reason TEXT] [--json]
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, to: { type: "string" }, reason: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 1, 1, "HOST to evacuate");
  throw new NotBuiltYetError("evacuate", "host evacuation");
}
