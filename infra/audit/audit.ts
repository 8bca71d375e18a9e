/**
 * Audit of migrations from the retained stream and the pack store, from any process that
 * reaches NATS: `auditMigration` replays one migration (timeline + re-verification),
 * `listMigrations` lists the migrations that involved a host.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import type { migrationPlanned, migrationRequested } from "../../schemas/index.ts";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import type { PageKeyer } from "../../adapters/dataplane/contentKey.ts";
import { dataOf, readFacts, type Fact } from "./events.ts";
import { buildTimeline, MigrationOutcome, type MigrationTimeline } from "./timeline.ts";
import { verifyMigration, type AuditFailure, type PackReader, type Verification } from "./verify.ts";

export class MigrationNotFoundError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MigrationNotFoundError";
  }
}
export const isMigrationNotFound = (e: unknown): e is MigrationNotFoundError => e instanceof MigrationNotFoundError;

export interface AuditReport {
  migrationId: string;
  /** Everything re-verified and nothing undecodable on the migration's subjects. */
  verified: boolean;
  timeline: MigrationTimeline;
  verification: Verification;
  /** Every failure, each naming what (pack, VM, key). Empty when verified. */
  failures: AuditFailure[];
}

export interface AuditOptions {
  /** Where packs are read from. @default the gw-packs object store on `nc` */
  packs?: PackReader;
  /** @default createPageKeyer(tenant) */
  keyerFor?: (tenant: string) => PageKeyer;
  /** Packs fetched at once. @default 4 */
  concurrency?: number;
}

/** Replays one migration: its timeline, and a re-verification of its manifests, packs and digests. */
export async function auditMigration(nc: NatsConnection, migrationId: string, opts: AuditOptions = {}): Promise<AuditReport> {
  const [migration, manifest, commit, packs] = await Promise.all([
    readFacts(nc, `gw.migration.${migrationId}.>`),
    readFacts(nc, `gw.manifest.${migrationId}.>`),
    readFacts(nc, `gw.commit.${migrationId}.>`),
    readFacts(nc, "gw.pack.*.stored"),
  ]);
  if (migration.facts.length === 0 && manifest.facts.length === 0) throw new MigrationNotFoundError(`no event of migration ${migrationId} is retained`);
  const timeline = buildTimeline(migrationId, [...migration.facts, ...manifest.facts, ...commit.facts]);
  const verification = await verifyMigration(
    { migrationId, manifest: manifest.facts, packsStored: packs.facts, vms: timeline.vms },
    { packs: opts.packs ?? (await openPackStore(nc)), ...(opts.keyerFor ? { keyerFor: opts.keyerFor } : {}), ...(opts.concurrency ? { concurrency: opts.concurrency } : {}) },
  );
  const undecodable: AuditFailure[] = [...migration.undecodable, ...manifest.undecodable, ...commit.undecodable]
    .sort((a, b) => a.seq - b.seq)
    .map((u) => ({ kind: "event", seq: u.seq, subject: u.subject, reason: u.reason, message: `event #${u.seq} on ${u.subject} does not decode: ${u.reason}` }));
  const failures = [...verification.failures, ...undecodable];
  return { migrationId, verified: failures.length === 0, timeline, verification, failures };
}

export interface MigrationListing {
  migrationId: string;
  requestedAt?: string;
  requestedBy?: string;
  reason?: string;
  evacuationId?: string;
  sourceHost?: string;
  targetHost?: string;
  /** What the host was in this migration. */
  role: "source" | "target";
  vms: string[];
  outcome: MigrationOutcome;
  endedAt?: string;
  /** Why it failed or was cancelled. */
  failureReason?: string;
  committed: string[];
  rolledBack: string[];
}

/** Migrations that involved `host` (as the requested or planned source or target), oldest first. */
export async function listMigrations(nc: NatsConnection, o: { host: string; since?: Date }): Promise<MigrationListing[]> {
  const read = (kind: string) => readFacts(nc, `gw.migration.*.${kind}`, o.since ? { since: o.since } : {});
  const [requested, planned, succeeded, failed, cancelled, committed, rolledback] = await Promise.all(
    ["requested", "planned", "succeeded", "failed", "cancelled", "committed", "rolledback"].map(read),
  );
  const byId = new Map<string, MigrationListing>();
  const idOf = (f: Fact) => f.subject.split(".")[2]!;
  const entry = (id: string) => byId.get(id) ?? byId.set(id, { migrationId: id, role: "source", vms: [], outcome: MigrationOutcome.inFlight, committed: [], rolledBack: [] }).get(id)!;
  for (const f of requested!.facts) {
    const d = dataOf<z.infer<typeof migrationRequested.data>>(f);
    const e = entry(d.migrationId);
    Object.assign(e, {
      requestedAt: new Date(f.at).toISOString(), requestedBy: d.requestedBy, sourceHost: d.sourceHost, vms: d.vms,
      ...(d.reason ? { reason: d.reason } : {}), ...(d.evacuationId ? { evacuationId: d.evacuationId } : {}), ...(d.targetHost ? { targetHost: d.targetHost } : {}),
    });
  }
  for (const f of planned!.facts) {
    const d = dataOf<z.infer<typeof migrationPlanned.data>>(f);
    const e = entry(d.migrationId);
    e.sourceHost = d.sourceHost;
    e.targetHost = d.targetHost;
    if (e.vms.length === 0) e.vms = d.vms.map((v) => v.vm);
  }
  const involved = [...byId.values()].filter((e) => e.sourceHost === o.host || e.targetHost === o.host);
  for (const e of involved) e.role = e.sourceHost === o.host ? "source" : "target";
  const ids = new Set(involved.map((e) => e.migrationId));
  const end = (facts: Fact[], outcome: MigrationOutcome) => {
    for (const f of facts) {
      const id = idOf(f);
      if (!ids.has(id)) continue;
      const d = dataOf<{ vm?: string; reason?: string }>(f);
      if (outcome === MigrationOutcome.failed && d.vm) continue; // a VM's failure, not the gang's
      const e = byId.get(id)!;
      e.outcome = outcome;
      e.endedAt = new Date(f.at).toISOString();
      if (d.reason) e.failureReason = d.reason;
    }
  };
  end(succeeded!.facts, MigrationOutcome.succeeded);
  end(failed!.facts, MigrationOutcome.failed);
  end(cancelled!.facts, MigrationOutcome.cancelled);
  for (const [facts, list] of [[committed!.facts, "committed"], [rolledback!.facts, "rolledBack"]] as const) {
    for (const f of facts) {
      const id = idOf(f);
      if (!ids.has(id)) continue;
      const vm = dataOf<{ vm: string }>(f).vm;
      const l = byId.get(id)![list];
      if (!l.includes(vm)) l.push(vm);
    }
  }
  return involved.sort((a, b) => (a.requestedAt ?? "").localeCompare(b.requestedAt ?? ""));
}
