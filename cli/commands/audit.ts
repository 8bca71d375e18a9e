/** `gangway audit MIGRATION_ID`: replay and re-verify a migration from the retained stream. */
import { parseCommandArgs } from "../args.ts";
import { UsageError } from "../errors.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway audit MIGRATION_ID [--json]
       gangway audit --host HOST [--since TIME] [--json]
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, host: { type: "string" }, since: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  if (positionals.length > 1) throw new UsageError(`audit takes one migration id, got ${positionals.length}`);
  if (positionals.length === 0 && !values.host) throw new UsageError("name a MIGRATION_ID, or --host HOST to list migrations");
  if (values.since && Number.isNaN(Date.parse(values.since))) throw new UsageError(`--since must be a time (ISO 8601), got "${values.since}"`);
  throw new NotBuiltYetError("audit", "migration audit");
}
