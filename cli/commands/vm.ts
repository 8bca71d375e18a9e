/** `gangway vm start|list|stop`: manage VMs through the host agents. */
import { parseCommandArgs } from "../args.ts";
import { UsageError } from "../errors.ts";
import { natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { NotBuiltYetError } from "../notYet.ts";

const help = `usage: gangway vm start NAME --host HOST [--memory MiB] [--kernel FILE] [--append ARGS] [--tenant T]
       gangway vm list [--host HOST] [--json]
       gangway vm stop NAME --host HOST
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    ...natsFlagSpec, host: { type: "string" }, memory: { type: "string" }, kernel: { type: "string" }, append: { type: "string" }, tenant: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  const [sub, ...rest] = positionals;
  if (sub !== "start" && sub !== "list" && sub !== "stop") throw new UsageError(sub ? `unknown vm subcommand "${sub}" (start, list, stop)` : "missing subcommand: start, list or stop");
  if (sub !== "list" && rest.length !== 1) throw new UsageError(`vm ${sub} takes one VM name`);
  if (sub !== "list" && !values.host) throw new UsageError(`vm ${sub} needs --host HOST`);
  throw new NotBuiltYetError("vm", `vm ${sub} (needs the host agent)`);
}
