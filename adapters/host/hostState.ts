/**
 * What a host agent holds: the resources it acts with (connection, publisher, pack store,
 * QEMU driver, keyers, liveness) and what it runs and is in the middle of (its VMs, the
 * migrations it is source or destination of, the gangs leaving it, its scans). Every action
 * gets it as its first argument; nothing else of the agent is shared between them.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { VmSpec } from "../../schemas/index.ts";
import { KeyTable } from "../../kit/keyTable.ts";
import type { EventPublisher } from "../../infra/events/publisher.ts";
import type { Logger } from "../../infra/log.ts";
import { createPageKeyer, type PageKeyer } from "../dataplane/contentKey.ts";
import type { PackStore } from "../dataplane/packStore.ts";
import { startRamChecker, type RamChecker } from "../dataplane/ramCheck.ts";
import type { HostLiveness } from "./hostLiveness.ts";
import { createKeyResolver, type KeyResolver } from "./keyResolver.ts";
import type { PageSource } from "./packLocator.ts";
import type { ScanContent } from "./scanContent.ts";
import type { OutgoingStream, QemuDriver, RunningVm } from "./qemuDriver.ts";
import type { TargetState } from "./targetMigration.ts";

export interface OwnedVm {
  spec: VmSpec;
  vm: RunningVm;
  state: "running" | "paused" | "migrating" | "incoming";
  /** The migration this VM is leaving in, while it is migrating. */
  migrationId?: string;
  /** The last scan's page table and pass number (preparation phase). */
  scan?: { table: Uint8Array; pass: number };
  scanning?: boolean;
}

/** A promise and the function that resolves it. */
export interface Latch {
  promise: Promise<void>;
  open(): void;
}

export function latch(): Latch {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

export interface SourceSession {
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

export interface TargetSession {
  migrationId: string;
  vm: RunningVm;
  spec: VmSpec;
  ended: Promise<void>;
  end(): void;
  /** Post-copy, once PACKAGED went to QEMU: resumed before all pages are here. */
  postcopy?: { resumed: Latch; isResumed: boolean };
  /** What the rebuild got so far (the source asks how far, before it switches over). */
  state: TargetState;
  /** What the destination waits on once the stream is written (before, the rebuild says). */
  waitingFor?: string;
}

/** What the VMs of one gang leaving this host share. */
export interface GangContext {
  resolver: KeyResolver;
  /** Keys the gang already resolved, with their KeyStatus. */
  gangKeys: KeyTable;
  users: number;
  /** VMs of the gang whose guest stopped for the switch-over and that are not decided yet. */
  stopped: Set<string>;
}

/** What this host runs and is in the middle of. Sessions are keyed by `sessionKey`. */
export interface HostSessions {
  /** The VMs this host runs (a destination once it resumed), by name. */
  owned: Map<string, OwnedVm>;
  /** Outgoing migrations of this host's VMs. */
  sources: Map<string, SourceSession>;
  /** Incoming migrations whose QEMU runs here. */
  targets: Map<string, TargetSession>;
  /** Destinations whose QEMU is still starting (a rollback marks them, and they are quit). */
  preparing: Map<string, { rolledBack: boolean }>;
  /** Gangs leaving this host, by migration. */
  gangs: Map<string, GangContext>;
  /** The source hosts whose preparation packs destinations here prefetched. */
  prepSources: Set<string>;
  /** Destinations resumed here: a repeated resume command is already done. */
  resumed: Set<string>;
  /** Preparation-phase scans: one resolver for the host, the keys each tenant's scans met. */
  preparation: { resolver?: KeyResolver; knownByTenant: Map<string, KeyTable> };
}

export interface HostState extends HostSessions {
  readonly host: string;
  readonly nc: NatsConnection;
  readonly driver: QemuDriver;
  readonly log: Logger;
  readonly publisher: EventPublisher;
  readonly packs: PackStore;
  readonly liveness: HostLiveness;
  /** One status ping's time-out, for asking whether a peer is back. */
  readonly pingTimeoutMs: number;
  /** The tenant's page keyer (one per tenant, made on first use). */
  keyerFor(tenant: string): PageKeyer;
  /** Where a destination here gets its pages (opened on first use). */
  pages(): Promise<PageSource>;
  /** The page source, if it was opened. */
  openedPages(): PageSource | undefined;
  /** What each VM holds as its host's scans last saw it (followed from first use). */
  scanContent(): Promise<ScanContent>;
  /** The scan content, if it was opened. */
  openedScanContent(): ScanContent | undefined;
  /**
   * Workers for the proofs' RAM reads, started on first use (a migration's start: not in a
   * downtime); undefined where proofs read on the main thread (proofThreads 0).
   */
  ramChecker(): RamChecker | undefined;
  /** Stops the workers, if they were started. */
  closeRamChecker(): Promise<void>;
}

export const sessionKey = (migrationId: string, vm: string) => `${migrationId}/${vm}`;

export function emptySessions(): HostSessions {
  return { owned: new Map(), sources: new Map(), targets: new Map(), preparing: new Map(), gangs: new Map(), prepSources: new Set(), resumed: new Set(), preparation: { knownByTenant: new Map() } };
}

export function createHostState(o: {
  sessions: HostSessions;
  host: string;
  nc: NatsConnection;
  driver: QemuDriver;
  log: Logger;
  publisher: EventPublisher;
  packs: PackStore;
  liveness: HostLiveness;
  pingTimeoutMs: number;
  openPages(): Promise<PageSource>;
  openScanContent(): Promise<ScanContent>;
  /** Worker threads for the proofs' RAM reads; 0: on the main thread. */
  proofThreads: number;
}): HostState {
  const keyers = new Map<string, PageKeyer>();
  let checker: RamChecker | undefined;
  const { sessions, openPages, openScanContent, proofThreads, ...resources } = o;
  const pages = openedOnce(openPages);
  const content = openedOnce(openScanContent);
  return {
    ...sessions,
    ...resources,
    keyerFor: (tenant) => keyers.get(tenant) ?? keyers.set(tenant, createPageKeyer(tenant)).get(tenant)!,
    pages: pages.get,
    openedPages: pages.opened,
    scanContent: content.get,
    openedScanContent: content.opened,
    ramChecker: () => (proofThreads > 0 ? (checker ??= startRamChecker(proofThreads)) : undefined),
    closeRamChecker: async () => checker?.close(),
  };
}

/**
 * A resource opened on first use. The promise is kept, not its result: prepare-target commands
 * of a gang arriving together would otherwise each open one, and all but the last would never
 * be closed. A failed open is tried again by the next use.
 */
function openedOnce<T>(open: () => Promise<T>): { get(): Promise<T>; opened(): T | undefined } {
  let opening: Promise<T> | undefined;
  let value: T | undefined;
  return {
    get: () => (opening ??= open().then((v) => (value = v), (err: unknown) => {
      opening = undefined;
      throw err;
    })),
    opened: () => value,
  };
}

/** The gang of this migration leaving this host, joined (opened by its first VM). */
export function joinGang(state: HostState, migrationId: string, targetHost: string): GangContext {
  let gang = state.gangs.get(migrationId);
  if (!gang) state.gangs.set(migrationId, (gang = { resolver: createKeyResolver(state.nc, state.publisher, { migrationId, targetHost }), gangKeys: new KeyTable(65536), users: 0, stopped: new Set() }));
  gang.users++;
  return gang;
}

/** A VM of the gang is decided here: the gang closes with its last. */
export function releaseGang(state: HostState, migrationId: string): void {
  const g = state.gangs.get(migrationId);
  if (g && --g.users <= 0) {
    g.resolver.close();
    state.gangs.delete(migrationId);
  }
}

/**
 * A destination session here is over (resumed, or rolled back). The prefetch of a
 * migration's packs ends with its last VM here.
 */
export function endTarget(state: HostState, t: TargetSession): void {
  state.targets.delete(sessionKey(t.migrationId, t.spec.name));
  t.end();
  const pages = state.openedPages();
  if (![...state.targets.values()].some((x) => x.migrationId === t.migrationId)) pages?.stopPrefetch(t.migrationId);
  if (state.targets.size === 0) {
    for (const h of state.prepSources) pages?.stopPrefetch(`prep-${h}`);
    pages?.clearCache(); // pages stay in the packs; the agent's memory must not grow forever
  }
}
