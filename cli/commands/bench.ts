/** `gangway bench`: gangway against native QEMU over a shaped link. */
import { parseCommandArgs } from "../args.ts";
import { natsFlagHelp } from "../natsFlags.ts";
import { expectPositionals, NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway bench [--quick] [--json]
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { quick: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  throw new NotBuiltYetError("bench", "the benchmark");
}
