/**
 * dirty-log: reads each VM's pre-copy passes (dirty round: pages sent, dirty rate, transfer
 * rate, what QEMU still holds dirty) and decides the switch-over by the policy in
 * policy.ts. A decision is made once per VM and goes to the source host as a command; its
 * agent executes it on QEMU. Giving up is an abort, which the commit function rolls back.
 * force-complete (Nova's live-migration-force-complete) switches every VM over now.
 *
 * With parallelSwitchovers N, a gang's VMs stop for their last pass N at a time: their
 * downtimes share the hosts' CPU, so four VMs stopped at once each wait for all four proofs
 * and loads. A VM ready to stop while the slots are held goes on with pre-copy (it stays
 * converged) and is decided at its next pass; a slot is freed when its VM's outcome is known,
 * or after a lease, so that a lost outcome cannot hold the gang. Without it, no limit.
 */
import type { z } from "zod";
import { agentSwitchover, commitAbort, dirtyRound, migrationCommitted, migrationForceComplete, migrationRolledBack } from "../../schemas/index.ts";
import { defineFunction, RetryAfterError, type FunctionContext, type FunctionDefinition } from "../../kit/index.ts";
import { planKey, type Plan } from "../plan/index.ts";
import { decideSwitchover, type PassFigures } from "./policy.ts";

type Round = z.infer<typeof dirtyRound.data>;
interface DirtyLog {
  /** When pre-copy started (ms since epoch): the first pass's start. */
  startedAt: number;
  passes: PassFigures[];
}

const logKey = (m: string, vm: string) => `dirty.${m}.${vm}.log`;
const decisionKey = (m: string, vm: string) => `dirty.${m}.${vm}.decision`;
const slotKey = (m: string, i: number) => `dirty.${m}.slot.${i}`;
const GIB = 1024 ** 3;
/** A slot not freed by its VM's outcome within this long is taken over (the outcome was lost). */
export const SLOT_LEASE_MS = 60_000;

interface Slot {
  vm: string;
  /** When it was taken (ms since epoch). */
  since: number;
}

/**
 * Takes a switch-over slot for `vm` (or finds it holds one already): undefined when it may
 * stop now, else the VMs holding the slots.
 */
async function takeSlot(ctx: FunctionContext, plan: Plan, vm: string): Promise<string[] | undefined> {
  const slots = plan.options.parallelSwitchovers;
  if (slots === undefined) return undefined;
  const now = ctx.now().getTime();
  const held: (Slot | undefined)[] = [];
  for (let i = 0; i < slots; i++) held.push(await ctx.state.get<Slot>(slotKey(plan.migrationId, i)));
  if (held.some((h) => h?.vm === vm)) return undefined;
  for (let i = 0; i < slots; i++) {
    const key = slotKey(plan.migrationId, i);
    if (!held[i] && (await ctx.state.create(key, { vm, since: now }))) return undefined;
    const h = held[i] ?? (await ctx.state.get<Slot>(key));
    if (h && now - h.since > SLOT_LEASE_MS) {
      ctx.log.warn("switch-over slot taken over: its VM's outcome never came", { migrationId: plan.migrationId, vm, from: h.vm, heldMs: now - h.since });
      await ctx.state.put(key, { vm, since: now });
      return undefined;
    }
    if (h) held[i] = h;
  }
  return held.flatMap((h) => (h ? [h.vm] : []));
}

async function loadPlan(ctx: FunctionContext, migrationId: string): Promise<Plan> {
  const plan = await ctx.state.get<Plan>(planKey(migrationId));
  if (!plan) throw new RetryAfterError(`no plan recorded for migration ${migrationId} yet`, 500);
  return plan;
}

/** Sends the switch-over (or the abort) for one VM, once. */
async function execute(ctx: FunctionContext, plan: Plan, vm: string, action: "stop-and-copy" | "post-copy" | "abort", reason: string, byEvent: string): Promise<void> {
  const decided = { action, reason, byEvent, at: ctx.now().toISOString() };
  if (!(await ctx.state.create(decisionKey(plan.migrationId, vm), decided))) {
    // Only a retry of the event that decided sends again (same derived id: the stream drops the copy).
    const existing = await ctx.state.get<typeof decided>(decisionKey(plan.migrationId, vm));
    if (existing?.byEvent !== byEvent) return;
    Object.assign(decided, existing);
  }
  ctx.log.info("switch-over decided", { migrationId: plan.migrationId, vm, action, reason });
  if (action === "abort") {
    ctx.emit(commitAbort, { migrationId: plan.migrationId }, { migrationId: plan.migrationId, vm, reason, reportedBy: "dirty-log", destinationStopped: false });
  } else {
    ctx.emit(agentSwitchover, { host: plan.sourceHost }, { host: plan.sourceHost, migrationId: plan.migrationId, vm, mode: action, reason });
  }
}

const dirtyLog = defineFunction({
  id: "dirty-log",
  description: "record each VM's pre-copy passes and decide its switch-over (stop-and-copy, post-copy or abort)",
  trigger: dirtyRound,
  retry: { maxAttempts: 6, backoffMs: 250 },
  async handler(event, ctx) {
    const r: Round = event.data;
    const plan = await loadPlan(ctx, r.migrationId);
    const earlier = await ctx.state.get<{ byEvent: string }>(decisionKey(r.migrationId, r.vm));
    if (earlier && earlier.byEvent !== event.id) return; // decided: later passes are history
    const log = (await ctx.state.get<DirtyLog>(logKey(r.migrationId, r.vm))) ?? { startedAt: new Date(event.time).getTime() - r.durationMs, passes: [] };
    if (!log.passes.some((p) => p.round === r.round)) {
      log.passes.push({ round: r.round, pagesSent: r.pagesSent, remainingBytes: r.remainingBytes, expectedDowntimeMs: r.expectedDowntimeMs, transferRate: r.transferRate, dirtyRate: r.dirtyRate });
      log.passes.sort((a, b) => a.round - b.round);
      await ctx.state.put(logKey(r.migrationId, r.vm), log);
    }
    const vm = plan.vms.find((v) => v.vm === r.vm);
    const o = plan.options;
    const decision = decideSwitchover(log.passes, {
      maxDowntimeMs: o.maxDowntimeMs,
      postcopy: o.postcopy,
      maxRounds: o.maxRounds,
      timeBudgetMs: o.completionTimeoutPerGiB * 1000 * Math.max(1, (vm?.memoryBytes ?? GIB) / GIB),
    }, new Date(event.time).getTime() - log.startedAt);
    if (decision.action === "continue") return;
    if (decision.action === "stop-and-copy") {
      const holders = await takeSlot(ctx, plan, r.vm);
      if (holders) {
        ctx.log.info("switch-over waits for a slot", { migrationId: r.migrationId, vm: r.vm, round: r.round, switching: holders });
        return;
      }
    }
    await execute(ctx, plan, r.vm, decision.action, decision.reason, event.id);
  },
});

/** A VM's outcome frees the switch-over slot it held. */
async function freeSlot(ctx: FunctionContext, migrationId: string, vm: string): Promise<void> {
  const plan = await ctx.state.get<Plan>(planKey(migrationId));
  for (let i = 0; i < (plan?.options.parallelSwitchovers ?? 0); i++) {
    const key = slotKey(migrationId, i);
    if ((await ctx.state.get<Slot>(key))?.vm === vm) await ctx.state.delete(key);
  }
}

const slotOnCommit = defineFunction({
  id: "dirty-log-slot-committed",
  description: "free the switch-over slot of a VM that was committed",
  trigger: migrationCommitted,
  retry: { maxAttempts: 6, backoffMs: 250 },
  handler: (event, ctx) => freeSlot(ctx, event.data.migrationId, event.data.vm),
});

const slotOnRollback = defineFunction({
  id: "dirty-log-slot-rolledback",
  description: "free the switch-over slot of a VM that was rolled back",
  trigger: migrationRolledBack,
  retry: { maxAttempts: 6, backoffMs: 250 },
  handler: (event, ctx) => freeSlot(ctx, event.data.migrationId, event.data.vm),
});

const forceComplete = defineFunction({
  id: "dirty-log-force-complete",
  description: "switch every VM of a migration over now: as asked, else post-copy where allowed, else stop-and-copy",
  trigger: migrationForceComplete,
  retry: { maxAttempts: 6, backoffMs: 250 },
  async handler(event, ctx) {
    const plan = await loadPlan(ctx, event.data.migrationId);
    // Post-copy needs the capability set up front: asked for without it, it is stop-and-copy.
    const asked = event.data.mode ?? (plan.options.postcopy ? "post-copy" : "stop-and-copy");
    const mode = asked === "post-copy" && !plan.options.postcopy ? "stop-and-copy" : asked;
    const reason = `force-complete requested by ${event.data.requestedBy}${mode !== asked ? " (post-copy was not allowed for this migration)" : ""}`;
    for (const v of plan.vms) await execute(ctx, plan, v.vm, mode, reason, event.id);
  },
});

export const dirtyLogFunctions = [dirtyLog, forceComplete, slotOnCommit, slotOnRollback] as unknown as FunctionDefinition[];
