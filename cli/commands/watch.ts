/** `gangway watch`: live view of migrations in flight. */
import { parseCommandArgs } from "../args.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { expectPositionals, NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway watch [--json]
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  throw new NotBuiltYetError("watch", "the live view");
}
