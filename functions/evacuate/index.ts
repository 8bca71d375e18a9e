/**
 * evacuate: empties a host. VMs that share the most pages go to the same destination as one
 * gang, so their common pages cross the link once (IRLM's placement by dedup affinity); each
 * group goes where it shares most with what already runs there, then to the host running the
 * fewest VMs, then where most memory is free. Gangs are issued within the evacuation's parallel limit (VMs migrating at once, after
 * KubeVirt's parallelOutboundMigrationsPerNode); as gangs finish, the next ones start. A VM
 * that fails is rolled back by commit and tried once more; what still fails is reported,
 * never lost. When nothing is left, the host is reported drained.
 */
import {
  hostDrained,
  hostEvacuate,
  hostEvacuateCancel,
  hostEvacuationProgress,
  migrationFailed,
  migrationRequested,
  migrationSucceeded,
} from "../../schemas/index.ts";
import { defineFunction, type FunctionContext, type FunctionDefinition } from "../../kit/index.ts";
import { inventoryKey, type HostInventory } from "../inventory/index.ts";
import { sampleKey } from "../scan/index.ts";

interface Gang {
  migrationId: string;
  vms: string[];
  to: string;
  attempt: number;
}

export interface Evacuation {
  evacuationId: string;
  host: string;
  requestedBy: string;
  reason?: string;
  limit: number;
  startedAt: string;
  queue: Gang[];
  inFlight: Gang[];
  moved: { vm: string; to: string; migrationId: string }[];
  failed: { vm: string; reason: string }[];
  cancelled: boolean;
  done: boolean;
}

const evacuationKey = (id: string) => `evacuation.${id}`;
const byMigrationKey = (migrationId: string) => `evacuation.migration.${migrationId}`;
const MAX_ATTEMPTS = 2;

/** Shared fraction of two key samples (of the smaller one). */
export function affinity(a: readonly string[], b: readonly string[]): number {
  if (!a.length || !b.length) return 0;
  const small = a.length <= b.length ? a : b;
  const large = new Set(a.length <= b.length ? b : a);
  let n = 0;
  for (const k of small) if (large.has(k)) n++;
  return n / small.length;
}

/** Groups VMs that share pages (greedy, around the VM with the most in common). */
export function groupByAffinity(vms: readonly string[], samples: ReadonlyMap<string, readonly string[]>, threshold = 0.3): string[][] {
  const left = [...vms];
  const groups: string[][] = [];
  while (left.length) {
    const seed = left.shift()!;
    const group = [seed];
    for (let i = 0; i < left.length; ) {
      const vm = left[i]!;
      if (affinity(samples.get(seed) ?? [], samples.get(vm) ?? []) >= threshold) {
        group.push(vm);
        left.splice(i, 1);
      } else i++;
    }
    groups.push(group);
  }
  return groups;
}

async function save(ctx: FunctionContext, e: Evacuation) {
  await ctx.state.put(evacuationKey(e.evacuationId), e);
}

function report(ctx: FunctionContext, e: Evacuation) {
  const remaining = [...e.queue, ...e.inFlight].flatMap((g) => g.vms);
  ctx.emit(hostEvacuationProgress, { host: e.host }, { host: e.host, evacuationId: e.evacuationId, remaining, moved: e.moved, failed: e.failed });
}

/** Starts queued gangs while the limit allows; reports drained when all is done. */
async function advance(ctx: FunctionContext, e: Evacuation) {
  while (!e.cancelled && e.queue.length) {
    const busy = e.inFlight.reduce((n, g) => n + g.vms.length, 0);
    const next = e.queue[0]!;
    if (busy > 0 && busy + next.vms.length > e.limit) break;
    e.queue.shift();
    e.inFlight.push(next);
    await ctx.state.put(byMigrationKey(next.migrationId), e.evacuationId);
    ctx.emit(migrationRequested, { migrationId: next.migrationId }, {
      migrationId: next.migrationId, vms: next.vms, sourceHost: e.host, targetHost: next.to, requestedBy: `evacuation ${e.evacuationId} (${e.requestedBy})`,
      ...(e.reason ? { reason: e.reason } : {}), evacuationId: e.evacuationId,
    });
  }
  // Progress first: a follower that stops at "drained" has seen the final tally.
  report(ctx, e);
  if (!e.done && e.inFlight.length === 0 && (e.queue.length === 0 || e.cancelled)) {
    e.done = true;
    if (e.failed.length === 0 && !e.cancelled) {
      ctx.emit(hostDrained, { host: e.host }, { host: e.host, evacuationId: e.evacuationId, moved: e.moved.length, durationMs: ctx.now().getTime() - Date.parse(e.startedAt) });
    }
  }
  await save(ctx, e);
}

const start = defineFunction({
  id: "evacuate",
  description: "plan a host's evacuation: group VMs by shared pages, place the groups, start the gangs",
  trigger: hostEvacuate,
  retry: { maxAttempts: 5, backoffMs: 500 },
  async handler(event, ctx) {
    const d = event.data;
    if (await ctx.state.get(evacuationKey(d.evacuationId))) return; // already under way
    const inv = await ctx.state.get<HostInventory>(inventoryKey(d.host));
    const e: Evacuation = {
      evacuationId: d.evacuationId, host: d.host, requestedBy: d.requestedBy, ...(d.reason ? { reason: d.reason } : {}),
      limit: Math.min(d.limits.parallelOutboundPerHost, d.limits.parallelMigrations), startedAt: event.time,
      queue: [], inFlight: [], moved: [], failed: [], cancelled: false, done: false,
    };
    const vms = (inv?.vms ?? []).filter((v) => v.state === "running" || v.state === "paused");
    const candidateNames = d.candidates ?? (await ctx.state.keys("inventory.")).map((k) => k.slice("inventory.".length)).filter((h) => h !== d.host);
    const candidates = (await Promise.all(candidateNames.map((h) => ctx.state.get<HostInventory>(inventoryKey(h))))).filter((c): c is HostInventory => c !== undefined);
    const samples = new Map<string, string[]>();
    for (const v of vms) samples.set(v.vm, (await ctx.state.get<string[]>(sampleKey(d.host, v.vm))) ?? []);
    const targetSamples = new Map<string, string[]>();
    for (const c of candidates) targetSamples.set(c.host, (await Promise.all(c.vms.map((v) => ctx.state.get<string[]>(sampleKey(c.host, v.vm))))).flatMap((s) => s ?? []));
    const free = new Map(candidates.map((c) => [c.host, c.memoryFreeBytes]));
    const count = new Map(candidates.map((c) => [c.host, c.vms.length]));
    const memory = new Map(vms.map((v) => [v.vm, v.memoryBytes]));

    let g = 0;
    for (const group of groupByAffinity(vms.map((v) => v.vm), samples)) {
      const need = group.reduce((n, vm) => n + memory.get(vm)!, 0);
      const groupSample = group.flatMap((vm) => samples.get(vm) ?? []);
      const fits = candidates.filter((c) => free.get(c.host)! >= need);
      if (!fits.length) {
        for (const vm of group) e.failed.push({ vm, reason: `no candidate host has ${need} bytes free for its group` });
        continue;
      }
      // Most shared pages first; then the host running fewest VMs; then the most free memory.
      fits.sort(
        (a, b) =>
          affinity(groupSample, targetSamples.get(b.host)!) - affinity(groupSample, targetSamples.get(a.host)!) ||
          count.get(a.host)! - count.get(b.host)! ||
          free.get(b.host)! - free.get(a.host)!,
      );
      const to = fits[0]!.host;
      free.set(to, free.get(to)! - need);
      count.set(to, count.get(to)! + group.length);
      targetSamples.get(to)!.push(...groupSample);
      // A group larger than the limit goes in several gangs to the same place: later gangs
      // find the group's common pages already there.
      for (let i = 0; i < group.length; i += e.limit) e.queue.push({ migrationId: `${d.evacuationId}-g${g++}`, vms: group.slice(i, i + e.limit), to, attempt: 1 });
    }
    ctx.log.info("evacuation planned", { evacuationId: d.evacuationId, gangs: e.queue.map((q) => `${q.vms.join("+")}→${q.to}`) });
    await advance(ctx, e);
  },
});

/** A gang of an evacuation ended: record, retry what failed once, start what waits. */
async function gangEnded(ctx: FunctionContext, migrationId: string, failedReason: string | undefined) {
  const evacuationId = await ctx.state.get<string>(byMigrationKey(migrationId));
  if (!evacuationId) return; // not an evacuation's gang
  const e = await ctx.state.get<Evacuation>(evacuationKey(evacuationId));
  if (!e) return;
  const gang = e.inFlight.find((g) => g.migrationId === migrationId);
  if (!gang) return; // a replay: already recorded
  e.inFlight = e.inFlight.filter((g) => g !== gang);
  const committed = new Set((await Promise.all(gang.vms.map(async (vm) => ((await ctx.state.get<{ outcome: string }>(`commit.${migrationId}.${vm}.decision`))?.outcome === "committed" ? vm : undefined)))).filter(Boolean));
  for (const vm of gang.vms) if (committed.has(vm)) e.moved.push({ vm, to: gang.to, migrationId });
  const failed = gang.vms.filter((vm) => !committed.has(vm));
  if (failed.length) {
    if (gang.attempt < MAX_ATTEMPTS && !e.cancelled) e.queue.push({ migrationId: `${migrationId}-r${gang.attempt}`, vms: failed, to: gang.to, attempt: gang.attempt + 1 });
    else for (const vm of failed) e.failed.push({ vm, reason: failedReason ?? "migration failed" });
  }
  await advance(ctx, e);
}

/**
 * One consumer for both outcomes (succeeded, failed), one event at a time, so two gangs that
 * end together never overwrite each other's update of the evacuation.
 */
const onOutcome = defineFunction({
  id: "evacuate-outcome",
  description: "an evacuation's gang ended: record it, retry failed VMs once, start the next gangs",
  trigger: migrationSucceeded,
  filter: "gw.migration.*.>",
  exclusive: true,
  retry: { maxAttempts: 5, backoffMs: 500 },
  async handler(event, ctx) {
    // The filter brings every migration fact; only the outcomes matter here.
    const type: string = event.type;
    if (type === migrationSucceeded.type) await gangEnded(ctx, event.data.migrationId, undefined);
    else if (type === migrationFailed.type) await gangEnded(ctx, event.data.migrationId, (event.data as unknown as { reason: string }).reason);
  },
});

const cancel = defineFunction({
  id: "evacuate-cancel",
  description: "stop an evacuation from starting more gangs (gangs under way finish or roll back)",
  trigger: hostEvacuateCancel,
  retry: { maxAttempts: 5, backoffMs: 500 },
  async handler(event, ctx) {
    const e = await ctx.state.get<Evacuation>(evacuationKey(event.data.evacuationId));
    if (!e || e.cancelled) return;
    e.cancelled = true;
    for (const g of e.queue) for (const vm of g.vms) e.failed.push({ vm, reason: `evacuation cancelled by ${event.data.requestedBy}` });
    e.queue = [];
    await advance(ctx, e);
  },
});

export const evacuateFunctions = [start, onOutcome, cancel] as unknown as FunctionDefinition[];
