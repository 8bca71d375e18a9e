/**
 * `gangway demo`: the main job. An embedded nats-server; the functions and two host agents
 * as separate processes; four test VMs booted on host A from one image; the gang migrated
 * to host B; every VM's self-check on B; and a table of what moved, against QEMU's own
 * stream in the same run.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GUEST_KERNEL, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, waitForScans, type GangwayProcess } from "../localCluster.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";
import { startEmbeddedServer } from "../../infra/nats/server.ts";
import { numberFlag, parseCommandArgs, printJson } from "../args.ts";
import { CheckFailedError } from "../errors.ts";
import { migrateGang, type GangSummary } from "../gangMigration.ts";
import { expectPositionals } from "../positionals.ts";
import { progressPrinter, summaryTable } from "../progressView.ts";

const help = `usage: gangway demo [--vms N] [--memory MiB] [--shared PCT] [--zero PCT] [--rate PAGES_PER_S] [--no-prepare] [--nats URL] [--json]

Boots N test VMs (default 4 × 256 MiB, one image seed, dirtying) on host A and migrates
them as a gang to host B over an embedded NATS server, then checks every VM on B.
The guests' pages: --zero % zero, --shared % identical across the gang (one OS image),
the rest unique to each VM (defaults 25 / 50 / 25). Before migrating, the preparation phase
scans each VM and preseeds its pages (--no-prepare skips it); both phases' bytes are shown.
With --nats URL (e.g. a \`gangway up\` server) the events stay there for \`gangway audit\`.`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    json: { type: "boolean" }, help: { type: "boolean" }, "no-prepare": { type: "boolean" }, nats: { type: "string" }, vms: { type: "string" }, memory: { type: "string" }, shared: { type: "string" }, zero: { type: "string" }, rate: { type: "string" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  const count = numberFlag("vms", values.vms, 4);
  const memoryMiB = numberFlag("memory", values.memory, 256);
  const shared = numberFlag("shared", values.shared, 50);
  const zero = numberFlag("zero", values.zero, 25);
  const rate = values.rate === undefined ? 1000 : Number(values.rate);
  if (!existsSync(GUEST_KERNEL)) throw new Error(`the test guest is not built (${GUEST_KERNEL}); run \`npm run setup\``);

  const work = await mkdtemp(join(tmpdir(), "gangway-demo-"));
  // With --nats the demo runs on the operator's server, and its events stay there for
  // `gangway audit` and `gangway watch`; otherwise on an embedded one that goes with it.
  const server = values.nats ? undefined : await startEmbeddedServer({ name: "gangway-demo", storeDir: join(work, "js") });
  const url = values.nats ?? server!.url;
  const nc = await connectNats({ servers: url, name: "gangway-demo", reconnect: false });
  const procs: GangwayProcess[] = [];
  const say = (s: string) => process.stderr.write(`demo: ${s}\n`);
  try {
    await provision(nc);
    say(server ? `embedded NATS at ${url}` : `NATS at ${url}`);
    procs.push(await startFunctions(url));
    for (const host of ["hostA", "hostB"]) procs.push(await startAgentProcess(url, host, work));
    say("functions and agents for hostA and hostB are up (separate processes)");

    const names = Array.from({ length: count }, (_, i) => `vm${i + 1}`);
    await startVms(nc, "hostA", names.map((name, i) => testGuestSpec(name, { memoryMiB, seed: i + 1, image: 7, zero, shared, rate })));
    say(`${count} VMs of ${memoryMiB} MiB booted on hostA (image seed 7: ${zero}% zero, ${shared}% shared, dirtying ${rate} pages/s)`);

    // The preparation phase: the scan function has each VM scanned and its pages preseeded.
    const prep = values["no-prepare"] ? { bytesSent: 0, pagesPreseeded: 0 } : await waitForScans(nc, "hostA", names);
    if (!values["no-prepare"]) say(`preparation phase: scans preseeded ${prep.pagesPreseeded.toLocaleString()} pages (${(prep.bytesSent / 1e6).toFixed(1)} MB) before the migration`);
    const printer = progressPrinter({ json: Boolean(values.json), tty: Boolean(process.stderr.isTTY) });
    const summary: GangSummary = await migrateGang({ nc, vms: names, sourceHost: "hostA", targetHost: "hostB", requestedBy: "gangway demo", onUpdate: (v) => printer.update(v) });
    printer.done();
    const verification = summary.outcome === "succeeded" ? await Promise.all(names.map((n) => verifyGuest(nc, "hostB", n))) : [];
    const result = { ...summary, preparation: { bytes_on_link: prep.bytesSent, pages_preseeded: prep.pagesPreseeded }, verification, verified: verification.length === count && verification.every((v) => v.ok) };
    if (values.json) printJson({ type: "summary", ...result });
    else {
      process.stdout.write(summaryTable(summary) + "\n");
      if (!values["no-prepare"]) process.stdout.write(`      plus ${(prep.bytesSent / 1e6).toFixed(1)} MB moved in the preparation phase (${prep.pagesPreseeded.toLocaleString()} pages preseeded); in all ${((prep.bytesSent + summary.bytes_on_link) / 1e6).toFixed(1)} MB = ${(((prep.bytesSent + summary.bytes_on_link) / summary.native_bytes) * 100).toFixed(1)}% of native\n`);
      for (const v of verification) process.stdout.write(`${v.vm} on hostB: ${v.line}\n`);
    }
    if (!result.verified) throw new CheckFailedError(summary.outcome === "succeeded" ? "a VM failed its self-check on hostB" : `the gang migration failed: ${summary.reason ?? "see events"}`);
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await nc.close();
    await server?.stop();
    await rm(work, { recursive: true, force: true });
  }
}
