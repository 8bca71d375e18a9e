/**
 * The host agent: owns this host's VMs, publishes its inventory, answers liveness pings,
 * and acts on the commands addressed to it (gw.cmd.agent.<host>.>): start and stop VMs,
 * play source or destination of a migration, resume, quit or roll back. It decides
 * nothing about a migration's outcome: it reports facts, and the functions decide.
 */
import { KeyTable } from "../../kit/keyTable.ts";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { SpanKind, context, trace } from "@opentelemetry/api";
import { freemem, totalmem } from "node:os";
import type { z } from "zod";
import {
  agentPageRequest, agentPrepareTarget, agentQuitSource, agentResumeTarget, agentRollback, agentStartSource, agentSwitchover, agentVmStart, agentVmStop,
  commitAbort, commitPostcopyReady, commitReady, commitResumed, dirtyRound, hostInventory, migrationProgress, packCorrupt, pageMissing, pageRequested, pageServed, scanRequested,
  migrationStarted, migrationSwitchover, MigrationPhase, MigrationMode,
  agentConsole, agentManifest, type VmSpec,
} from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { createPublisher, type EventPublisher } from "../../infra/events/publisher.ts";
import { createLogger, type Logger } from "../../infra/log.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { answer, ask } from "../../infra/nats/service.ts";
import { extractTraceContext, meter, tracer } from "../../infra/telemetry.ts";
import { inSpan } from "../../infra/spans.ts";
import { createPageKeyer, PAGE_SIZE, type PageKeyer } from "../dataplane/contentKey.ts";
import { openPackStore, type PackStore } from "../dataplane/packStore.ts";
import { createKeyResolver, type KeyResolver } from "./keyResolver.ts";
import type { ReturnPathMessage } from "../qemu/returnPath.ts";
import { scanMemory } from "./memoryScanner.ts";
import { openPageSource, type CorruptPack, type PageSource } from "./packLocator.ts";
import type { AdoptedVm, GoneVm, OutgoingStream, QemuDriver, RunningVm } from "./qemuDriver.ts";
import { runSourceMigration, type SourceProgress } from "./sourceMigration.ts";
import { proveSourceRam, stalePagesAtSwitchover } from "./sourceRamProof.ts";
import { sourceRecordsFor } from "./testFaults.ts";
import { paceToDestination } from "./destinationPace.ts";
import { proveDestination } from "./destinationProof.ts";
import { startHostLiveness, type HostLiveness } from "./hostLiveness.ts";
import { DEFAULT_LIVENESS, pingAgent, type LivenessThresholds } from "./liveness.ts";
import type { ConnectOptions } from "../../infra/nats/connect.ts";
import { missingPages, targetRecords, type TargetState } from "./targetMigration.ts";

export interface AgentOptions {
  host: string;
  nc: NatsConnection;
  driver: QemuDriver;
  log?: Logger;
  /** Seconds between inventory reports. @default 10 */
  inventoryIntervalSec?: number;
  /**
   * Liveness of the peer host during a migration (see liveness.ts): thresholds, and how a
   * worker thread connects to answer and watch beside the data path (without: on `nc`).
   */
  liveness?: LivenessThresholds & { connect?: ConnectOptions };
}

type Cmd<D extends { data: z.ZodType }> = z.infer<D["data"]>;

interface OwnedVm {
  spec: VmSpec;
  vm: RunningVm;
  state: "running" | "paused" | "migrating" | "incoming";
  /** The migration this VM is leaving in, while it is migrating. */
  migrationId?: string;
  /** The last scan's page table and pass number (preparation phase). */
  scan?: { table: Uint8Array; pass: number };
  scanning?: boolean;
}

interface SourceSession {
  migrationId: string;
  vm: string;
  targetHost: string;
  /** QEMU's outgoing migration, once started. */
  out?: OutgoingStream;
  /** The switch-over decided for this VM, once executed. */
  switchover?: { mode: "stop-and-copy" | "post-copy"; reason: string };
  /** Post-copy: pages the destination asked for and the manifest has not carried yet ("block:offset"). */
  requested: Set<string>;
  /** The last manifest sequence number published (-1: none). */
  published: number;
  cancel(): Promise<void>;
  done: Promise<unknown>;
  /** Resolved when the VM is decided here (quit after commit, or rolled back). */
  ended: Promise<void>;
  end(): void;
}

interface TargetSession {
  migrationId: string;
  vm: RunningVm;
  spec: VmSpec;
  ended: Promise<void>;
  end(): void;
  /** Post-copy, once PACKAGED went to QEMU: resumed before all pages are here. */
  postcopy?: { resumed: ReturnType<typeof latch>; isResumed: boolean };
  /** What the rebuild got so far (the source asks how far, before it switches over). */
  state: TargetState;
  /** What the destination waits on once the stream is written (before, the rebuild says). */
  waitingFor?: string;
}

/** A promise and the function that resolves it. */
function latch(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

interface GangContext {
  resolver: KeyResolver;
  gangKeys: KeyTable;
  users: number;
  /** VMs of the gang whose guest stopped for the switch-over and that are not decided yet. */
  stopped: Set<string>;
}

/** QEMU's stream while gangway drains its pipeline before a switch-over (bytes/s). */
const DRAIN_BYTES_PER_SECOND = 1_000_000;
/** The longest a switch-over waits for the drain. */
const DRAIN_MAX_MS = 15_000;
/** Manifest messages (4096 pages each) a source may run ahead of what its destination handed QEMU. */
const PACE_WINDOW = 2;
/** The longest a source holds QEMU's stream at once (for its destination, or a sibling's downtime). */
const PACE_MAX_WAIT_MS = 10_000;

const bytesOnLink = meter().createCounter("gangway.migration.bytes_on_link", { unit: "By", description: "bytes a source host put on the link for migrations" });
const pagesCounter = meter().createCounter("gangway.migration.pages", { description: "pages carried by migrations, by outcome (zero, deduplicated, sent)" });

export interface Agent {
  readonly host: string;
  /**
   * Stops serving. Its VMs are quit, unless `keepVms`: then they keep running (outgoing
   * migrations are cancelled and aborted; incoming destinations are quit) and the next
   * agent of this host adopts them (needs a driver whose VMs outlive the agent).
   */
  stop(opts?: { keepVms?: boolean }): Promise<void>;
}

export async function startAgent(o: AgentOptions): Promise<Agent> {
  const log = (o.log ?? createLogger()).child({ component: "agent", host: o.host });
  const js = jetstream(o.nc);
  const jsm = await jetstreamManager(o.nc);
  const pub: EventPublisher = createPublisher(js, `gangway/host/${o.host}`);
  const packs: PackStore = await openPackStore(o.nc);
  const keyers = new Map<string, PageKeyer>();
  const keyerFor = (tenant: string) => keyers.get(tenant) ?? keyers.set(tenant, createPageKeyer(tenant)).get(tenant)!;
  let pageSource: PageSource | undefined;
  /**
   * A damaged pack is removed from the store and announced: the dedup index forgets its keys,
   * so the next migration needing those pages sends them again (before, every later
   * migration of them failed on the same pack). This migration fails on it regardless.
   */
  const onCorrupt = (c: CorruptPack) => {
    log.warn("page pack damaged; removing it", { pack: c.pack, storedBy: c.migrationId, reason: c.reason });
    void (async () => {
      await packs.remove(c.pack);
      await pub.publish(packCorrupt, { migrationId: c.migrationId }, { migrationId: c.migrationId, tenant: c.tenant, pack: c.pack, reportedBy: o.host, reason: c.reason.slice(0, 2000) }, { id: `corrupt-${c.pack}-${o.host}` });
    })().catch((e: Error) => log.error("damaged pack not removed or not announced", { pack: c.pack, error: e }));
  };
  const pages = async () => (pageSource ??= await openPageSource(o.nc, packs, { onCorrupt, host: o.host }));
  const owned = new Map<string, OwnedVm>();
  const sources = new Map<string, SourceSession>(); // key: migration/vm
  const targets = new Map<string, TargetSession>();
  /** Destinations whose QEMU is still starting. */
  const preparing = new Map<string, { rolledBack: boolean }>();
  const gangs = new Map<string, GangContext>();
  const prepSources = new Set<string>();
  const started = Date.now();
  // VMs an earlier agent of this host left running are taken back first; reclaim then
  // removes only what no live QEMU uses.
  const found: { adopted: AdoptedVm[]; gone: GoneVm[] } = o.driver.adopt ? await o.driver.adopt() : { adopted: [], gone: [] };
  const reclaimed = await o.driver.reclaim();
  if (reclaimed.length) log.warn("removed what an earlier agent of this host left behind", { files: reclaimed });
  /** Adopted VMs whose migration, incoming or resume the old agent left undecided: settled once the agent is up. */
  const leftOver: AdoptedVm[] = [];
  for (const a of found.adopted) {
    const r = a.record;
    if (r.state === "incoming" || (r.state === "resuming" && r.postcopy)) {
      leftOver.push(a);
      continue;
    }
    const state = r.state === "migrating" ? "migrating" : r.state === "resuming" ? "running" : a.status === "running" ? "running" : "paused";
    owned.set(a.vm.name, { spec: a.vm.spec, vm: a.vm, state, ...(r.state === "migrating" && r.migrationId ? { migrationId: r.migrationId } : {}) });
    if (r.state === "migrating" || r.state === "resuming") leftOver.push(a);
  }
  if (found.adopted.length) log.warn("adopted the VMs an earlier agent of this host left running", { vms: found.adopted.map((a) => ({ vm: a.vm.name, status: a.status, ...a.record })) });
  for (const g of found.gone) log.warn("a VM of an earlier agent of this host is gone (its QEMU died without it)", { vm: g.name, role: g.role, ...g.record });

  // --- inventory ---------------------------------------------------------------
  /**
   * Each VM's record follows the agent's view of it (written only when it changes), so a
   * restarted agent knows what it was doing. A post-copy destination still receiving pages
   * keeps its "resuming" record until every page is in.
   */
  const syncRecords = async () => {
    await Promise.all([...owned.values()].map((v) => {
      if ([...targets.values()].some((t) => t.vm === v.vm)) return undefined;
      return v.vm.remember?.({ state: v.state, ...(v.state === "migrating" && v.migrationId ? { migrationId: v.migrationId } : {}) });
    }));
  };
  const publishInventory = async () => {
    await syncRecords();
    const vms = [...owned.values()].map((v) => ({ vm: v.spec.name, tenant: v.spec.tenant, memoryBytes: v.spec.memoryMiB * 1024 * 1024, state: v.state, ...(v.spec.uuid ? { uuid: v.spec.uuid } : {}), spec: v.spec }));
    const used = vms.reduce((n, v) => n + v.memoryBytes, 0);
    await pub.publish(hostInventory, { host: o.host }, { host: o.host, memoryTotalBytes: totalmem(), memoryFreeBytes: Math.max(0, Math.min(freemem(), totalmem() - used)), vms });
  };
  const inventoryTimer = setInterval(() => void publishInventory().catch((e: Error) => log.warn("inventory not published", { error: e })), (o.inventoryIntervalSec ?? 10) * 1000);

  // --- liveness: request-reply outside the retained stream (pings are not facts) ---
  const { connect: livenessConnect, ...thresholds } = o.liveness ?? {};
  const liveness: HostLiveness = await startHostLiveness({
    host: o.host, nc: o.nc, thresholds, log, ...(livenessConnect ? { connect: livenessConnect } : {}),
    status: () => ({ uptimeSec: (Date.now() - started) / 1000, vms: owned.size, migrations: sources.size + targets.size }),
  });
  // The serial console of a VM, for operators and the demo's self-checks.
  const consoleSub: Subscription = answer(o.nc, agentConsole, { host: o.host }, {
    handle: async (req) => {
      const v = owned.get(req.vm);
      if (!v) throw new Error(`no VM ${req.vm} on ${o.host}`);
      return { ok: true, line: await v.vm.console(req.send, new RegExp(req.expect), Math.min(req.timeoutMs ?? 30_000, 120_000)) };
    },
    failed: (error) => ({ ok: false, error }),
  });
  // How far a destination's rebuild got: the source drains its pipeline before it switches over.
  const manifestSub: Subscription = answer(o.nc, agentManifest, { host: o.host }, {
    handle: (req) => {
      const t = targets.get(`${req.migrationId}/${req.vm}`);
      return t ? { seqWritten: t.state.seqWritten ?? -1, seqRead: t.state.seqRead ?? -1, waitingFor: t.waitingFor ?? t.state.waitingFor ?? "nothing" } : { error: `no destination of ${req.vm} in ${req.migrationId} on ${o.host}` };
    },
    failed: (error) => ({ error }),
  });
  /** How far a destination got with its manifest (sequence numbers read and handed to QEMU), or undefined if it cannot say. */
  const destinationManifest = async (host: string, migrationId: string, vm: string): Promise<{ seqWritten?: number; seqRead?: number; waitingFor?: string } | undefined> => {
    try {
      const r = await ask(o.nc, agentManifest, { host }, { migrationId, vm }, { timeoutMs: 1000 });
      return "error" in r ? {} : r;
    } catch {
      return undefined;
    }
  };
  const peerAlive = async (peer: string) => (await pingAgent(o.nc, peer, thresholds.pingTimeoutMs ?? DEFAULT_LIVENESS.pingTimeoutMs)).kind === "ok";
  /**
   * Resolves with a reason when the peer is given up (gone, or silent for long). A peer slow
   * to answer is reported first (progress with `peer`), and never acted on until then.
   */
  const watchPeer = (peer: string, until: Promise<unknown>, migrationId: string, vm: string) =>
    liveness.watch(peer, until, (v) => {
      if (v.state === "dead") return;
      (v.state === "suspect" ? log.warn : log.info)(v.state === "suspect" ? "peer suspected" : "peer answers again", { migrationId, vm, peer, reason: v.reason });
      void pub.publish(migrationProgress, { migrationId }, {
        migrationId, vm, phase: MigrationPhase.Running, mode: MigrationMode.PreCopy, stats: { time_elapsed: 0, data_processed: 0 },
        peer: { host: peer, state: v.state === "suspect" ? "suspected" : "answering", reason: v.reason.slice(0, 2000) },
      }).catch(() => undefined);
    });

  const abort = async (migrationId: string, vm: string, reason: string, destinationStopped = false) => {
    log.warn("aborting", { migrationId, vm, reason });
    // NATS may be away (stopped, paused, cut off) just when things fail: an abort that is
    // never published leaves the VM undecided for good, so keep trying (for up to ~10 min;
    // the stream drops the copies of one that got through unseen).
    for (let attempt = 0; ; attempt++) {
      try {
        await pub.publish(commitAbort, { migrationId }, { migrationId, vm, reason: reason.slice(0, 2000), reportedBy: `host ${o.host}`, destinationStopped }, { id: `abort-${migrationId}-${vm}-${o.host}${destinationStopped ? "-stopped" : ""}` });
        return;
      } catch (e) {
        if (attempt >= 120 || o.nc.isClosed()) return log.error("abort not published; giving up", { migrationId, vm, error: e });
        if (attempt === 0) log.error("abort not published; retrying", { migrationId, vm, error: e });
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
      }
    }
  };

  // --- commands ----------------------------------------------------------------
  const vmStart = async (c: Cmd<typeof agentVmStart>) => {
    if (owned.has(c.spec.name)) throw new Error(`VM ${c.spec.name} already runs on ${o.host}`);
    const vm = await o.driver.startVm(c.spec, "source", "vm");
    owned.set(c.spec.name, { spec: c.spec, vm, state: "running" });
    await publishInventory();
  };

  const vmStop = async (c: Cmd<typeof agentVmStop>) => {
    const v = owned.get(c.vm);
    if (!v) return;
    owned.delete(c.vm);
    await v.vm.quit();
    await publishInventory();
  };

  const startSource = async (c: Cmd<typeof agentStartSource>) => {
    const key = `${c.migrationId}/${c.vm}`;
    const v = owned.get(c.vm);
    if (!v) return abort(c.migrationId, c.vm, `VM ${c.vm} is not on ${o.host}`);
    if (v.state === "migrating" || sources.has(key)) return abort(c.migrationId, c.vm, `VM ${c.vm} is already migrating`);
    v.state = "migrating";
    v.migrationId = c.migrationId;
    void publishInventory().catch(() => undefined); // others see at once that it is taken
    let gang = gangs.get(c.migrationId);
    if (!gang) gangs.set(c.migrationId, (gang = { resolver: createKeyResolver(o.nc, pub, { migrationId: c.migrationId, targetHost: c.targetHost }), gangKeys: new KeyTable(65536), users: 0, stopped: new Set() }));
    gang.users++;
    const t0 = Date.now();
    const params = { migrationId: c.migrationId };
    let last: SourceProgress | undefined;
    let out: Awaited<ReturnType<QemuDriver["migrateOut"]>> | undefined;
    let session!: SourceSession;
    /** The dirty log of one pre-copy pass, with QEMU's own view of what remains. */
    const publishRound = async (r: { round: number; pages: number; durationMs: number; nativeBytes: number }) => {
      const f = await out!.figures();
      const transferRate = r.durationMs > 0 ? (r.nativeBytes * 1000) / r.durationMs : 0;
      await pub.publish(dirtyRound, params, {
        migrationId: c.migrationId, vm: c.vm, sourceHost: o.host, round: r.round, pagesSent: r.pages, pagesDirtied: Math.round((f.dirtyPagesRate * r.durationMs) / 1000),
        durationMs: r.durationMs, dirtyRate: f.dirtyPagesRate, transferRate: Math.round(transferRate), remainingBytes: f.remainingBytes, cpuThrottlePercent: f.cpuThrottlePercent,
        expectedDowntimeMs: transferRate > 0 ? Math.round((f.remainingBytes / transferRate) * 1000) : 1e9,
      }, { id: `${c.migrationId}-${c.vm}-dirty-${r.round}` });
    };
    /** Requested pages the manifest carried since the last report. */
    const served = { ranges: [] as { block: string; offset: number }[], fromSource: 0, fromDestination: 0 };
    const publishServed = async () => {
      if (served.ranges.length === 0) return;
      const { ranges, fromSource, fromDestination } = served;
      served.ranges = [];
      served.fromSource = served.fromDestination = 0;
      const block = ranges[0]!.block;
      await pub.publish(pageServed, params, {
        migrationId: c.migrationId, vm: c.vm, block, fromSource, fromDestination,
        ranges: ranges.filter((r) => r.block === block).slice(0, 4096).map((r) => ({ offset: r.offset, length: PAGE_SIZE })),
      });
    };
    const done = (async () => {
      await pub.publish(migrationStarted, params, { migrationId: c.migrationId, vm: c.vm, sourceHost: o.host, targetHost: c.targetHost, phase: MigrationPhase.Running });
      out = await o.driver.migrateOut(v.vm, {
        postcopy: c.options.postcopy, downtimeLimitMs: c.options.maxDowntimeMs,
        ...(c.options.autoConverge ? { autoConvergeMaxPercent: c.options.autoConvergeMaxPercent } : {}),
        ...(c.options.bandwidthMBps ? { maxBandwidthBps: c.options.bandwidthMBps * 1e6 } : {}),
      });
      session.out = out;
      void out.stopped.then((at) => {
        const s = session.switchover ?? { mode: "stop-and-copy" as const, reason: "QEMU's remaining pages fit its downtime limit" };
        return pub.publish(migrationSwitchover, params, { migrationId: c.migrationId, vm: c.vm, mode: s.mode, reason: s.reason, round: last?.round ?? 0 }, { id: `${c.migrationId}-${c.vm}-switchover`, time: new Date(at) });
      }).catch(() => undefined);
      const emitProgress = (p: SourceProgress) => {
        last = p;
        const elapsed = (Date.now() - t0) / 1000;
        const processedBytes = p.pages * PAGE_SIZE;
        const rate = elapsed > 0 ? processedBytes / elapsed : 0;
        const remaining = Math.max(0, p.memory_total - processedBytes);
        void pub.publish(migrationProgress, params, {
          migrationId: c.migrationId, vm: c.vm, phase: MigrationPhase.Running, mode: session.switchover?.mode === "post-copy" ? MigrationMode.PostCopy : MigrationMode.PreCopy,
          stats: {
            time_elapsed: Math.round(elapsed * 1000), memory_total: p.memory_total, memory_processed: processedBytes, memory_remaining: remaining,
            time_remaining: rate > 0 ? Math.round((remaining / rate) * 1000) : undefined, memory_constant: p.memory_constant, memory_normal: p.pages - p.memory_constant,
            memory_bps: Math.round(rate), memory_iteration: p.round, pages_deduplicated: p.pages_deduplicated, pages_sent: p.pages_sent, packed_raw_bytes: p.packed_raw_bytes, packed_bytes: p.packed_bytes, bytes_on_link: p.bytes_on_link, data_processed: p.native_bytes,
            dedup_ratio: p.pages - p.memory_constant > 0 ? p.pages_sent / (p.pages - p.memory_constant) : 1,
            compression_ratio: p.packed_raw_bytes > 0 ? p.packed_bytes / p.packed_raw_bytes : 1,
            percent: p.memory_total ? Math.min(99, (100 * Math.min(processedBytes, p.memory_total)) / p.memory_total) : 0,
          },
        }).catch(() => undefined);
      };
      const outgoing = out;
      // The source goes at its destination's pace: what the destination has not handed its
      // QEMU when the guest stops is downtime (24–61 s on the demo without this).
      // And while another VM of the gang is in its downtime (its guest stopped), this one waits:
      // both agents' CPU is that VM's, not this one's pre-copy.
      let guestStopped = false;
      void out.stopped.then(() => {
        guestStopped = true;
        gang!.stopped.add(c.vm);
      }, () => undefined);
      void session.ended.then(() => gang!.stopped.delete(c.vm));
      const pacer = paceToDestination(sourceRecordsFor(outgoing.records, c.vm), {
        published: () => session.published,
        destinationWritten: async () => (await destinationManifest(c.targetHost, c.migrationId, c.vm))?.seqWritten,
        window: PACE_WINDOW, active: () => !guestStopped && session.switchover === undefined, log, what: `${c.vm} of ${c.migrationId}`,
        yieldTo: () => [...gang!.stopped].find((vm) => vm !== c.vm),
        maxWaitMs: PACE_MAX_WAIT_MS,
      });
      const result = await inSpan("scan stream", { "gangway.migration": c.migrationId, "gangway.vm": c.vm, "gangway.host": o.host }, () => runSourceMigration({
        migrationId: c.migrationId, tenant: v.spec.tenant, sourceHost: o.host, records: pacer.records, publisher: pub, packs,
        vm: c.vm, keyer: keyerFor(v.spec.tenant), resolver: gang!.resolver, gangKeys: gang!.gangKeys, nativeBytes: () => out!.nativeBytes(), onProgress: emitProgress,
        onRound: (r) => void publishRound(r).catch((e: Error) => log.warn("dirty log not published", { error: e })),
        onPostcopyPage: (block, offset, sent) => {
          const k = `${block}:${offset}`;
          if (!session.requested.delete(k)) return;
          served.ranges.push({ block, offset });
          if (sent) served.fromSource++;
          else served.fromDestination++;
        },
        onPostcopyFlushed: () => void publishServed().catch(() => undefined),
        onPublished: (seq) => (session.published = seq),
        lowLatency: () => session.switchover !== undefined || pacer.holding,
        staleAtSwitchover: (image, blocks, discarded) => stalePagesAtSwitchover({ ramPath: v.vm.ramPath, image, blocks, discarded, keyer: keyerFor(v.spec.tenant) }),
      }));
      bytesOnLink.add(result.progress.bytes_on_link, { "gangway.host": o.host });
      pagesCounter.add(result.progress.memory_constant, { outcome: "zero" });
      pagesCounter.add(result.progress.pages_deduplicated, { outcome: "deduplicated" });
      pagesCounter.add(result.progress.pages_sent, { outcome: "sent" });
      emitProgress(result.progress);
      log.info("source sent everything", { migrationId: c.migrationId, ...result.progress });
      // The guest is stopped now: its RAM file is the truth to prove (and repair) against.
      const proof = await inSpan("source proof", { "gangway.migration": c.migrationId, "gangway.vm": c.vm, "gangway.host": o.host }, () => proveSourceRam({
        migrationId: c.migrationId, vm: c.vm, tenant: v.spec.tenant, sourceHost: o.host, ramPath: v.vm.ramPath, sent: result, keyer: keyerFor(v.spec.tenant),
        publisher: pub, packs, repair: session.switchover?.mode !== "post-copy",
      }));
      pagesCounter.add(proof.pagesRepaired, { outcome: "repaired" });
      (proof.pagesRepaired > 0 || proof.firstDiffering ? log.warn : log.info)("source memory proved", { migrationId: c.migrationId, vm: c.vm, ...proof });
    })();
    const ended = latch();
    // Filled in before `done` runs past its first await (which is where `out` appears).
    session = { migrationId: c.migrationId, vm: c.vm, targetHost: c.targetHost, requested: new Set(), published: -1, done, cancel: async () => void (await out?.cancel()), ended: ended.promise, end: ended.open };
    sources.set(key, session);
    // Watch the destination until this VM is decided, not just until it is sent: a
    // destination lost after the source finished still must not leave the source paused.
    void (async () => {
      for (;;) {
        const reason = await watchPeer(c.targetHost, ended.promise, c.migrationId, c.vm);
        if (!reason) return;
        // After a post-copy switch-over this host holds the only copy of the pages still to
        // come: give the destination its progress time-out to come back before giving up.
        if (session.switchover?.mode === "post-copy") {
          const until = Date.now() + c.options.progressTimeoutSec * 1000;
          let back = false;
          while (!back && Date.now() < until && sources.get(key) === session) {
            await new Promise((r) => setTimeout(r, 1000));
            back = await peerAlive(c.targetHost);
          }
          if (back) continue;
        }
        return abort(c.migrationId, c.vm, reason);
      }
    })();
    // KubeVirt's completionTimeoutPerGiB (at least 1 GiB's worth): a VM not decided by then is
    // aborted (after a pre-copy commit an abort changes nothing). Where post-copy is allowed,
    // the dirty log switches over at the budget instead: this is only the backstop, half a
    // budget later; a VM in post-copy is never aborted for time (that would lose it).
    const budgetMs = c.options.completionTimeoutPerGiB * Math.max(1, v.spec.memoryMiB / 1024) * 1000;
    let sentAll = false;
    void done.then(() => (sentAll = true), () => undefined);
    const overdue = setTimeout(() => {
      if (session.switchover?.mode === "post-copy") return;
      void (async () => {
        // Where it stood, so that whoever reads the abort knows which side was waiting.
        const qemu = await v.vm.status().catch(() => "unknown");
        const d = await destinationManifest(c.targetHost, c.migrationId, c.vm);
        const where = `source QEMU ${qemu}, ${sentAll ? "everything sent" : "still sending"}, manifest published to seq ${session.published}; destination ${d ? `read to seq ${d.seqRead}, wrote to seq ${d.seqWritten}, waiting for ${d.waitingFor}` : "did not say how far it got"}`;
        await abort(c.migrationId, c.vm, `not completed within ${Math.round(budgetMs / 1000)} s (completionTimeoutPerGiB ${c.options.completionTimeoutPerGiB}): ${where}`);
      })();
    }, c.options.postcopy ? budgetMs * 1.5 : budgetMs);
    void ended.promise.then(() => clearTimeout(overdue));
    done.catch(async (err: Error) => {
      await out?.cancel().catch(() => undefined);
      await abort(c.migrationId, c.vm, `source: ${err.message}`);
    });
  };

  const prepareTarget = async (c: Cmd<typeof agentPrepareTarget>) => {
    const key = `${c.migrationId}/${c.spec.name}`;
    if (targets.has(key) || preparing.has(key)) return;
    if (owned.has(c.spec.name)) return abort(c.migrationId, c.spec.name, `a VM named ${c.spec.name} already runs on ${o.host}`);
    // A rollback can come while QEMU is still starting: it marks this, and the VM is quit.
    const pending = { rolledBack: false };
    preparing.set(key, pending);
    const vm = await o.driver
      .startVm(c.spec, "destination", c.migrationId)
      .catch(async (err: Error) => {
        await abort(c.migrationId, c.spec.name, `destination VM did not start: ${err.message}`);
        return undefined;
      })
      .finally(() => preparing.delete(key));
    if (!vm) return;
    if (pending.rolledBack) return void (await vm.quit().catch(() => undefined));
    const ended = latch();
    const state: TargetState = { pagesWritten: 0 };
    const session: TargetSession = { migrationId: c.migrationId, vm, spec: c.spec, ended: ended.promise, end: ended.open, state };
    prepSources.add(c.sourceHost);
    targets.set(key, session);
    const params = { migrationId: c.migrationId };
    let faults = 0;
    /** Post-copy: QEMU faulted on pages it lacks; page-request decides how they come. */
    const onReturnPath = (m: ReturnPathMessage) => {
      if (m.type !== "reqPages") return;
      const seq = faults++;
      void pub.publish(pageRequested, params, { migrationId: c.migrationId, vm: c.spec.name, block: m.block, blockBytes: state.header?.blocks.find((b) => b.id === m.block)?.usedBytes ?? m.start + PAGE_SIZE, ranges: [{ offset: m.start, length: Math.max(PAGE_SIZE, m.length) }], seq }, { id: `${c.migrationId}-${c.spec.name}-fault-${seq}` })
        .catch((e: Error) => log.warn("page request not published", { error: e }));
    };
    /** Post-copy: once QEMU has the devices and waits for `cont`, ask commit to go ahead. */
    const onSwitchover = () => {
      session.postcopy = { resumed: latch(), isResumed: false };
      void (async () => {
        const deadline = Date.now() + 120_000;
        while (Date.now() < deadline) {
          const st = await vm.status().catch(() => "gone");
          if (st === "paused") break;
          if (st === "gone" || st === "running") throw new Error(`destination QEMU is ${st} after the device state`);
          await new Promise((r) => setTimeout(r, 50));
        }
        await pub.publish(commitPostcopyReady, params, { migrationId: c.migrationId, vm: c.spec.name, targetHost: o.host, pagesMissing: missingPages(state, 0).pages }, { id: `${c.migrationId}-${c.spec.name}-postcopy-ready` });
      })().catch((e: Error) => abort(c.migrationId, c.spec.name, `destination: ${e.message}`));
    };
    const run = (async () => {
      const source = await pages();
      // What the preparation phase preseeded first (it is most of the memory), then what
      // this migration stores as it goes.
      source.prefetch(`prep-${c.sourceHost}`, c.spec.tenant, keyerFor(c.spec.tenant));
      source.prefetch(c.migrationId, c.spec.tenant, keyerFor(c.spec.tenant));
      const records = targetRecords({ nc: o.nc, migrationId: c.migrationId, vm: c.spec.name, tenant: c.spec.tenant, sourceHost: c.sourceHost, host: o.host, keyer: keyerFor(c.spec.tenant), pages: source, packs, progressTimeoutMs: c.options.progressTimeoutSec * 1000, onSwitchover, ended: ended.promise }, state);
      await inSpan("destination rebuild", { "gangway.migration": c.migrationId, "gangway.vm": c.spec.name, "gangway.host": o.host }, () =>
        o.driver.migrateIn(vm, records, { postcopy: c.options.postcopy, onReturnPath, onWritten: () => (session.waitingFor = "QEMU to finish loading the stream") }));
      log.debug("destination loaded", { migrationId: c.migrationId, vm: c.spec.name });
      if (session.postcopy) return finishPostcopy(c.migrationId, session, state);
      const status = await vm.status();
      if (status !== "paused" && status !== "prelaunch") throw new Error(`destination QEMU is ${status} after loading, expected paused`);
      // The proof: read back what QEMU holds (block m0 from its RAM file), apply the source's
      // repairs of pages its stream missed, and digest it.
      const proof = await inSpan("destination proof", { "gangway.migration": c.migrationId, "gangway.vm": c.spec.name }, () => proveDestination({
        nc: o.nc, migrationId: c.migrationId, vm: c.spec.name, tenant: c.spec.tenant, state, ramPath: vm.ramPath, keyer: keyerFor(c.spec.tenant), pages: source,
        timeoutMs: c.options.progressTimeoutSec * 1000, ended: ended.promise, onWait: (what) => (session.waitingFor = what), sourceHost: c.sourceHost, host: o.host,
      }));
      await pub.publish(commitReady, { migrationId: c.migrationId }, {
        migrationId: c.migrationId, vm: c.spec.name, targetHost: o.host, pagesExpected: proof.expected, pagesDelivered: proof.delivered, digest: proof.digest,
        pagesRepaired: proof.pagesRepaired, loadDiffering: proof.loadDiffering, ...(proof.firstLoadDiffering ? { firstLoadDiffering: proof.firstLoadDiffering } : {}),
        ...(state.deviceStateDigest ? { deviceStateDigest: state.deviceStateDigest } : {}), readMs: proof.readMs,
      }, { id: `${c.migrationId}-${c.spec.name}-ready` });
      session.waitingFor = "the commit decision";
      log.info("destination ready", { migrationId: c.migrationId, vm: c.spec.name, pages: proof.delivered, pagesRepaired: proof.pagesRepaired, loadDiffering: proof.loadDiffering, readMs: proof.readMs, matchesSourceRam: proof.digest === proof.source.ramDigest });
    })();
    void watchSource(session, state, c.sourceHost, c.options.progressTimeoutSec * 1000);
    run.catch(async (err: Error) => {
      log.warn("destination failed", { migrationId: c.migrationId, vm: c.spec.name, error: err });
      await failTarget(session, state, `destination: ${err.message}`);
    });
  };

  /**
   * Watches the source host until the VM is decided here. Before post-copy resumed the VM,
   * a source that stops answering fails the migration (the source side takes over). After,
   * the source holds the only copy of the missing pages: the stall is reported
   * (postcopy-paused: the guest's vCPUs wait on the pages they fault on), and post-copy goes
   * on if the source answers again within the progress time-out (a link that came back);
   * only then is the VM given up.
   */
  const watchSource = async (t: TargetSession, state: TargetState, sourceHost: string, patienceMs: number) => {
    for (;;) {
      const reason = await watchPeer(sourceHost, t.ended, t.migrationId, t.spec.name);
      if (!reason) return;
      if (!t.postcopy?.isResumed) return failTarget(t, state, reason);
      // No QMP stop here: a vCPU waiting on a missing page cannot be paused anyway (stop would
      // hang), and one that touches only pages it has may run on. Post-copy is stalled, and said so.
      log.warn("post-copy: source unreachable; the guest waits on its missing pages until it answers again", { migrationId: t.migrationId, vm: t.spec.name, reason });
      const params = { migrationId: t.migrationId };
      const report = (status: string) =>
        pub.publish(migrationProgress, params, { migrationId: t.migrationId, vm: t.spec.name, phase: MigrationPhase.Running, mode: MigrationMode.PostCopy, stats: { time_elapsed: 0, data_processed: 0 }, qemu: { status, reason } })
          .catch(() => undefined);
      void report("postcopy-paused");
      const until = Date.now() + patienceMs;
      let back = false;
      while (!back && Date.now() < until && targets.get(`${t.migrationId}/${t.spec.name}`) === t) {
        await new Promise((r) => setTimeout(r, 1000));
        back = await peerAlive(sourceHost);
      }
      if (!back) return failTarget(t, state, `${reason}; not back within ${Math.round(patienceMs / 1000)} s`);
      log.info("post-copy: source answers again", { migrationId: t.migrationId, vm: t.spec.name });
      void report("postcopy-active");
    }
  };

  /**
   * A destination that cannot go on. Before post-copy resumed it the source is intact and
   * takes over; after, the pages it never got are lost with the source: it is paused (its
   * guest would hang on them anyway) and they are named.
   */
  const failTarget = async (t: TargetSession, state: TargetState, reason: string) => {
    if (t.postcopy) {
      const missing = missingPages(state);
      // QEMU may be stuck on a fault with its lock held: do not wait on it for long.
      if (t.postcopy.isResumed) {
        await Promise.race([t.vm.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
        const v = owned.get(t.spec.name);
        if (v?.vm === t.vm) v.state = "paused";
        void publishInventory().catch(() => undefined);
      }
      if (missing.pages > 0) {
        await pub.publish(pageMissing, { migrationId: t.migrationId }, { migrationId: t.migrationId, vm: t.spec.name, targetHost: o.host, pages: missing.pages, block: missing.block, ranges: missing.ranges, reason: reason.slice(0, 2000) })
          .catch((e: Error) => log.error("missing pages not reported", { error: e }));
      }
      reason = `${reason} (post-copy: ${missing.pages} pages never arrived)`;
    }
    await abort(t.migrationId, t.spec.name, reason);
  };

  /** Post-copy: every page is in; say so with the digest of what QEMU got, once it runs. */
  const finishPostcopy = async (migrationId: string, t: TargetSession, state: TargetState) => {
    await t.postcopy!.resumed.promise;
    const key = `${migrationId}/${t.spec.name}`;
    targets.delete(key);
    t.end();
    targetDone(migrationId);
    void syncRecords(); // every page is in: an ordinary running VM from now on
    // Every page of every block must have come: QEMU zero-fills what never did once its
    // post-copy ends, which would be silent corruption. Say so instead.
    const missing = missingPages(state);
    if (missing.pages > 0) {
      await pub.publish(pageMissing, { migrationId }, { migrationId, vm: t.spec.name, targetHost: o.host, pages: missing.pages, block: missing.block, ranges: missing.ranges, reason: "post-copy ended without these pages" })
        .catch((e: Error) => log.error("missing pages not reported", { error: e }));
      await Promise.race([t.vm.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
      return abort(migrationId, t.spec.name, `post-copy ended with ${missing.pages} pages never delivered (first at ${missing.block}+${missing.ranges[0]?.offset ?? 0})`);
    }
    const digest = state.delivered!.digest();
    log.info("post-copy complete", { migrationId, vm: t.spec.name, pagesAfterSwitchover: state.pagesAfterSwitchover ?? 0, duplicatesDropped: state.duplicatesDropped ?? 0 });
    await pub.publish(commitResumed, { migrationId }, {
      migrationId, vm: t.spec.name, targetHost: o.host,
      postcopy: { digest, pagesAfterSwitchover: state.pagesAfterSwitchover ?? 0, duplicatesDropped: state.duplicatesDropped ?? 0 },
    }, { id: `${migrationId}-${t.spec.name}-commit-resumed` });
  };

  const resumed = new Set<string>();
  const resumeTarget = async (c: Cmd<typeof agentResumeTarget>) => {
    const key = `${c.migrationId}/${c.vm}`;
    if (resumed.has(key)) return; // a repeated command: already done
    const t = targets.get(key);
    if (t?.postcopy) return resumePostcopy(c.migrationId, t);
    if (!t) {
      // Nothing to resume here (this agent restarted, and its QEMUs died with the old one):
      // say so, so that the intact source is resumed instead.
      return abort(c.migrationId, c.vm, `no destination VM ${c.vm} for this migration on ${o.host}`, true);
    }
    targets.delete(key);
    t.end();
    targetDone(c.migrationId);
    // Recorded before it runs: from now on it outlives the agent, and a restarted one finishes the resume.
    await t.vm.remember?.({ state: "resuming", migrationId: c.migrationId });
    const failed = await resumeOrStop(t.vm);
    if (failed) return abort(c.migrationId, c.vm, `destination did not resume: ${failed}`, true);
    resumed.add(key);
    owned.set(c.vm, { spec: t.spec, vm: t.vm, state: "running" });
    await pub.publish(commitResumed, { migrationId: c.migrationId }, { migrationId: c.migrationId, vm: c.vm, targetHost: o.host }, { id: `${c.migrationId}-${c.vm}-commit-resumed` });
    await pub.publish(migrationProgress, { migrationId: c.migrationId }, {
      migrationId: c.migrationId, vm: c.vm, phase: MigrationPhase.Succeeded, mode: MigrationMode.PreCopy, stats: { time_elapsed: 0, data_processed: 0, percent: 100 },
    }, { id: `${c.migrationId}-${c.vm}-resumed` });
    await publishInventory();
  };

  /**
   * Resumes a destination VM. A `cont` that errs (a QMP time-out under load, say) may still
   * have started the guest: only a VM that is not running is quit and reported stopped — the
   * commit function resumes the source on that word, so it must never be said of one that ran.
   * Returns why it failed, or undefined.
   */
  const resumeOrStop = async (vm: RunningVm): Promise<string | undefined> => {
    try {
      await vm.cont();
      return undefined;
    } catch (err) {
      const status = await vm.status().catch(() => "gone");
      if (status === "running") return undefined;
      await vm.quit().catch(() => undefined);
      return `${(err as Error).message} (QEMU ${status})`;
    }
  };

  /** Post-copy: the VM runs here now while its remaining pages are faulted in. */
  const resumePostcopy = async (migrationId: string, t: TargetSession) => {
    const key = `${migrationId}/${t.spec.name}`;
    await t.vm.remember?.({ state: "resuming", migrationId, postcopy: true });
    const failed = await resumeOrStop(t.vm);
    if (failed) return abort(migrationId, t.spec.name, `destination did not resume: ${failed}`, true);
    resumed.add(key);
    t.postcopy!.isResumed = true;
    t.postcopy!.resumed.open();
    owned.set(t.spec.name, { spec: t.spec, vm: t.vm, state: "running" });
    await pub.publish(migrationProgress, { migrationId }, {
      migrationId, vm: t.spec.name, phase: MigrationPhase.Running, mode: MigrationMode.PostCopy, stats: { time_elapsed: 0, data_processed: 0 },
    }, { id: `${migrationId}-${t.spec.name}-postcopy-resumed` });
    await publishInventory();
  };

  /** Executes the dirty log's switch-over decision on the source QEMU. */
  const switchover = async (c: Cmd<typeof agentSwitchover>) => {
    // A force-complete can come before QEMU's migration is set up: wait for it a little.
    let s = sources.get(`${c.migrationId}/${c.vm}`);
    for (let i = 0; i < 50 && !s?.out; i++) {
      await new Promise((r) => setTimeout(r, 200));
      s = sources.get(`${c.migrationId}/${c.vm}`);
    }
    if (!s?.out || s.switchover) return;
    s.switchover = { mode: c.mode, reason: c.reason };
    // Post-copy only: for stop-and-copy, what the guest dirties during a drain would all be
    // sent with it stopped; post-copy defers those pages until after the resume.
    const drained = c.mode === "post-copy" ? await drainBeforeSwitchover(s) : false;
    log.info("switching over", { migrationId: c.migrationId, vm: c.vm, mode: c.mode, reason: c.reason, drained });
    if (c.mode === "post-copy") await s.out.startPostcopy();
    else await s.out.forceComplete();
  };

  /**
   * Everything already in gangway's pipeline (proxy buffer, keying window, manifest, the
   * destination's rebuild) would sit between the guest stopping and the destination getting
   * its device state. So first: slow QEMU's stream to a trickle while the guest still runs,
   * and wait until the destination has handed QEMU all the source published (bounded).
   */
  const drainBeforeSwitchover = async (s: SourceSession): Promise<boolean> => {
    await s.out!.throttle(DRAIN_BYTES_PER_SECOND);
    const deadline = Date.now() + DRAIN_MAX_MS;
    let steady = 0;
    let last = s.published;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      const written = (await destinationManifest(s.targetHost, s.migrationId, s.vm))?.seqWritten;
      if (written === undefined) return false;
      // Caught up with what the source had published a poll ago (the trickle goes on).
      steady = written >= last ? steady + 1 : 0;
      last = s.published;
      if (steady >= 2) return true;
    }
    return false;
  };

  /** Post-copy: the destination needs these pages first; QEMU sends what it has not sent yet. */
  const pageRequest = async (c: Cmd<typeof agentPageRequest>) => {
    const s = sources.get(`${c.migrationId}/${c.vm}`);
    if (!s?.out) return;
    for (const r of c.ranges) {
      // QEMU already sent everything (the pages are on their way): nothing to ask for.
      if (!s.out.requestPages(c.block, r.offset, r.length)) return void log.debug("page request after the source's stream ended", { migrationId: c.migrationId, vm: c.vm });
      for (let at = r.offset; at < r.offset + r.length; at += PAGE_SIZE) s.requested.add(`${c.block}:${at}`);
    }
  };

  const quitSource = async (c: Cmd<typeof agentQuitSource>) => {
    const key = `${c.migrationId}/${c.vm}`;
    const s = sources.get(key);
    sources.delete(key);
    s?.end();
    await s?.done.catch(() => undefined);
    const v = owned.get(c.vm);
    // Only the copy that left in this migration (never a VM of the same name in another).
    if (v && v.state === "migrating" && v.migrationId === c.migrationId) {
      owned.delete(c.vm);
      await v.vm.quit();
    }
    releaseGang(c.migrationId);
    await publishInventory();
  };

  const rollback = async (c: Cmd<typeof agentRollback>) => {
    const key = `${c.migrationId}/${c.vm}`;
    const pending = preparing.get(key);
    if (pending) pending.rolledBack = true;
    const t = targets.get(key);
    if (t) {
      targets.delete(key);
      log.info("rolled back: destination quit", { migrationId: c.migrationId, vm: c.vm, waitingFor: t.waitingFor ?? t.state.waitingFor, seqRead: t.state.seqRead, seqWritten: t.state.seqWritten, reason: c.reason });
      t.end();
      targetDone(c.migrationId);
      // For diagnosis (GANGWAY_KEEP_SUSPECT=1): a destination the proof refused stays paused,
      // never resumed, its RAM file there to compare; the operator quits it.
      if (process.env.GANGWAY_KEEP_SUSPECT === "1" && /does not match the source's RAM|other device state/.test(c.reason)) {
        log.warn("rolled back: the suspect destination is kept paused for inspection", { migrationId: c.migrationId, vm: c.vm, ramPath: t.vm.ramPath, reason: c.reason });
      } else await t.vm.quit().catch(() => undefined);
    }
    const s = sources.get(key);
    if (s) {
      sources.delete(key);
      s.end();
      await s.cancel().catch(() => undefined);
      await s.done.catch(() => undefined);
      releaseGang(c.migrationId);
    }
    const v = owned.get(c.vm);
    if (v && v.state === "migrating" && v.migrationId === c.migrationId) {
      // The source is authoritative: resume it wherever the migration left it.
      const status = await v.vm.status().catch(() => "gone");
      if (status === "postmigrate" || status === "paused" || status === "finish-migrate") await v.vm.cont();
      v.state = "running";
      delete v.migrationId;
      log.warn("rolled back: source resumed", { migrationId: c.migrationId, vm: c.vm, was: status, reason: c.reason });
      await publishInventory();
    }
  };

  /** The destination's prefetch of a migration's packs ends with its last VM there. */
  const targetDone = (migrationId: string) => {
    if (![...targets.values()].some((t) => t.migrationId === migrationId)) pageSource?.stopPrefetch(migrationId);
    if (targets.size === 0) {
      for (const h of prepSources) pageSource?.stopPrefetch(`prep-${h}`);
      pageSource?.clearCache(); // pages stay in the packs; the agent's memory must not grow forever
    }
  };

  // --- preparation phase: scan a VM's memory and preseed what the destination side lacks ---
  let prepResolver: KeyResolver | undefined;
  const knownByTenant = new Map<string, KeyTable>();
  const scan = async (c: Cmd<typeof scanRequested>) => {
    const v = owned.get(c.vm);
    if (!v || v.state !== "running" || v.scanning) return;
    v.scanning = true;
    try {
      const resolver = (prepResolver ??= createKeyResolver(o.nc, pub, { migrationId: `prep-${o.host}`, targetHost: o.host }));
      const known = knownByTenant.get(v.spec.tenant) ?? knownByTenant.set(v.spec.tenant, new KeyTable(65536)).get(v.spec.tenant)!;
      const pass = v.scan && !c.full ? v.scan.pass + 1 : 0;
      const r = await inSpan("scan memory", { "gangway.vm": c.vm, "gangway.host": o.host, "gangway.scan.pass": pass }, () => scanMemory({
        host: o.host, vm: c.vm, tenant: v.spec.tenant, ramPath: v.vm.ramPath, sizeBytes: v.spec.memoryMiB * 1024 * 1024, keyer: keyerFor(v.spec.tenant),
        resolver, publisher: pub, packs, pass, known, shouldStop: () => v.state !== "running", ...(v.scan && !c.full ? { previous: v.scan.table } : {}),
      }));
      v.scan = { table: r.table, pass };
      log.info("scanned", { vm: c.vm, pass, changed: r.changedPages, preseeded: r.pagesPreseeded, bytes: r.bytesSent });
    } finally {
      v.scanning = false;
    }
  };

  const releaseGang = (migrationId: string) => {
    const g = gangs.get(migrationId);
    if (g && --g.users <= 0) {
      g.resolver.close();
      gangs.delete(migrationId);
    }
  };

  // --- VMs an earlier agent left in the middle of something -------------------------
  /** Has the destination of this migration said it runs the VM (commit-resumed)? */
  const destinationRuns = async (migrationId: string, vm: string) => {
    for await (const e of readEvents(o.nc, { filter: commitResumed.subject({ migrationId }) })) {
      if (e.result.ok && e.result.event.mode === "structured" && (e.result.event.data as { vm?: string }).vm === vm) return true;
    }
    return false;
  };

  /**
   * Settles what an adopted VM was doing when its agent died. The outcome of a migration is
   * the commit function's: this agent only reports and then follows its commands.
   * - Leaving (source, "migrating"): QEMU's outgoing stream went with the old agent. If the
   *   destination already runs the VM, this copy is quit. Otherwise an abort is published:
   *   the commit function rolls back (its rollback command, repeated if it was decided
   *   before, resumes this copy) or, if it had committed, the destination resumes and the
   *   quit-source command follows. Until then the VM stays claimed by its migration.
   * - Incoming (destination never resumed): quit, and the migration aborted with the
   *   destination stopped. It is never resumed here.
   * - Resuming (pre-copy: the commit told it to resume; the old agent died around `cont`):
   *   resumed, and commit-resumed reported (the source quits then).
   * - Resuming in post-copy: its pages were still coming from a source whose stream is gone;
   *   kept as it is and reported, for the commit function (and the operator) to decide.
   */
  const settleAdopted = async (a: AdoptedVm) => {
    const name = a.vm.name;
    const { state, migrationId, postcopy } = a.record;
    if (!migrationId) return;
    if (state === "migrating") {
      if (await destinationRuns(migrationId, name)) {
        const v = owned.get(name);
        if (v?.vm !== a.vm || v.state !== "migrating") return;
        log.warn("adopted a source whose destination already runs it: quitting this copy", { migrationId, vm: name });
        owned.delete(name);
        await a.vm.quit();
        await publishInventory();
        return;
      }
      // A rollback or quit command queued while no agent ran may have settled it already.
      const v = owned.get(name);
      if (v?.vm !== a.vm || v.state !== "migrating" || v.migrationId !== migrationId) return;
      log.warn("adopted a VM in the middle of leaving: asking for a rollback", { migrationId, vm: name, status: a.status });
      return abort(migrationId, name, `the agent of ${o.host} restarted during the migration; the source VM survived it and still runs here`);
    }
    if (state === "incoming") {
      log.warn("adopted an incoming destination its agent left: quitting it, never resuming", { migrationId, vm: name, status: a.status });
      await a.vm.quit().catch(() => undefined);
      return abort(migrationId, name, `the agent of ${o.host} restarted while ${name} was arriving; its destination VM was stopped and never resumed`, true);
    }
    if (state === "resuming" && !postcopy) {
      if (a.status !== "running") await a.vm.cont();
      await a.vm.remember?.({ state: "running" });
      resumed.add(`${migrationId}/${name}`);
      log.warn("adopted a destination told to resume: resumed", { migrationId, vm: name, was: a.status });
      await pub.publish(commitResumed, { migrationId }, { migrationId, vm: name, targetHost: o.host }, { id: `${migrationId}-${name}-commit-resumed` });
      await publishInventory();
      return;
    }
    if (state === "resuming" && postcopy) {
      owned.set(name, { spec: a.vm.spec, vm: a.vm, state: a.status === "running" ? "running" : "paused" });
      await a.vm.remember?.({ state: a.status === "running" ? "running" : "paused" });
      await publishInventory();
      log.error("adopted a post-copy destination whose pages stopped coming with its agent: left as it is", { migrationId, vm: name, status: a.status });
      return abort(migrationId, name, `the agent of ${o.host} restarted in post-copy; the destination VM is ${a.status}`);
    }
  };

  /** A recorded VM whose QEMU died with no agent watching: say what that means for its migration. */
  const settleGone = async (g: GoneVm) => {
    const { state, migrationId } = g.record;
    if (!migrationId) return;
    // An incoming destination (killed by its lifeline): never resumed, so the source takes over.
    if (state === "incoming") await abort(migrationId, g.name, `the agent of ${o.host} died while ${g.name} was arriving; its destination VM died with it, never resumed`, true);
    else if (state === "resuming") await abort(migrationId, g.name, `the destination VM of ${g.name} on ${o.host} died around its resume, with no agent watching`);
    // A source that died while leaving: the destination may still complete; nothing to say.
  };

  const handlers: Record<string, (data: never) => Promise<void>> = {
    [agentVmStart.type]: vmStart,
    [agentVmStop.type]: vmStop,
    [agentStartSource.type]: startSource,
    [agentPrepareTarget.type]: prepareTarget,
    [agentResumeTarget.type]: resumeTarget,
    [agentQuitSource.type]: quitSource,
    [agentRollback.type]: rollback,
    [agentSwitchover.type]: switchover,
    [agentPageRequest.type]: pageRequest,
    [scanRequested.type]: scan,
  };

  const durable = `agent-${o.host}`;
  try {
    await jsm.consumers.info(EVENTS_STREAM, durable);
  } catch {
    await jsm.consumers.add(EVENTS_STREAM, { durable_name: durable, filter_subject: `gw.cmd.agent.${o.host}.>`, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New, ack_wait: 30_000_000_000 });
  }
  const consumer = await js.consumers.get(EVENTS_STREAM, durable);
  // Heartbeats every second: a pull left with a consumer leader that died (a cluster node)
  // is noticed after 2 s, not after two missed 15 s heartbeats (a rollback waited 30 s).
  const messages: ConsumerMessages = await consumer.consume({ max_messages: 64, idle_heartbeat: 1000 });
  const inFlight = new Set<Promise<void>>();
  const seen = new Set<string>();
  const loop = (async () => {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      // Commands start long work (a migration) whose failure is reported as an event, not
      // retried: accept each once, ack at once.
      m.ack();
      if (!d.ok) {
        log.warn("bad command", { subject: m.subject, reason: d.reason });
        continue;
      }
      if (seen.has(d.event.id)) continue;
      seen.add(d.event.id);
      const handler = handlers[d.event.type];
      if (!handler || d.event.mode !== "structured") continue;
      const span = tracer().startSpan(`process ${m.subject}`, { kind: SpanKind.CONSUMER, attributes: { "messaging.system": "nats", "messaging.operation.type": "process", "messaging.destination.name": m.subject, "messaging.message.id": d.event.id, "gangway.host": o.host } }, extractTraceContext(m.headers));
      const p = context.with(trace.setSpan(extractTraceContext(m.headers), span), () => handler(d.event.data as never))
        .catch((err: Error) => {
          span.recordException(err);
          log.error("command failed", { type: d.event.type, error: err });
        })
        .finally(() => span.end());
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
    }
  })();

  await publishInventory();
  log.info("agent up", { durable, adopted: found.adopted.length });
  for (const a of leftOver) void settleAdopted(a).catch((e: Error) => log.error("an adopted VM was not settled", { vm: a.vm.name, error: e }));
  for (const g of found.gone) void settleGone(g);

  return {
    host: o.host,
    async stop(opts: { keepVms?: boolean } = {}) {
      clearInterval(inventoryTimer);
      if (opts.keepVms) {
        // The VMs stay; their outgoing migrations cannot go on without this agent.
        await Promise.allSettled([...sources.values()].map(async (s) => {
          await s.cancel();
          await Promise.race([
            pub.publish(commitAbort, { migrationId: s.migrationId }, { migrationId: s.migrationId, vm: s.vm, reason: `the agent of ${o.host} stopped; the VM stays here`, reportedBy: `host ${o.host}`, destinationStopped: false }, { id: `abort-${s.migrationId}-${s.vm}-${o.host}` }),
            new Promise((r) => setTimeout(r, 3000)),
          ]);
        }));
        await syncRecords().catch(() => undefined);
      }
      for (const x of [...sources.values(), ...targets.values()]) x.end();
      messages.stop();
      await loop.catch(() => undefined);
      await Promise.allSettled([...inFlight]);
      await liveness.close();
      consoleSub.unsubscribe();
      manifestSub.unsubscribe();
      for (const g of gangs.values()) g.resolver.close();
      prepResolver?.close();
      await pageSource?.close();
      await Promise.allSettled([...targets.values()].map((t) => t.vm.quit()));
      await Promise.allSettled([...owned.values()].filter((v) => ![...targets.values()].some((t) => t.vm === v.vm)).map((v) => (opts.keepVms && v.vm.detach ? v.vm.detach() : v.vm.quit())));
    },
  };
}
