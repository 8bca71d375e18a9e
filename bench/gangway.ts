/**
 * gangway migrations of a workload's gang over the same kind of shaped link as the native
 * runs. One fresh cluster per run: an embedded nats-server (the destination rack's),
 * the functions process and host agent hostB connected to it directly, and host agent
 * hostA (the source rack) connected through the link — everything hostA sends or receives
 * crosses it and is counted there.
 *
 * Two phases are reported apart and together: the preparation phase (scans that preseed
 * pages before any migration is asked for) and the migration itself. The fair byte
 * comparison with native is their sum; the time comparison is the migration phase (the
 * preparation runs while the VMs run normally, before anyone asks to migrate).
 */
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { spawnGangway, startVms, verifyGuest, waitForScans, type GangwayProcess } from "../cli/localCluster.ts";
import { migrateGang, newMigrationId, type GangSummary } from "../cli/gangMigration.ts";
import { connectNats } from "../infra/nats/connect.ts";
import { provision } from "../infra/nats/provision.ts";
import { startEmbeddedServer } from "../infra/nats/server.ts";
import { createPublisher } from "../infra/events/publisher.ts";
import { readEvents } from "../infra/events/reader.ts";
import { ask } from "../infra/nats/service.ts";
import { agentConsole, migrationCancel, type VmSpec } from "../schemas/index.ts";
import { sampleProcess, type ProcSample } from "./procstat.ts";
import { createLink, diffCounters } from "./shaper.ts";
import type { Workload } from "./workloads.ts";

export interface ProcessFigures {
  name: string;
  /** CPU seconds over the whole run (start-up, preparation, migration). */
  cpu_seconds: number;
  /** CPU seconds during the migration phase only. */
  cpu_seconds_migration: number;
  /** Peak resident set (VmHWM), bytes. */
  peak_rss_bytes: number;
}

export interface GangwayResult {
  completed: boolean;
  reason?: string;
  /** The migration phase, request → last VM resumed (gangway's own time_elapsed), ms. */
  time_ms: number;
  /** Preparation phase: VMs up → every VM scanned and preseeded, ms. */
  prep_time_ms: number;
  /** Link bytes (both directions) in the migration phase. */
  bytes_on_link: number;
  /** Link bytes (both directions) in the preparation phase. */
  prep_bytes_on_link: number;
  /** Their sum: what the fair byte comparison with native uses. */
  total_bytes_on_link: number;
  bytes_up: number;
  bytes_down: number;
  /** gangway's own counts, for cross-checking the link's. */
  reported: { migration_bytes_on_link: number; prep_bytes_sent: number; native_bytes: number; dedup_ratio: number; compression_ratio: number; pages_deduplicated: number };
  vms: { vm: string; outcome: string; downtime_ms?: number; verified: boolean; check: string }[];
  /**
   * Where the migration's time went, from its retained events: per VM (and "gang" for events
   * without a VM), each event type's first and last time in ms after the request.
   */
  timeline: Record<string, Record<string, [number, number]>>;
  processes: ProcessFigures[];
  /** Sum over gangway's processes (functions, two agents, nats-server). */
  cpu_seconds: number;
  cpu_seconds_migration: number;
  peak_rss_bytes: number;
}

export interface GangwayRunOptions {
  workload: Workload;
  bytesPerSecond: number;
  /** A fresh directory for the store and run dirs (short: unix socket paths). */
  workDir: string;
  log?: (s: string) => void;
  /** Run gangway's processes under `node --cpu-prof` writing profiles here (see bench/profile.ts). */
  cpuProfileDir?: string;
}

const BIN = resolve(import.meta.dirname, "../bin/gangway.mjs");

/**
 * Like localCluster's spawnGangway, but under `node --cpu-prof` (NODE_OPTIONS may not carry
 * it). Each thread writes its own profile (tsx's loader runs on a worker thread) into
 * DIR/<name>/ when the process exits after SIGTERM.
 */
function spawnProfiled(dir: string, name: string, args: string[], readyLine: RegExp): Promise<GangwayProcess> {
  const child = spawn(process.execPath, ["--cpu-prof", `--cpu-prof-dir=${join(dir, name.replace(/\W+/g, "-"))}`, BIN, ...args], {
    stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: process.env.GANGWAY_LOG_LEVEL ?? "warn" },
  });
  const exited = new Promise((r) => child.once("exit", r));
  child.stderr!.on("data", (d: Buffer) => process.stderr.write(d));
  const proc: GangwayProcess = {
    name, child, exited,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
  return new Promise((res, rej) => {
    let out = "";
    const t = setTimeout(() => rej(new Error(`${name} did not start within 30 s`)), 30_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (readyLine.test(out)) {
        clearTimeout(t);
        res(proc);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      rej(new Error(`${name} exited with code ${code} before it was ready`));
    });
  });
}

const toSpec = (w: Workload): VmSpec[] =>
  w.vms.map((v) => ({ name: v.name, tenant: "bench", memoryMiB: v.memoryMiB, kernel: v.kernel, append: v.append, ...(v.initrd ? { initrd: v.initrd } : {}), readyPattern: v.readyPattern }));

async function verify(nc: NatsConnection, w: Workload, host: string, vm: string): Promise<{ ok: boolean; line: string }> {
  if (w.verify === "test-guest") return verifyGuest(nc, host, vm);
  const n = Math.floor(Math.random() * 1e9);
  const r = await ask(nc, agentConsole, { host }, { vm, send: `echo alive-${n}\n`, expect: `^alive-${n}$`, timeoutMs: 30_000 }, { timeoutMs: 35_000 });
  return r.ok ? { ok: r.line === `alive-${n}`, line: r.line } : { ok: false, line: r.error };
}

export async function runGangway(o: GangwayRunOptions): Promise<GangwayResult> {
  const w = o.workload;
  const log = o.log ?? (() => undefined);
  await using server = await startEmbeddedServer({ name: "gangway-bench", storeDir: join(o.workDir, "js") });
  const nc = await connectNats({ servers: server.url, name: "gangway-bench", reconnect: false });
  const link = createLink({ bytesPerSecond: o.bytesPerSecond });
  const procs: GangwayProcess[] = [];
  // Host names of our own: an agent clears /dev/shm/gangway-<host>-* at start, and other
  // gangway clusters (tests, demos) on this machine use hostA/hostB.
  const tag = `${process.pid.toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
  const hostA = `benchA${tag}`;
  const hostB = `benchB${tag}`;
  try {
    await provision(nc);
    const relay = await link.relay("127.0.0.1", server.port);
    const start = (name: string, args: string[], ready: RegExp) => (o.cpuProfileDir ? spawnProfiled(o.cpuProfileDir, name, args, ready) : spawnGangway(name, args, ready));
    const agentArgs = (host: string, url: string) => ["agent", "--host", host, "--nats", url, "--run-dir", join(o.workDir, host), "--json", "--stop-vms-on-exit"];
    procs.push(await start("functions", ["up", "--nats", server.url, "--json"], /"url"/));
    procs.push(await start("agent-source", agentArgs(hostA, `nats://127.0.0.1:${relay.port}`), /"ready"/));
    procs.push(await start("agent-destination", agentArgs(hostB, server.url), /"ready"/));
    const pids = [
      { name: "nats-server", pid: server.pid },
      { name: "functions", pid: procs[0]!.child.pid! },
      { name: "agent hostA", pid: procs[1]!.child.pid! },
      { name: "agent hostB", pid: procs[2]!.child.pid! },
    ];
    const names = w.vms.map((v) => v.name);

    // Preparation: the VMs boot on hostA; the scan function has each scanned and preseeded.
    const c0 = link.counters();
    await startVms(nc, hostA, toSpec(w), 180_000);
    const tPrep = performance.now();
    log(`gangway: ${names.length} VM(s) running on hostA (source side of the link)`);
    const prep = await waitForScans(nc, hostA, names, 300_000);
    const prepTime = performance.now() - tPrep;
    const c1 = link.counters();
    log(`gangway: preparation done in ${(prepTime / 1000).toFixed(1)} s, ${(prep.bytesSent / 1e6).toFixed(1)} MB preseeded`);

    // Migration.
    const cpu0 = new Map(pids.map((p) => [p.name, sampleProcess(p.pid)]));
    const migrationId = newMigrationId();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), w.timeLimitMs)));
    const run = migrateGang({ nc, vms: names, sourceHost: hostA, targetHost: hostB, requestedBy: "gangway bench", migrationId, ...(w.gangwayOptions ? { options: w.gangwayOptions } : {}) });
    const first = await Promise.race([run, timedOut]);
    clearTimeout(timer);
    let summary: GangSummary | undefined;
    let reason: string | undefined;
    if (first === "timeout") {
      reason = `did not finish within ${w.timeLimitMs / 1000} s`;
      log(`gangway: ${reason}; cancelling`);
      await createPublisher(jetstream(nc), "gangway/bench").publish(migrationCancel, { migrationId }, { migrationId, reason: "benchmark time limit", requestedBy: "gangway bench" });
      summary = await Promise.race([run, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000))]).catch(() => undefined);
    } else summary = first;
    const cpu1 = new Map(pids.map((p) => [p.name, sampleProcess(p.pid)]));
    await new Promise((r) => setTimeout(r, 300));
    const c2 = link.counters();
    const prepBytes = diffCounters(c0, c1);
    const migBytes = diffCounters(c1, c2);

    const ok = summary?.outcome === "succeeded" && first !== "timeout";
    if (!ok && !reason) reason = summary?.reason ?? "failed";
    const vms: GangwayResult["vms"] = [];
    for (const v of summary?.vms ?? []) {
      let check = "";
      let verified = false;
      if (ok && v.outcome === "committed") {
        try {
          const r = await verify(nc, w, hostB, v.vm);
          verified = r.ok;
          check = r.line;
        } catch (err) {
          check = (err as Error).message;
        }
      }
      vms.push({ vm: v.vm, outcome: v.outcome, ...(v.downtime_ms !== undefined ? { downtime_ms: v.downtime_ms } : {}), verified, check });
    }

    const timeline = await migrationTimeline(nc, migrationId).catch(() => ({}));

    const processes: ProcessFigures[] = pids.map((p) => {
      const end = sampleProcess(p.pid) ?? cpu1.get(p.name);
      const s0 = cpu0.get(p.name);
      const s1 = cpu1.get(p.name);
      return {
        name: p.name,
        cpu_seconds: round2(end?.cpuSeconds ?? 0),
        cpu_seconds_migration: round2((s1?.cpuSeconds ?? 0) - (s0?.cpuSeconds ?? 0)),
        peak_rss_bytes: end?.peakRssBytes ?? 0,
      };
    });
    const sum = (f: (p: ProcessFigures) => number) => processes.reduce((n, p) => n + f(p), 0);
    return {
      completed: ok,
      ...(ok ? {} : { reason }),
      time_ms: summary?.time_elapsed_ms ?? w.timeLimitMs,
      prep_time_ms: Math.round(prepTime),
      bytes_on_link: migBytes.up + migBytes.down,
      prep_bytes_on_link: prepBytes.up + prepBytes.down,
      total_bytes_on_link: migBytes.up + migBytes.down + prepBytes.up + prepBytes.down,
      bytes_up: migBytes.up + prepBytes.up,
      bytes_down: migBytes.down + prepBytes.down,
      reported: {
        migration_bytes_on_link: summary?.bytes_on_link ?? 0,
        prep_bytes_sent: prep.bytesSent,
        native_bytes: summary?.native_bytes ?? 0,
        dedup_ratio: summary?.dedup_ratio ?? 0,
        compression_ratio: summary?.compression_ratio ?? 0,
        pages_deduplicated: summary?.pages_deduplicated ?? 0,
      },
      vms,
      timeline,
      processes,
      cpu_seconds: round2(sum((p) => p.cpu_seconds)),
      cpu_seconds_migration: round2(sum((p) => p.cpu_seconds_migration)),
      peak_rss_bytes: sum((p) => p.peak_rss_bytes),
    };
  } finally {
    for (const p of procs.reverse()) await p.stop().catch(() => undefined);
    await link.close();
    await nc.close().catch(() => undefined);
  }
}

/** Every event of one migration (by its migrationId), first and last time of each type per VM. */
async function migrationTimeline(nc: NatsConnection, migrationId: string): Promise<GangwayResult["timeline"]> {
  const out: GangwayResult["timeline"] = {};
  let t0: number | undefined;
  for await (const e of readEvents(nc, { since: new Date(Date.now() - 3_600_000) })) {
    if (!e.result.ok) continue;
    const ev = e.result.event;
    const data = (ev.mode === "structured" ? ev.data : undefined) as { migrationId?: string; vm?: string } | undefined;
    if (data?.migrationId !== migrationId && !e.subject.includes(migrationId)) continue;
    const at = Date.parse(ev.time);
    if (ev.type === "io.gangway.migration.requested.v1") t0 = at;
    t0 ??= at;
    const key = ev.type.replace(/^io\.gangway\./, "").replace(/\.v\d+$/, "");
    const vm = data?.vm ?? "gang";
    const row = (out[vm] ??= {});
    const ms = at - t0;
    const prev = row[key];
    row[key] = prev ? [Math.min(prev[0], ms), Math.max(prev[1], ms)] : [ms, ms];
  }
  return out;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

export type { ProcSample };
