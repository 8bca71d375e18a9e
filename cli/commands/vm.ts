/** `gangway vm start|list|stop`: manage VMs through the host agents. */
import { agentVmStop } from "../../schemas/index.ts";
import { parseCommandArgs, numberFlag, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";
import { hostVms, latestInventories, startVms } from "../localCluster.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";
import { cliPublisher } from "../requester.ts";

const help = `usage: gangway vm start NAME --host HOST --kernel FILE [--memory MiB] [--append ARGS] [--initrd FILE] [--tenant T] [--ready TEXT]
       gangway vm list [--host HOST] [--json]
       gangway vm stop NAME --host HOST

start waits until the host reports the VM running (and, with --ready, until its serial
console printed TEXT). list shows what each host last reported.
${natsFlagHelp}`;

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    ...natsFlagSpec, host: { type: "string" }, memory: { type: "string" }, kernel: { type: "string" }, initrd: { type: "string" }, append: { type: "string" }, tenant: { type: "string" }, ready: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  const [sub, ...rest] = positionals;
  if (sub !== "start" && sub !== "list" && sub !== "stop") throw new UsageError(sub ? `unknown vm subcommand "${sub}" (start, list, stop)` : "missing subcommand: start, list or stop");
  if (sub !== "list" && rest.length !== 1) throw new UsageError(`vm ${sub} takes one VM name`);
  if (sub === "list" && rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
  if (sub !== "list" && !values.host) throw new UsageError(`vm ${sub} needs --host HOST`);
  for (const t of [values.host, rest[0], values.tenant]) if (t !== undefined && !TOKEN.test(t)) throw new UsageError(`"${t}" must be letters, digits, _ or -`);
  if (sub === "start" && !values.kernel) throw new UsageError("vm start needs --kernel FILE");
  const memoryMiB = numberFlag("memory", values.memory, 256);

  const nc = await connectFromFlags(values, "gangway-vm");
  try {
    if (sub === "start") {
      const spec = {
        name: rest[0]!, tenant: values.tenant ?? "default", memoryMiB: Math.round(memoryMiB), kernel: values.kernel!,
        ...(values.append ? { append: values.append } : {}), ...(values.initrd ? { initrd: values.initrd } : {}), ...(values.ready ? { readyPattern: values.ready } : {}),
      };
      await startVms(nc, values.host!, [spec]);
      if (values.json) printJson({ host: values.host, vm: spec.name, state: "running" });
      else process.stdout.write(`${spec.name} is running on ${values.host}\n`);
    } else if (sub === "stop") {
      await cliPublisher(nc).publish(agentVmStop, { host: values.host! }, { host: values.host!, vm: rest[0]! });
      const end = Date.now() + 30_000;
      while ((await hostVms(nc, values.host!)).has(rest[0]!)) {
        if (Date.now() > end) throw new Error(`${rest[0]} still reported on ${values.host} after 30 s`);
        await new Promise((r) => setTimeout(r, 300));
      }
      if (values.json) printJson({ host: values.host, vm: rest[0], state: "stopped" });
      else process.stdout.write(`${rest[0]} stopped on ${values.host}\n`);
    } else {
      // The newest inventory of every host (or of one).
      const latest = await latestInventories(nc, values.host);
      const rows = [...latest].flatMap(([host, vms]) => vms.map((v) => ({ host, vm: v.vm, tenant: v.tenant, memoryMiB: v.memoryBytes / 1048576, state: v.state })));
      if (values.json) printJson({ vms: rows });
      else {
        process.stdout.write(`${"host".padEnd(12)} ${"vm".padEnd(16)} ${"tenant".padEnd(12)} ${"MiB".padStart(6)}  state\n`);
        for (const r of rows) process.stdout.write(`${r.host.padEnd(12)} ${r.vm.padEnd(16)} ${r.tenant.padEnd(12)} ${String(r.memoryMiB).padStart(6)}  ${r.state}\n`);
      }
    }
  } finally {
    await nc.close();
  }
}
