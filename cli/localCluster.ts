/**
 * A gangway cluster on this machine: the functions and host agents as separate processes
 * against one NATS server. Used by the demo and by end-to-end tests.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { resolve, join } from "node:path";
import { readdir, readFile, rm } from "node:fs/promises";
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import { agentConsole, agentVmStart, hostInventory, scanCompleted, type VmSpec } from "../schemas/index.ts";
import { readEvents } from "../infra/events/reader.ts";
import { ask } from "../infra/nats/service.ts";
import { cliPublisher } from "./requester.ts";

const BIN = resolve(import.meta.dirname, "../bin/gangway.mjs");

export interface GangwayProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<unknown>;
  /** SIGTERM, then SIGKILL after a grace period; resolves when gone. */
  stop(): Promise<void>;
  /** SIGKILL now (fault tests). */
  kill(): Promise<void>;
}

export function spawnGangway(name: string, args: string[], readyLine: RegExp, env: Record<string, string> = {}): Promise<GangwayProcess> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: process.env.GANGWAY_LOG_LEVEL ?? "warn", ...env } });
  const exited = new Promise((r) => child.once("exit", r));
  child.stderr!.on("data", (d: Buffer) => process.stderr.write(d));
  const proc: GangwayProcess = {
    name,
    child,
    exited,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
  return new Promise((resolveP, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`${name} did not start within 30 s`)), 30_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (readyLine.test(out)) {
        clearTimeout(t);
        resolveP(proc);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`${name} exited with code ${code} before it was ready`));
    });
  });
}

export const startFunctions = (natsUrl: string) => spawnGangway("functions", ["up", "--nats", natsUrl, "--json"], /"url"/);
/**
 * A host agent as a process. Its VMs outlive it when it is killed (as in production); on
 * stop() (SIGTERM) it quits them, so a test or the demo leaves no QEMU behind, unless
 * `keepVmsOnExit`.
 */
export async function startAgentProcess(natsUrl: string, host: string, runDir: string, o: { keepVmsOnExit?: boolean; env?: Record<string, string> } = {}): Promise<GangwayProcess> {
  const dir = join(runDir, host);
  const p = await spawnGangway(`agent ${host}`, ["agent", "--host", host, "--nats", natsUrl, "--run-dir", dir, "--json", ...(o.keepVmsOnExit ? [] : ["--stop-vms-on-exit"])], /"ready"/, o.env);
  if (o.keepVmsOnExit) return p;
  return {
    ...p,
    // A VM whose agent was killed (a fault test) outlives it by design; when this cluster
    // stops, nothing of it may stay behind.
    async stop() {
      await p.stop();
      await reapVms(dir);
    },
  };
}

/** SIGKILLs every QEMU whose command line names `dir`, and removes its guest-RAM file. */
export async function reapVms(dir: string): Promise<number> {
  let reaped = 0;
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = (await readFile(`/proc/${pid}/cmdline`, "latin1").catch(() => "")).split("\0");
    if (!argv[0]?.includes("qemu-system") || !argv.some((a) => a.includes(`${dir}/`))) continue;
    try {
      process.kill(Number(pid), "SIGKILL");
      reaped++;
    } catch {
      continue; // gone meanwhile
    }
    const ram = /mem-path=([^,]+)/.exec(argv.join(" "))?.[1];
    if (ram) await rm(ram, { force: true });
  }
  return reaped;
}

export type InventoryVm = z.infer<typeof hostInventory.data>["vms"][number];

/** Each host's latest inventory (of one host, when named), from the retained events. */
export async function latestInventories(nc: NatsConnection, host?: string): Promise<Map<string, InventoryVm[]>> {
  const latest = new Map<string, InventoryVm[]>();
  // The last report of each host only: reading every report ever made is seconds on a stream of GBs.
  for await (const e of readEvents(nc, { filter: host ? hostInventory.subject({ host }) : hostInventory.filter, lastPerSubject: true })) {
    if (e.result.ok && e.result.event.mode === "structured") {
      const d = e.result.event.data as z.infer<typeof hostInventory.data>;
      latest.set(d.host, d.vms);
    }
  }
  return latest;
}

/** The VMs a host last reported, with their states. */
export async function hostVms(nc: NatsConnection, host: string): Promise<Map<string, string>> {
  return new Map(((await latestInventories(nc, host)).get(host) ?? []).map((v) => [v.vm, v.state]));
}

/** Asks a host's agent to start VMs and waits until its inventory shows them running. */
export async function startVms(nc: NatsConnection, host: string, specs: VmSpec[], timeoutMs = 120_000): Promise<void> {
  const pub = cliPublisher(nc);
  for (const spec of specs) await pub.publish(agentVmStart, { host }, { host, spec });
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const vms = await hostVms(nc, host);
    if (specs.every((s) => vms.get(s.name) === "running")) return;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`VMs ${specs.map((s) => s.name).join(", ")} were not all running on ${host} within ${timeoutMs / 1000} s`);
}

/** Runs the test guest's self-check on a VM through its host's agent. */
export async function verifyGuest(nc: NatsConnection, host: string, vm: string): Promise<{ vm: string; ok: boolean; line: string }> {
  const r = await ask(nc, agentConsole, { host }, { vm, send: "v", expect: "VERIFY (OK pages=\\d+|FAIL \\d+ first=\\d+)", timeoutMs: 60_000 }, { timeoutMs: 65_000 });
  const line = r.ok ? r.line : r.error;
  return { vm, ok: r.ok && /VERIFY OK/.test(line), line };
}

export const GUEST_KERNEL = resolve(import.meta.dirname, "../guest/build/gangway-guest.elf");

/** A test-guest VM spec. */
export function testGuestSpec(name: string, o: { tenant?: string; memoryMiB?: number; seed: number; image?: number; zero?: number; shared?: number; rate?: number }): VmSpec {
  return {
    name,
    tenant: o.tenant ?? "demo",
    memoryMiB: o.memoryMiB ?? 256,
    kernel: GUEST_KERNEL,
    append: `seed=${o.seed} image=${o.image ?? 7} zero=${o.zero ?? 25} shared=${o.shared ?? 50} rate=${o.rate ?? 1000}`,
    readyPattern: "READY",
  };
}

/**
 * Waits until every VM had a preparation-phase scan (the scan function asks for one when a
 * host reports a VM it has not scanned), and returns the bytes those scans put on the link.
 */
export async function waitForScans(nc: NatsConnection, host: string, vms: string[], timeoutMs = 120_000): Promise<{ bytesSent: number; pagesPreseeded: number }> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const done = new Map<string, { bytesSent: number; pagesPreseeded: number }>();
    for (const vm of vms) {
      for await (const e of readEvents(nc, { filter: scanCompleted.subject({ host, vm }) })) {
        if (e.result.ok && e.result.event.mode === "structured") {
          const d = e.result.event.data as { bytesSent: number; pagesPreseeded: number };
          const prev = done.get(vm) ?? { bytesSent: 0, pagesPreseeded: 0 };
          done.set(vm, { bytesSent: prev.bytesSent + d.bytesSent, pagesPreseeded: prev.pagesPreseeded + d.pagesPreseeded });
        }
      }
    }
    if (vms.every((v) => done.has(v))) return [...done.values()].reduce((a, b) => ({ bytesSent: a.bytesSent + b.bytesSent, pagesPreseeded: a.pagesPreseeded + b.pagesPreseeded }));
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`no preparation scan of ${vms.join(", ")} on ${host} within ${timeoutMs / 1000} s`);
}

/** The host whose latest inventory holds every one of these VMs, if one does. */
export async function hostOf(nc: NatsConnection, vms: string[]): Promise<string | undefined> {
  for (const [host, have] of await latestInventories(nc)) if (vms.every((v) => have.some((h) => h.vm === v))) return host;
  return undefined;
}
