/**
 * dirty-log: reads each VM's pre-copy passes (dirty round: pages sent, dirty rate, transfer
 * rate, what QEMU still holds dirty) and decides the switch-over by the policy in
 * policy.ts. A decision is made once per VM and goes to the source host as a command; its
 * agent executes it on QEMU. Giving up is an abort, which the commit function rolls back.
 * force-complete (Nova's live-migration-force-complete) switches every VM over now.
 */
import type { z } from "zod";
import { agentSwitchover, commitAbort, dirtyRound, migrationForceComplete } from "../../schemas/index.ts";
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
const GIB = 1024 ** 3;

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
    await execute(ctx, plan, r.vm, decision.action, decision.reason, event.id);
  },
});

const forceComplete = defineFunction({
  id: "dirty-log-force-complete",
  description: "switch every VM of a migration over now: post-copy where allowed, else stop-and-copy",
  trigger: migrationForceComplete,
  retry: { maxAttempts: 6, backoffMs: 250 },
  async handler(event, ctx) {
    const plan = await loadPlan(ctx, event.data.migrationId);
    const mode = plan.options.postcopy ? "post-copy" : "stop-and-copy";
    for (const v of plan.vms) {
      await execute(ctx, plan, v.vm, mode, `force-complete requested by ${event.data.requestedBy}`, event.id);
    }
  },
});

export const dirtyLogFunctions = [dirtyLog, forceComplete] as unknown as FunctionDefinition[];
