/**
 * `gangway stream inspect FILE [--json]`: what a saved QEMU migration stream holds.
 * `gangway stream reencode IN OUT [--json] [--no-vmdesc]`: rewrite it canonically (one
 * ram PART with the last content of each page, zero pages as ZERO records), loadable
 * with `qemu-system-x86_64 ... -incoming "exec:cat OUT"`.
 * Save a stream with QMP: {"execute":"migrate","arguments":{"uri":"exec:cat > FILE"}}.
 */
import { parseCommandArgs, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";
import { createLogger } from "../../infra/log.ts";
import { inspectFile, reencodeFile } from "../../adapters/qemu/stream/files.ts";
import { formatSummary } from "../../adapters/qemu/stream/summary.ts";

const help = `usage: gangway stream inspect FILE [--json]
       gangway stream reencode IN OUT [--json] [--no-vmdesc]

  inspect    summary of a saved migration stream: machine, RAM blocks, pages by
             kind per round, device sections, commands, VMDESC, total bytes
  reencode   rewrite IN canonically into OUT (one ram PART, last content of each
             page, zero pages as ZERO records); QEMU loads OUT with
             -incoming "exec:cat OUT"

options:
  --json        print one JSON object on stdout
  --no-vmdesc   (reencode) leave out the VMDESC record
  --help        this text`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    json: { type: "boolean" },
    "no-vmdesc": { type: "boolean" },
    help: { type: "boolean" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  const [sub, ...args] = positionals;
  const log = createLogger({ command: "stream" });
  switch (sub) {
    case "inspect": {
      if (args.length !== 1) throw new UsageError(args.length === 0 ? "inspect needs a FILE" : `inspect takes one FILE, got ${args.length} arguments`);
      if (values["no-vmdesc"]) throw new UsageError("--no-vmdesc applies to reencode only");
      const summary = await inspectFile(args[0]);
      if (values.json) printJson({ file: args[0], ...summary });
      else process.stdout.write(formatSummary(summary, args[0]) + "\n");
      return;
    }
    case "reencode": {
      if (args.length !== 2) throw new UsageError(`reencode needs IN and OUT, got ${args.length} argument(s)`);
      const [input, output] = args;
      if (input === output) throw new UsageError("IN and OUT must be different files");
      const t0 = performance.now();
      const result = await reencodeFile(input, output, { vmdesc: !values["no-vmdesc"] });
      const seconds = (performance.now() - t0) / 1000;
      log.info("stream re-encoded", { input, output, ...result, seconds });
      if (values.json) printJson({ input, output, ...result, seconds });
      else {
        process.stdout.write(
          `${output}: ${result.outputBytes} bytes (from ${result.inputBytes}); ` +
            `${result.fillPages + result.normalPages} pages (${result.fillPages} zero, ${result.normalPages} normal) ` +
            `from ${result.inputPages} page records in ${result.rounds} round(s)\n`,
        );
      }
      return;
    }
    case undefined:
      throw new UsageError("name a subcommand: inspect or reencode");
    default:
      throw new UsageError(`unknown stream subcommand "${sub}"`);
  }
}
