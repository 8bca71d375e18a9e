/** `gangway migrate VM... --from HOST --to HOST`: live-migrate VMs as a gang. */
import { parseCommandArgs } from "../args.ts";
import { UsageError } from "../errors.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway migrate VM... --from HOST [--to HOST] [--json] [--max-downtime-ms N] [--bandwidth MBps]
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    ...natsFlagSpec, from: { type: "string" }, to: { type: "string" }, json: { type: "boolean" }, "max-downtime-ms": { type: "string" }, bandwidth: { type: "string" }, help: { type: "boolean" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  if (positionals.length === 0) throw new UsageError("name at least one VM to migrate");
  if (!values.from) throw new UsageError("--from HOST is required");
  throw new NotBuiltYetError("migrate", "gang migration");
}
