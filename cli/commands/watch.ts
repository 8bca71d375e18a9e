/** `gangway watch`: live view of migrations in flight. */
import { followMigrations } from "../../infra/audit/watch.ts";
import { watchPrinter } from "../../infra/audit/watchView.ts";
import { parseCommandArgs } from "../args.ts";
import { UsageError } from "../errors.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec, untilSignal } from "../natsFlags.ts";
import { expectPositionals } from "../positionals.ts";

const help = `usage: gangway watch [--since TIME] [--once] [--json]

Shows every migration in flight, from the events: progress bars in a terminal, one line
per update otherwise. Catches up on the events since TIME (default: the last hour), shows
what is in flight, then follows new events until SIGINT.

  --since TIME      catch up from this time (ISO 8601)
  --once            print what is in flight now and exit
  --json            one JSON object per line: {"type":"migration",…} per update,
                    then {"type":"summary",…} when it stops
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, since: { type: "string" }, once: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  if (values.since && Number.isNaN(Date.parse(values.since))) throw new UsageError(`--since must be a time (ISO 8601), got "${values.since}"`);
  const once = Boolean(values.once);
  const nc = await connectFromFlags(values, "gangway-watch", { reconnect: !once });
  const stop = new AbortController();
  if (!once) void untilSignal().then(() => stop.abort());
  try {
    const printer = watchPrinter({ json: Boolean(values.json), tty: Boolean(process.stdout.isTTY) && !values.json });
    const watch = await followMigrations(nc, {
      ...(values.since ? { since: new Date(values.since) } : {}), once, signal: stop.signal,
      onCaughtUp: (w) => printer.caughtUp(w), onUpdate: (m, w) => printer.update(m, w),
    });
    printer.done(watch);
  } finally {
    await nc.close();
  }
}
