/**
 * commit: the source stays authoritative until the destination proves it holds every page.
 * The source says what it sent (manifest completed: the digest of the image its stream
 * implies); the destination says what it has (commit ready: the digest of the memory its
 * QEMU loaded, read back). Equal digests and counts → resume the destination, then quit the
 * source. Anything else, or an abort from any side before that → roll back: the destination
 * VM is killed and the source resumed. Each VM is decided once (a claim in state), so a
 * replayed event can never flip a decision. When every VM of the gang is decided, the gang's
 * outcome is published.
 */
import {
  agentQuitSource,
  agentResumeTarget,
  agentRollback,
  commitAbort,
  commitReady,
  commitResumed,
  manifestCompleted,
  migrationCancel,
  migrationCancelled,
  migrationCommitted,
  migrationFailed,
  migrationRolledBack,
  migrationSucceeded,
  MigrationPhase,
} from "../../schemas/index.ts";
import type { z } from "zod";
import { defineFunction, type FunctionContext, type FunctionDefinition } from "../types.ts";
import { NonRetriableError } from "../errors.ts";
import { planKey, type Plan } from "../plan/index.ts";

type Sent = z.infer<typeof manifestCompleted.data>;
type Ready = z.infer<typeof commitReady.data>;
type Decision = { outcome: "committed" | "rolledback"; reason?: string; at: string };

const sentKey = (m: string, vm: string) => `commit.${m}.${vm}.sent`;
const readyKey = (m: string, vm: string) => `commit.${m}.${vm}.ready`;
const decisionKey = (m: string, vm: string) => `commit.${m}.${vm}.decision`;
const outcomeKey = (m: string) => `migration.${m}.outcome`;
const resumedKey = (m: string, vm: string) => `commit.${m}.${vm}.resumed`;

/**
 * The migration's plan; without one nothing can be decided. Commit facts and aborts may be
 * retried while it is missing; a cancel or a resume for an unknown migration is dead-lettered.
 */
async function loadPlan(ctx: FunctionContext, migrationId: string, retriable: boolean): Promise<Plan> {
  const plan = await ctx.state.get<Plan>(planKey(migrationId));
  if (plan) return plan;
  const message = `no plan recorded for migration ${migrationId}`;
  throw retriable ? new Error(message) : new NonRetriableError(message);
}

/**
 * Rolls a VM back, once. A repeat (a retried event) re-sends the rollback: agents ignore what
 * they already did, and a decision is never recorded without its commands going out. A commit
 * decision is undone only when the destination guarantees its VM is stopped and has not
 * resumed; any other late abort leaves the committed VM as it is (never two copies running).
 */
async function rollback(ctx: FunctionContext, plan: Plan, vm: string, reason: string, destinationStopped = false): Promise<void> {
  const key = decisionKey(plan.migrationId, vm);
  const mine: Decision = { outcome: "rolledback", reason, at: ctx.now().toISOString() };
  if (!(await ctx.state.create<Decision>(key, mine))) {
    const existing = (await ctx.state.get<Decision>(key))!;
    if (existing.outcome === "committed") {
      if (!destinationStopped || (await ctx.state.get(resumedKey(plan.migrationId, vm)))) return;
      await ctx.state.put<Decision>(key, mine);
    } else reason = existing.reason ?? reason;
  }
  const p = { migrationId: plan.migrationId };
  ctx.emit(agentRollback, { host: plan.targetHost }, { host: plan.targetHost, migrationId: plan.migrationId, vm, reason });
  ctx.emit(agentRollback, { host: plan.sourceHost }, { host: plan.sourceHost, migrationId: plan.migrationId, vm, reason });
  ctx.emit(migrationRolledBack, p, { migrationId: plan.migrationId, vm, reason, phase: MigrationPhase.Failed, sourceRunning: true });
  ctx.log.warn("rolled back", { migrationId: plan.migrationId, vm, reason });
  await settleGang(ctx, plan);
}

/** Decides a VM once both sides have spoken. */
async function decide(ctx: FunctionContext, migrationId: string, vm: string): Promise<void> {
  const plan = await loadPlan(ctx, migrationId, true);
  const [sent, ready] = await Promise.all([ctx.state.get<Sent>(sentKey(migrationId, vm)), ctx.state.get<Ready>(readyKey(migrationId, vm))]);
  if (!sent || !ready) return; // the other side has not spoken yet
  if (ready.digest !== sent.digest || ready.pagesDelivered !== ready.pagesExpected) {
    return rollback(ctx, plan, vm, `destination memory does not match what the source sent (digest ${ready.digest.slice(0, 16)}… vs ${sent.digest.slice(0, 16)}…, ${ready.pagesDelivered}/${ready.pagesExpected} pages)`);
  }
  if (!(await ctx.state.create<Decision>(decisionKey(migrationId, vm), { outcome: "committed", at: ctx.now().toISOString() }))) {
    // Decided before (a retry, or the other side's event): re-send what a commit means.
    const existing = await ctx.state.get<Decision>(decisionKey(migrationId, vm));
    if (existing?.outcome === "committed") ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId, vm });
    return settleGang(ctx, plan);
  }
  const p = { migrationId };
  // Destination first; the source quits only once the destination says it runs (commit-resumed).
  ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId, vm });
  ctx.emit(migrationCommitted, p, {
    migrationId,
    vm,
    targetHost: plan.targetHost,
    pages: ready.pagesDelivered,
    digest: ready.digest,
    stats: { time_elapsed: 0, data_processed: 0, memory_iteration: sent.rounds, ...(ready.downtimeMs !== undefined ? { downtime: ready.downtimeMs } : {}) },
  });
  await settleGang(ctx, plan);
}

/** Once every VM of the gang is decided, say how the gang ended (once). */
async function settleGang(ctx: FunctionContext, plan: Plan): Promise<void> {
  const decisions = await Promise.all(plan.vms.map((v) => ctx.state.get<Decision>(decisionKey(plan.migrationId, v.vm))));
  if (decisions.some((d) => d === undefined)) return;
  const failed = plan.vms.filter((_, i) => decisions[i]!.outcome === "rolledback");
  if (!(await ctx.state.create(outcomeKey(plan.migrationId), { failed: failed.map((v) => v.vm), at: ctx.now().toISOString() }))) return;
  const p = { migrationId: plan.migrationId };
  if (failed.length === 0) {
    ctx.emit(migrationSucceeded, p, { migrationId: plan.migrationId, vms: plan.vms.map((v) => v.vm), stats: { time_elapsed: 0, data_processed: 0 } });
  } else {
    const reasons = failed.map((v) => `${v.vm}: ${decisions[plan.vms.indexOf(v)]!.reason ?? "rolled back"}`).join("; ");
    ctx.emit(migrationFailed, p, { migrationId: plan.migrationId, reason: `${failed.length} of ${plan.vms.length} VMs rolled back (${reasons})`.slice(0, 2000), phase: MigrationPhase.Failed });
  }
}

const commitSent = defineFunction({
  id: "commit-sent",
  description: "record what the source sent, then decide the VM if the destination has spoken",
  trigger: manifestCompleted,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    await ctx.state.put<Sent>(sentKey(d.migrationId, d.vm), d);
    await decide(ctx, d.migrationId, d.vm);
  },
});

const commitOnReady = defineFunction({
  id: "commit-ready",
  description: "record what the destination holds, then decide the VM if the source has spoken",
  trigger: commitReady,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    await ctx.state.put<Ready>(readyKey(d.migrationId, d.vm), d);
    await decide(ctx, d.migrationId, d.vm);
  },
});

const commitOnAbort = defineFunction({
  id: "commit-abort",
  description: "roll a VM back when any side reports a failure before commit",
  trigger: commitAbort,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await loadPlan(ctx, d.migrationId, true);
    await rollback(ctx, plan, d.vm, `${d.reportedBy}: ${d.reason}`, d.destinationStopped);
  },
});

/** The destination runs the VM: only now may the source quit. */
const commitOnResumed = defineFunction({
  id: "commit-resumed",
  description: "quit the source once the destination runs the VM",
  trigger: commitResumed,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await loadPlan(ctx, d.migrationId, false);
    await ctx.state.put(resumedKey(d.migrationId, d.vm), true);
    ctx.emit(agentQuitSource, { host: plan.sourceHost }, { host: plan.sourceHost, migrationId: d.migrationId, vm: d.vm });
  },
});

/** Cancel (like virsh domjobabort): every VM not yet decided is rolled back, in any phase. */
const commitOnCancel = defineFunction({
  id: "commit-cancel",
  description: "cancel a migration: roll back every VM that is not committed yet",
  trigger: migrationCancel,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await loadPlan(ctx, d.migrationId, false);
    const before = await Promise.all(plan.vms.map((v) => ctx.state.get<Decision>(decisionKey(d.migrationId, v.vm))));
    for (const v of plan.vms) await rollback(ctx, plan, v.vm, `cancelled by ${d.requestedBy}: ${d.reason}`);
    // Said once, and only if it changed something (a cancel after completion is a no-op).
    if (before.some((b) => b === undefined) && (await ctx.state.create(`migration.${d.migrationId}.cancelled`, true))) {
      ctx.emit(migrationCancelled, { migrationId: d.migrationId }, { migrationId: d.migrationId, reason: d.reason, requestedBy: d.requestedBy });
    }
  },
});

export const commitFunctions = [commitSent, commitOnReady, commitOnAbort, commitOnCancel, commitOnResumed] as unknown as FunctionDefinition[];
