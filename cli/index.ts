/**
 * The `gangway` command. All subcommands are declared here; each lives in
 * cli/commands/<name>.ts and exports `run(argv)`. Only this file exits the process.
 */
import { readFileSync } from "node:fs";
import { isCheckFailed, isSetupError, isUsageError } from "./errors.ts";

interface CommandEntry {
  summary: string;
  load: () => Promise<{ run(argv: string[]): Promise<void> }>;
}

const commands: Record<string, CommandEntry> = {
  demo: { summary: "migrate a gang of 4 test VMs between two hosts on an embedded NATS server", load: () => import("./commands/demo.ts") },
  up: { summary: "run an embedded NATS server and every function in one process", load: () => import("./commands/up.ts") },
  agent: { summary: "run a host agent that owns this host's VMs", load: () => import("./commands/agent.ts") },
  vm: { summary: "start, list or stop VMs through the host agents", load: () => import("./commands/vm.ts") },
  migrate: { summary: "live-migrate VMs as a gang to another host", load: () => import("./commands/migrate.ts") },
  evacuate: { summary: "move every VM off a host", load: () => import("./commands/evacuate.ts") },
  watch: { summary: "show migrations in flight", load: () => import("./commands/watch.ts") },
  audit: { summary: "replay and re-verify a migration from the retained event stream", load: () => import("./commands/audit.ts") },
  stream: { summary: "inspect or re-encode a saved QEMU migration stream", load: () => import("./commands/stream.ts") },
  bench: { summary: "benchmark gangway against native QEMU migration", load: () => import("./commands/bench.ts") },
  auth: { summary: "write NATS identities (nkeys) and per-host permissions for a cluster", load: () => import("./commands/auth.ts") },
};

function usage(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return [
    "usage: gangway <command> [options]",
    "",
    "commands:",
    ...lines,
    "",
    "Common options: --nats URL (or host:port; default $GANGWAY_NATS_URL, else $NATS_URL; `demo` and",
    "`up` start an embedded server instead), --json (machine output on stdout), -h/--help.",
    "Run `gangway <command> --help` for a command's options; `gangway --version` for the version.",
    "Exit codes: 0 success, 1 failure, 2 set-up failure (e.g. no NATS server there), 64 bad arguments.",
  ].join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined) {
    process.stderr.write(usage() + "\n");
    return 64;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage() + "\n");
    return 0;
  }
  if (name === "--version" || name === "-V" || name === "version") {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
    process.stdout.write(`gangway ${pkg.version}\n`);
    return 0;
  }
  // -h is --help for every command (their parsers know the long form).
  const rest = args.map((a) => (a === "-h" ? "--help" : a));
  const entry = commands[name];
  if (!entry) {
    process.stderr.write(`gangway: unknown command "${name}"\n\n${usage()}\n`);
    return 64;
  }
  try {
    const mod = await entry.load();
    await mod.run(rest);
    return 0;
  } catch (err) {
    if (isUsageError(err)) {
      process.stderr.write(`gangway ${name}: ${err.message}\nRun \`gangway ${name} --help\` for usage.\n`);
      return 64;
    }
    if (isCheckFailed(err)) {
      process.stderr.write(`gangway ${name}: ${err.message}\n`);
      return 1;
    }
    if (isSetupError(err)) {
      process.stderr.write(`gangway ${name}: ${err.message}\n`);
      return 2;
    }
    const e = err as Error;
    process.stderr.write(`gangway ${name}: ${e?.message ?? String(err)}\n`);
    if (process.env.GANGWAY_DEBUG) process.stderr.write(`${e?.stack}\n`);
    return 1;
  }
}

const code = await main(process.argv.slice(2));
// Exit once stdout has drained (piped --json output), even if a library left a handle open.
process.stdout.write("", () => process.exit(code));
