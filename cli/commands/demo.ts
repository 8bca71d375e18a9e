/**
 * `gangway demo`: the main job. An embedded nats-server; the functions and two host agents
 * as separate processes; four test VMs booted on host A from one image; the gang migrated
 * to host B; every VM's self-check on B; and a table of what moved, against QEMU's own
 * stream in the same run.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { agentVmStart, hostInventory } from "../../schemas/index.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";
import { startEmbeddedServer } from "../../infra/nats/server.ts";
import { numberFlag, parseCommandArgs, printJson } from "../args.ts";
import { CheckFailedError } from "../errors.ts";
import { migrateGang, type GangSummary } from "../gangMigration.ts";
import { expectPositionals } from "../notYet.ts";
import { progressPrinter, summaryTable } from "../progressView.ts";

const help = `usage: gangway demo [--vms N] [--memory MiB] [--shared PCT] [--zero PCT] [--rate PAGES_PER_S] [--json]

Boots N test VMs (default 4 × 256 MiB, one image seed, dirtying) on host A and migrates
them as a gang to host B over an embedded NATS server, then checks every VM on B.
The guests' pages: --zero % zero, --shared % identical across the gang (one OS image),
the rest unique to each VM (defaults 25 / 50 / 25).`;

const GUEST = resolve("guest/build/gangway-guest.elf");
const BIN = resolve("bin/gangway.mjs");

interface Proc {
  name: string;
  child: ChildProcess;
  exited: Promise<unknown>;
}

function spawnGangway(name: string, args: string[], readyLine: RegExp): Promise<Proc> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: process.env.GANGWAY_LOG_LEVEL ?? "warn" } });
  const exited = new Promise((r) => child.once("exit", r));
  child.stderr!.on("data", (d: Buffer) => process.stderr.write(d));
  return new Promise((resolveP, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`${name} did not start within 30 s`)), 30_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (readyLine.test(out)) {
        clearTimeout(t);
        resolveP({ name, child, exited });
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`${name} exited with code ${code} before it was ready`));
    });
  });
}

async function stopProc(p: Proc): Promise<void> {
  if (p.child.exitCode !== null) return;
  p.child.kill("SIGTERM");
  const t = setTimeout(() => p.child.kill("SIGKILL"), 20_000);
  await p.exited;
  clearTimeout(t);
}

async function waitForRunning(nc: NatsConnection, host: string, vms: string[], timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    let running = new Set<string>();
    for await (const e of readEvents(nc, { filter: hostInventory.subject({ host }) })) {
      if (e.result.ok && e.result.event.mode === "structured") running = new Set((e.result.event.data as { vms: { vm: string; state: string }[] }).vms.filter((v) => v.state === "running").map((v) => v.vm));
    }
    if (vms.every((v) => running.has(v))) return;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`VMs ${vms.join(", ")} were not all running on ${host} within ${timeoutMs / 1000} s`);
}

export async function verifyOn(nc: NatsConnection, host: string, vm: string): Promise<{ vm: string; ok: boolean; line: string }> {
  const reply = await nc.request(`gwsvc.agent.${host}.console`, JSON.stringify({ vm, send: "v", expect: "VERIFY (OK|FAIL)", timeoutMs: 60_000 }), { timeout: 65_000 });
  const r = JSON.parse(new TextDecoder().decode(reply.data)) as { ok: boolean; line?: string; error?: string };
  const line = r.line ?? r.error ?? "";
  return { vm, ok: r.ok && /VERIFY OK/.test(line), line };
}

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, {
    json: { type: "boolean" }, help: { type: "boolean" }, vms: { type: "string" }, memory: { type: "string" }, shared: { type: "string" }, zero: { type: "string" }, rate: { type: "string" },
  });
  if (values.help) return void process.stdout.write(help + "\n");
  expectPositionals(positionals, 0, 0, "");
  const count = numberFlag("vms", values.vms, 4);
  const memoryMiB = numberFlag("memory", values.memory, 256);
  const shared = numberFlag("shared", values.shared, 50);
  const zero = numberFlag("zero", values.zero, 25);
  const rate = values.rate === undefined ? 1000 : Number(values.rate);
  if (!existsSync(GUEST)) throw new Error(`the test guest is not built (${GUEST}); run \`npm run setup\``);

  const work = await mkdtemp(join(tmpdir(), "gangway-demo-"));
  await using server = await startEmbeddedServer({ name: "gangway-demo", storeDir: join(work, "js") });
  const nc = await connectNats({ servers: server.url, name: "gangway-demo", reconnect: false });
  const procs: Proc[] = [];
  const say = (s: string) => process.stderr.write(`demo: ${s}\n`);
  try {
    await provision(nc);
    say(`embedded NATS at ${server.url}`);
    procs.push(await spawnGangway("functions", ["up", "--nats", server.url, "--json"], /"url"/));
    for (const host of ["hostA", "hostB"]) procs.push(await spawnGangway(`agent ${host}`, ["agent", "--host", host, "--nats", server.url, "--run-dir", join(work, host), "--json"], /"ready"/));
    say("functions and agents for hostA and hostB are up (separate processes)");

    const names = Array.from({ length: count }, (_, i) => `vm${i + 1}`);
    const pub = createPublisher(jetstream(nc), "gangway/demo");
    for (const [i, name] of names.entries()) {
      await pub.publish(agentVmStart, { host: "hostA" }, {
        host: "hostA",
        spec: { name, tenant: "demo", memoryMiB, kernel: GUEST, append: `seed=${i + 1} image=7 zero=${zero} shared=${shared} rate=${rate}`, readyPattern: "READY" },
      });
    }
    await waitForRunning(nc, "hostA", names, 120_000);
    say(`${count} VMs of ${memoryMiB} MiB booted on hostA (image seed 7: ${zero}% zero, ${shared}% shared, dirtying ${rate} pages/s)`);

    const printer = progressPrinter({ json: Boolean(values.json), tty: Boolean(process.stderr.isTTY) });
    const summary: GangSummary = await migrateGang({ nc, vms: names, sourceHost: "hostA", targetHost: "hostB", requestedBy: "gangway demo", onUpdate: (v) => printer.update(v) });
    printer.done();
    const verification = summary.outcome === "succeeded" ? await Promise.all(names.map((n) => verifyOn(nc, "hostB", n))) : [];
    const result = { ...summary, verification, verified: verification.length === count && verification.every((v) => v.ok) };
    if (values.json) printJson({ type: "summary", ...result });
    else {
      process.stdout.write(summaryTable(summary) + "\n");
      for (const v of verification) process.stdout.write(`${v.vm} on hostB: ${v.line}\n`);
    }
    if (!result.verified) throw new CheckFailedError(summary.outcome === "succeeded" ? "a VM failed its self-check on hostB" : `the gang migration failed: ${summary.reason ?? "see events"}`);
  } finally {
    for (const p of procs.reverse()) await stopProc(p);
    await nc.close();
    await server.stop();
    await rm(work, { recursive: true, force: true });
  }
}
