/**
 * The fault suite's harness: a gangway cluster of separate processes (functions, host
 * agents) on a real nats-server, a live view of one migration's events to inject a fault
 * at a phase, the checks every case ends with (one copy of each VM running, the other side
 * gone or never resumed, a bounded reason, nothing leaked), and the figures each case adds
 * to the report named by FAULTS_REPORT.
 */
import { expect } from "vitest";
import { mkdir, mkdtemp, readFile, readdir, rename, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { startTestNats, eventually, sleep, type TestNats } from "../helpers/nats.ts";
import { compareRamDumps } from "../helpers/ramDumps.ts";
import { hostVms, spawnGangway, startAgentProcess, startFunctions, startVms, testGuestSpec, verifyGuest, type GangwayProcess } from "../../cli/localCluster.ts";
import { type GangSummary } from "../../cli/gangMigration.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";

export { eventually, sleep };

/** Small guests keep each case to seconds: 64 MiB, a unique share that dirties slowly. */
export const guest = (name: string, seed: number, o: { rate?: number; tenant?: string } = {}) =>
  testGuestSpec(name, { memoryMiB: 64, seed, rate: o.rate ?? 200, ...(o.tenant ? { tenant: o.tenant } : {}) });

// ---- the cluster ---------------------------------------------------------------------

export interface Cluster {
  nats: TestNats;
  work: string;
  /** Where the agents keep the RAM they prove (GANGWAY_RAM_DUMP_DIR): both ends of each VM, compared byte for byte. */
  dumps: string;
  agents: Map<string, GangwayProcess>;
  functions: GangwayProcess[];
  startAgent(host: string): Promise<GangwayProcess>;
  startFunctions(): Promise<GangwayProcess>;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  hosts?: string[];
  functions?: number;
  /** The NATS the cluster runs on (a restartable server, a three-node cluster); a fresh server when unset. */
  nats?: TestNats;
  /** Extra arguments for `gangway up` (say `--replicas 3`). */
  upArgs?: string[];
  /** The URL(s) a host's agent connects with (a relay that can be cut, say); the cluster's by default. */
  agentUrl?: (host: string) => string;
}

export async function startCluster(o: ClusterOptions = {}): Promise<Cluster> {
  const nats = o.nats ?? (await startTestNats());
  const work = await mkdtemp(join(tmpdir(), "gw-faults-"));
  const c: Cluster = {
    nats,
    work,
    dumps: join(work, "ram-dumps"),
    agents: new Map(),
    functions: [],
    async startAgent(host) {
      const a = await startAgentProcess(o.agentUrl?.(host) ?? nats.url, host, work, { env: { GANGWAY_RAM_DUMP_DIR: c.dumps } });
      c.agents.set(host, a);
      return a;
    },
    async startFunctions() {
      const f = o.upArgs?.length ? await spawnGangway("functions", ["up", "--nats", nats.url, "--json", ...o.upArgs], /"url"/) : await startFunctions(nats.url);
      c.functions.push(f);
      return f;
    },
    async stop() {
      for (const a of c.agents.values()) await a.stop().catch(() => undefined);
      for (const f of c.functions) await f.stop().catch(() => undefined);
      await nats[Symbol.asyncDispose]();
      await rm(work, { recursive: true, force: true });
    },
  };
  for (let i = 0; i < (o.functions ?? 1); i++) await c.startFunctions();
  for (const h of o.hosts ?? ["hostA", "hostB"]) await c.startAgent(h);
  return c;
}

export { startVms, verifyGuest, hostVms };

// ---- watching one migration ------------------------------------------------------------

export interface SeenEvent {
  type: string;
  subject: string;
  data: Record<string, unknown>;
  at: number;
}

/**
 * Every event of one migration as it is stored (structured ones: facts and commands on
 * gw.migration.<id>.>, gw.commit.<id>.>, gw.cmd.>, gw.manifest.<id>.>), so a test can act
 * the moment a phase begins.
 */
export class MigrationWatch {
  readonly events: SeenEvent[] = [];
  private waiters: { match: (e: SeenEvent) => boolean; resolve: (e: SeenEvent) => void }[] = [];
  private messages?: StreamFollower;

  static async start(c: Cluster, migrationId: string): Promise<MigrationWatch> {
    const w = new MigrationWatch();
    // One ordered consumer over everything (2.9 takes one filter subject), replaced if lost.
    w.messages = await StreamFollower.start(c.nats.nc, { filter: "gw.>", from: "new" });
    void (async () => {
      for await (const m of w.messages!) {
        if (!m.subject.includes(migrationId)) {
          if (!m.subject.startsWith("gw.cmd.agent.")) continue;
        }
        const d = decodeMessage(m.subject, m.data, m.headers);
        if (!d.ok) continue;
        const data = (d.event.mode === "structured" ? d.event.data : d.event.ext) as Record<string, unknown>;
        if (m.subject.startsWith("gw.cmd.agent.") && data.migrationId !== migrationId) continue;
        const e: SeenEvent = { type: d.event.type, subject: m.subject, data, at: Date.now() };
        w.events.push(e);
        for (const x of [...w.waiters]) if (x.match(e)) {
          w.waiters.splice(w.waiters.indexOf(x), 1);
          x.resolve(e);
        }
      }
    })().catch(() => undefined);
    return w;
  }

  /** The first event whose type contains `kind` (and passes `pred`), past or future. */
  waitFor(kind: string, pred: (e: SeenEvent) => boolean = () => true, timeoutMs = 90_000): Promise<SeenEvent> {
    const match = (e: SeenEvent) => e.type.includes(kind) && pred(e);
    const hit = this.events.find(match);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${kind} event within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ match, resolve: (e) => (clearTimeout(t), resolve(e)) });
    });
  }

  has(kind: string, pred: (e: SeenEvent) => boolean = () => true): boolean {
    return this.events.some((e) => e.type.includes(kind) && pred(e));
  }

  stop(): void {
    void this.messages?.close();
  }
}

// ---- processes and files of this test ------------------------------------------------

/** This test's QEMUs: pid, host and VM name (their run directories are in its work dir). */
export interface TestQemu {
  pid: number;
  host: string;
  vm: string;
  role: "src" | "dst";
  dir: string;
  ramPath: string;
}

export async function qemus(c: Cluster): Promise<TestQemu[]> {
  const out: TestQemu[] = [];
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
    if (!argv.some((a) => a.includes("qemu-system"))) continue;
    const qmp = argv.find((a) => a.startsWith(`unix:${c.work}/`));
    if (!qmp) continue;
    const dir = dirname(qmp.slice("unix:".length).split(",")[0]!);
    const rel = dir.slice(c.work.length + 1).split("/");
    const name = argv[argv.indexOf("-name") + 1] ?? "?";
    const ramPath = /mem-path=([^,]+)/.exec(argv.join(" "))?.[1] ?? "";
    out.push({ pid: Number(pid), host: rel[0] ?? "?", vm: name, role: /-dst-/.test(rel[1] ?? "") ? "dst" : "src", dir, ramPath });
  }
  return out;
}

/** The destination QEMU of a VM in a migration (its pid), once it exists. */
export const destinationQemu = (c: Cluster, host: string, vm: string) =>
  eventually(async () => (await qemus(c)).find((q) => q.host === host && q.vm === vm && q.role === "dst"), 30_000, `destination QEMU of ${vm}`);

/** Ephemeral consumers of the events stream whose filter names this migration. */
export async function consumersOf(c: Cluster, migrationId: string): Promise<string[]> {
  const jsm = await jetstreamManager(c.nats.nc);
  const names: string[] = [];
  for await (const ci of jsm.consumers.list(EVENTS_STREAM)) {
    const filters = [ci.config.filter_subject ?? "", ...(ci.config.filter_subjects ?? [])].join(" ");
    if (filters.includes(migrationId)) names.push(`${ci.name} (${filters})`);
  }
  return names;
}

export async function ephemeralConsumers(c: Cluster): Promise<number> {
  const jsm = await jetstreamManager(c.nats.nc);
  let n = 0;
  for await (const ci of jsm.consumers.list(EVENTS_STREAM)) if (!ci.config.durable_name) n++;
  return n;
}

/**
 * Until function `fnId` (its durable consumer) has handled every event on `subject` stored so
 * far: the moment a command that should change nothing has been read and acted on.
 */
export async function handledBy(c: Cluster, fnId: string, subject: string, timeoutMs = 30_000): Promise<void> {
  const jsm = await jetstreamManager(c.nats.nc);
  const m = await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: subject }).catch(() => null);
  if (!m) throw new Error(`nothing stored on ${subject}`);
  const last = m.seq;
  await eventually(async () => {
    const ci = await jsm.consumers.info(EVENTS_STREAM, `fn-${fnId}`).catch(() => undefined);
    return (ci && ci.ack_floor.stream_seq >= last && ci.num_ack_pending === 0) || undefined;
  }, timeoutMs, `function ${fnId} handled ${subject} (seq ${last})`);
}

// ---- the end of every case ------------------------------------------------------------

/** Retries a read that fails while NATS recovers from a fault (a cluster electing leaders). */
export async function retrying<T>(read: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await read();
    } catch (err) {
      if (Date.now() > end) throw err;
      await sleep(1000);
    }
  }
}

export interface Outcome {
  /** VMs running on no host. */
  lost: number;
  /** VMs running (or with a QEMU) on more than one host. */
  twice: number;
  /** What was left behind: QEMUs, RAM files, consumers. */
  leaks: string[];
}

/**
 * Where each VM runs now, by inventory and by QEMU process: exactly one copy each, on
 * `expectHost`; no other QEMU of it in this test; its memory verifies there.
 */
export async function checkPlacement(c: Cluster, vms: string[], expectHost: string, otherHost: string, o: { timeoutMs?: number } = {}): Promise<Outcome> {
  const out: Outcome = { lost: 0, twice: 0, leaks: [] };
  // Settled: the expected host reports each VM running and no other QEMU of it is alive.
  // (A read that fails — NATS still recovering from a fault — is one more poll, not the end.)
  await eventually(async () => {
    try {
      const here = await hostVms(c.nats.nc, expectHost);
      const there = await hostVms(c.nats.nc, otherHost);
      const procs = await qemus(c);
      return vms.every((v) => here.get(v) === "running" && !there.has(v) && procs.filter((q) => q.vm === v).length === 1) || undefined;
    } catch {
      return undefined;
    }
  }, o.timeoutMs ?? 60_000, `each of ${vms.join(", ")} running once, on ${expectHost}`).catch(() => undefined);
  const here = await retrying(() => hostVms(c.nats.nc, expectHost));
  const there = await retrying(() => hostVms(c.nats.nc, otherHost));
  const procs = await qemus(c);
  for (const v of vms) {
    const copies = procs.filter((q) => q.vm === v);
    const running = (here.get(v) === "running" ? 1 : 0) + (there.get(v) === "running" ? 1 : 0);
    if (running === 0 || copies.length === 0) out.lost++;
    if (running > 1 || copies.length > 1) out.twice++;
    if (copies.some((q) => q.host !== expectHost)) out.leaks.push(`QEMU of ${v} on ${copies.find((q) => q.host !== expectHost)!.host}`);
    expect(here.get(v), `${v} on ${expectHost}`).toBe("running");
    expect(there.has(v), `${v} on ${otherHost}`).toBe(false);
    const check = await retrying(() => verifyGuest(c.nats.nc, expectHost, v));
    expect(check, `self-check of ${v} on ${expectHost}`).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
  }
  return out;
}

/** Nothing of this migration left: RAM files of its destination, consumers naming it. */
export async function checkLeaks(c: Cluster, migrationId: string, targetHost: string): Promise<string[]> {
  const leaks: string[] = [];
  // RAM files of this migration's destination that no live QEMU uses (a VM that arrived
  // keeps its file for as long as it runs).
  const orphans = async () => {
    const inUse = new Set((await qemus(c)).map((q) => q.ramPath));
    return (await readdir("/dev/shm")).filter((f) => f.startsWith(`gangway-${targetHost}-${migrationId}`) && !inUse.has(join("/dev/shm", f)));
  };
  const shm = await eventually(async () => ((await orphans()).length === 0 ? [] : undefined), 20_000, "destination RAM files removed").catch(orphans);
  leaks.push(...shm.map((f) => `/dev/shm/${f}`));
  // Ordered consumers of processes that were killed expire on the server after a few seconds.
  const cons = await eventually(async () => {
    const left = await consumersOf(c, migrationId).catch(() => ["(listing failed)"]);
    return left.length === 0 ? [] : undefined;
  }, 30_000, "consumers of the migration gone").catch(() => consumersOf(c, migrationId));
  leaks.push(...cons.map((n) => `consumer ${n}`));
  return leaks;
}

/** A failed migration: every VM rolled back with a bounded reason, none committed or resumed. */
export function checkRolledBack(s: GangSummary, w: MigrationWatch, vms: string[], reason?: RegExp): void {
  expect(s.outcome, s.reason).toBe("failed");
  expect(s.reason?.length ?? 0).toBeGreaterThan(0);
  expect(s.reason!.length).toBeLessThanOrEqual(2000);
  for (const vm of vms) {
    const v = s.vms.find((x) => x.vm === vm);
    expect(v?.outcome, `${vm}: ${v?.reason}`).toBe("rolledback");
    expect(v!.reason!.length).toBeGreaterThan(0);
    expect(v!.reason!.length).toBeLessThanOrEqual(2000);
    if (reason) expect(v!.reason).toMatch(reason);
    // The destination never resumed it.
    expect(w.has("commit.resumed", (e) => e.data.vm === vm), `${vm} resumed on the destination`).toBe(false);
  }
}

// ---- figures ----------------------------------------------------------------------------

export interface CaseFigures {
  case: string;
  title: string;
  faultsInjected: number;
  migrations: number;
  completed: number;
  rolledBack: number;
  cancelled: number;
  refused: number;
  vmsLost: number;
  vmsRunningTwice: number;
  leaks: number;
  leaked?: string[];
  durationSec: number;
  /** "pass", or the assertion that failed. */
  result: string;
  notes?: string;
}

/** Adds a case's figures to FAULTS_REPORT (merged by case id; files may run in parallel). */
export async function report(f: CaseFigures): Promise<void> {
  const path = process.env.FAULTS_REPORT;
  if (!path) return;
  const lock = `${path}.lock`;
  await mkdir(dirname(path), { recursive: true });
  for (let i = 0; ; i++) {
    try {
      await mkdir(lock);
      break;
    } catch {
      if (i > 100) await rmdir(lock).catch(() => undefined);
      await sleep(50);
    }
  }
  try {
    let doc: { cases: Record<string, CaseFigures> } = { cases: {} };
    try {
      doc = JSON.parse(await readFile(path, "utf8")) as typeof doc;
    } catch {
      /* first case */
    }
    doc.cases[f.case] = f;
    const all = Object.values(doc.cases);
    const sum = (k: keyof CaseFigures) => all.reduce((n, x) => n + (typeof x[k] === "number" ? (x[k] as number) : 0), 0);
    const totals = {
      cases: all.length, faultsInjected: sum("faultsInjected"), migrations: sum("migrations"), completed: sum("completed"), rolledBack: sum("rolledBack"),
      cancelled: sum("cancelled"), refused: sum("refused"), vmsLost: sum("vmsLost"), vmsRunningTwice: sum("vmsRunningTwice"), leaks: sum("leaks"), durationSec: Math.round(sum("durationSec")),
    };
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ generatedAt: new Date().toISOString(), totals, cases: Object.fromEntries(Object.entries(doc.cases).sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))) }, null, 2) + "\n");
    await rename(tmp, path);
  } finally {
    await rmdir(lock).catch(() => undefined);
  }
}

export interface CaseRecorder {
  readonly f: CaseFigures;
  /** Adds what a check found (lost, twice, leaks). */
  add(o: Outcome): void;
}

/**
 * Runs one case, timing it and collecting its figures; they are reported whether it
 * passes or not, and a case that leaked anything fails.
 */
export async function runCase(id: string, title: string, body: (r: CaseRecorder) => Promise<void>): Promise<void> {
  const t0 = Date.now();
  const f: CaseFigures = { case: id, title, faultsInjected: 0, migrations: 0, completed: 0, rolledBack: 0, cancelled: 0, refused: 0, vmsLost: 0, vmsRunningTwice: 0, leaks: 0, durationSec: 0, result: "pass" };
  const r: CaseRecorder = {
    f,
    add(o) {
      f.vmsLost += o.lost;
      f.vmsRunningTwice += o.twice;
      f.leaks += o.leaks.length;
      if (o.leaks.length) f.leaked = [...(f.leaked ?? []), ...o.leaks];
    },
  };
  try {
    await body(r);
    expect(f.leaked ?? [], "left behind").toEqual([]);
    expect(f.vmsLost, "VMs lost").toBe(0);
    expect(f.vmsRunningTwice, "VMs running twice").toBe(0);
  } catch (err) {
    f.result = `fail: ${(err as Error).message.split("\n")[0]!.slice(0, 300)}`;
    throw err;
  } finally {
    f.durationSec = Math.round((Date.now() - t0) / 100) / 10;
    await report(f);
  }
}

/** Removes the RAM dumps of a migration (64-256 MiB each). */
export async function removeDumps(c: Cluster, migrationId: string): Promise<void> {
  for (const f of await readdir(c.dumps).catch(() => [] as string[])) if (f.startsWith(`${migrationId}.`)) await rm(join(c.dumps, f), { force: true });
}

/**
 * The proof of a committed migration: for each VM the commit's three digests (the stopped
 * source's RAM, what the stream and repair pass sent, the destination's RAM as loaded) are
 * equal, and the RAM dumps both agents kept are identical byte for byte. The dumps are
 * removed afterwards.
 */
export async function checkProof(c: Cluster, s: GangSummary, vms: string[]): Promise<void> {
  try {
    for (const vm of vms) {
      const v = s.vms.find((x) => x.vm === vm);
      expect(v?.outcome, `${vm}: ${v?.reason}`).toBe("committed");
      const p = v!.proof;
      expect(p, `${vm}: the commit's proof`).toBeDefined();
      expect(p!.sent_digest, `${vm}: sent = the source's RAM`).toBe(p!.source_ram_digest);
      expect(p!.destination_digest, `${vm}: the destination's RAM = the source's`).toBe(p!.source_ram_digest);
      expect(p!.pages_repaired).toBeGreaterThanOrEqual(0);
    }
    expect(await compareRamDumps(c.dumps, s.migrationId, vms), "RAM dumps of both ends").toEqual(Object.fromEntries(vms.map((v) => [v, "identical"])));
  } finally {
    await removeDumps(c, s.migrationId);
  }
}

/** A migration that failed as it should: rolled back, source running and verified, nothing left. */
export async function expectRolledBack(c: Cluster, r: CaseRecorder, s: GangSummary, w: MigrationWatch, o: { vms: string[]; source: string; target: string; reason?: RegExp }): Promise<void> {
  r.f.migrations++;
  await removeDumps(c, s.migrationId);
  checkRolledBack(s, w, o.vms, o.reason);
  r.f.rolledBack++;
  w.stop();
  r.add(await checkPlacement(c, o.vms, o.source, o.target));
  r.add({ lost: 0, twice: 0, leaks: await checkLeaks(c, s.migrationId, o.target) });
}

/** A migration that succeeded: its proof holds (digests, RAM dumps), each VM runs once, on the destination, and verifies. */
export async function expectSucceeded(c: Cluster, r: CaseRecorder, s: GangSummary, o: { vms: string[]; source: string; target: string }): Promise<void> {
  r.f.migrations++;
  if (s.outcome !== "succeeded") await removeDumps(c, s.migrationId);
  expect(s.outcome, s.reason).toBe("succeeded");
  await checkProof(c, s, o.vms);
  r.f.completed++;
  r.add(await checkPlacement(c, o.vms, o.target, o.source));
  r.add({ lost: 0, twice: 0, leaks: await checkLeaks(c, s.migrationId, o.target) });
}
