/**
 * commit: the source stays authoritative until the destination proves it holds the source's
 * memory. The source says what it sent (manifest completed: the digest of the image its
 * stream implies) and, once its guest stopped, what its RAM holds (manifest verified: the
 * RAM's digest, the digest of everything sent with the repair pass, the device state's); the
 * destination says what its QEMU loaded, read back after the repairs (commit ready). Three
 * equal digests, the same device state and every page (proof.ts) → resume the destination,
 * then quit the source. Anything else, or an abort from any side before that → roll back: the
 * destination VM is killed and the source resumed. Each VM is decided once (a claim in
 * state), so a replayed event can never flip a decision. When every VM of the gang is
 * decided, the gang's outcome is published.
 *
 * Post-copy moves the point of no return: once the destination loaded the device state
 * (commit postcopy-ready) it is resumed while its remaining pages are faulted in, and the
 * source, paused, only serves pages. The VM is decided then; the source quits when the
 * destination reports every page in with the digest of the image it got (commit resumed).
 * If post-copy breaks off before that, the VM is lost: that is reported, never rolled back
 * onto a source whose guest is older than the one that ran.
 */
import {
  agentQuitSource,
  agentResumeTarget,
  agentRollback,
  commitAbort,
  commitPostcopyReady,
  commitReady,
  commitResumed,
  manifestCompleted,
  manifestVerified,
  migrationCancel,
  migrationCancelled,
  migrationCommitted,
  migrationFailed,
  migrationRolledBack,
  migrationSucceeded,
  MigrationMode,
  MigrationPhase,
} from "../../schemas/index.ts";
import { defineFunction, NonRetriableError, RetryAfterError, type FunctionContext, type FunctionDefinition } from "../../kit/index.ts";
import { planKey, type Plan } from "../plan/index.ts";

import { recordOnce, refuse, reportedBy, short, type Ready, type Sent, type Verified } from "./proof.ts";
/** lost: post-copy broke off after the destination ran; neither copy is whole. */
type Decision = { outcome: "committed" | "rolledback" | "lost"; mode?: "post-copy"; reason?: string; at: string };

const sentKey = (m: string, vm: string) => `commit.${m}.${vm}.sent`;
const readyKey = (m: string, vm: string) => `commit.${m}.${vm}.ready`;
const verifiedKey = (m: string, vm: string) => `commit.${m}.${vm}.verified`;
/** When each side spoke (its event's time): the first account counts, as for the facts. */
const spokenKey = (m: string, vm: string, side: "sent" | "verified" | "ready") => `commit.${m}.${vm}.spoken.${side}`;
const decisionKey = (m: string, vm: string) => `commit.${m}.${vm}.decision`;
const outcomeKey = (m: string) => `migration.${m}.outcome`;
const resumedKey = (m: string, vm: string) => `commit.${m}.${vm}.resumed`;
const deliveredKey = (m: string, vm: string) => `commit.${m}.${vm}.postcopy-delivered`;

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
    if (existing.outcome === "lost") return;
    if (existing.outcome === "committed") {
      const done = await ctx.state.get(resumedKey(plan.migrationId, vm));
      if (existing.mode === "post-copy" && !done && !destinationStopped) return lose(ctx, plan, vm, reason);
      if (!destinationStopped || done) return;
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

/** Post-copy broke off after the destination ran: say so, once; both copies stay paused for the operator. */
async function lose(ctx: FunctionContext, plan: Plan, vm: string, reason: string): Promise<void> {
  await ctx.state.put<Decision>(decisionKey(plan.migrationId, vm), { outcome: "lost", mode: "post-copy", reason, at: ctx.now().toISOString() });
  if (await ctx.state.create(`commit.${plan.migrationId}.${vm}.lost`, true)) {
    ctx.emit(migrationFailed, { migrationId: plan.migrationId }, { migrationId: plan.migrationId, vm, reason: `post-copy broke off after the destination resumed: ${reason}`.slice(0, 2000), phase: MigrationPhase.Failed });
    ctx.log.error("VM lost in post-copy", { migrationId: plan.migrationId, vm, reason });
  }
  await settleGang(ctx, plan);
}

/** Decides a VM once both sides have spoken. */
async function decide(ctx: FunctionContext, migrationId: string, vm: string): Promise<void> {
  const plan = await loadPlan(ctx, migrationId, true);
  const [sent, verified, ready] = await Promise.all([
    ctx.state.get<Sent>(sentKey(migrationId, vm)), ctx.state.get<Verified>(verifiedKey(migrationId, vm)), ctx.state.get<Ready>(readyKey(migrationId, vm)),
  ]);
  if (!sent || !verified || !ready) return; // a side has not spoken yet
  const refusal = refuse(sent, verified, ready);
  if (refusal) return rollback(ctx, plan, vm, refusal);
  if (!(await ctx.state.create<Decision>(decisionKey(migrationId, vm), { outcome: "committed", at: ctx.now().toISOString() }))) {
    // Decided before (a retry, or the other side's event): re-send what a commit means.
    const existing = await ctx.state.get<Decision>(decisionKey(migrationId, vm));
    if (existing?.outcome === "committed") ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId, vm });
    return settleGang(ctx, plan);
  }
  const p = { migrationId };
  const [sentAt, verifiedAt, readyAt] = await Promise.all((["sent", "verified", "ready"] as const).map((side) => ctx.state.get<string>(spokenKey(migrationId, vm, side))));
  // Destination first; the source quits only once the destination says it runs (commit-resumed).
  ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId, vm });
  ctx.emit(migrationCommitted, p, {
    migrationId,
    vm,
    targetHost: plan.targetHost,
    pages: ready.pagesDelivered,
    digest: ready.digest,
    proof: {
      source_ram_digest: verified.sourceramdigest, sent_digest: verified.sentdigest, destination_digest: ready.digest, pages_repaired: ready.pagesRepaired,
      device_state_digest: verified.devicestatedigest, source_read_ms: Number(verified.readms),
      ...(ready.readMs !== undefined ? { destination_read_ms: ready.readMs } : {}),
    },
    ...(sentAt && verifiedAt && readyAt ? { spoken: { sent: sentAt, verified: verifiedAt, ready: readyAt } } : {}),
    stats: { time_elapsed: 0, data_processed: 0, memory_iteration: sent.rounds, ...(ready.downtimeMs !== undefined ? { downtime: ready.downtimeMs } : {}) },
  });
  await settleGang(ctx, plan);
}

/**
 * Post-copy: the destination ran before the source's RAM could be read, so nothing can be
 * repaired; an image that differs from the source's RAM is said (the VM is lost), never hidden.
 */
async function checkPostcopy(ctx: FunctionContext, migrationId: string, vm: string): Promise<void> {
  const [delivered, verified] = await Promise.all([ctx.state.get<string>(deliveredKey(migrationId, vm)), ctx.state.get<Verified>(verifiedKey(migrationId, vm))]);
  if (!delivered || !verified || delivered === verified.sourceramdigest) return;
  const plan = await loadPlan(ctx, migrationId, true);
  await lose(ctx, plan, vm, `the image delivered in post-copy differs from the source's RAM (digest ${short(delivered)} vs ${short(verified.sourceramdigest)}; ${verified.differing} pages of the source's RAM differ from what it sent, first ${verified.firstdiffering ?? "unknown"})`);
}

/** Once every VM of the gang is decided, say how the gang ended (once). */
async function settleGang(ctx: FunctionContext, plan: Plan): Promise<void> {
  const decisions = await Promise.all(plan.vms.map((v) => ctx.state.get<Decision>(decisionKey(plan.migrationId, v.vm))));
  if (decisions.some((d) => d === undefined)) return;
  // A post-copy VM is done once every page arrived, not when it resumed.
  // A post-copy VM is checked against its source's RAM too before the gang is settled.
  for (const [i, d] of decisions.entries()) {
    if (d!.outcome !== "committed" || d!.mode !== "post-copy") continue;
    const vm = plan.vms[i]!.vm;
    if (!(await ctx.state.get(resumedKey(plan.migrationId, vm))) || !(await ctx.state.get(verifiedKey(plan.migrationId, vm)))) return;
  }
  const failed = plan.vms.filter((_, i) => decisions[i]!.outcome !== "committed");
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
    reportedBy(await loadPlan(ctx, d.migrationId, true), d.vm, event.source, "source");
    await recordOnce(ctx, sentKey(d.migrationId, d.vm), d, "the source's account of what it sent");
    await ctx.state.create(spokenKey(d.migrationId, d.vm, "sent"), event.time);
    await decide(ctx, d.migrationId, d.vm);
  },
});

const commitVerified = defineFunction({
  id: "commit-verified",
  description: "record the source's proof against its RAM, then decide the VM if the destination has spoken",
  trigger: manifestVerified,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const ext = event.ext;
    reportedBy(await loadPlan(ctx, ext.migrationId, true), ext.vm, event.source, "source");
    await recordOnce(ctx, verifiedKey(ext.migrationId, ext.vm), ext, "the source's proof against its RAM");
    await ctx.state.create(spokenKey(ext.migrationId, ext.vm, "verified"), event.time);
    const decision = await ctx.state.get<Decision>(decisionKey(ext.migrationId, ext.vm));
    if (decision?.mode !== "post-copy") return decide(ctx, ext.migrationId, ext.vm);
    await checkPostcopy(ctx, ext.migrationId, ext.vm);
    await settleGang(ctx, await loadPlan(ctx, ext.migrationId, true));
  },
});

const commitOnReady = defineFunction({
  id: "commit-ready",
  description: "record what the destination holds, then decide the VM if the source has spoken",
  trigger: commitReady,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    reportedBy(await loadPlan(ctx, d.migrationId, true), d.vm, event.source, "target");
    await recordOnce(ctx, readyKey(d.migrationId, d.vm), d, "the destination's proof");
    await ctx.state.create(spokenKey(d.migrationId, d.vm, "ready"), event.time);
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
  description: "quit the source once the destination runs the VM (post-copy: once it has every page)",
  trigger: commitResumed,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await loadPlan(ctx, d.migrationId, false);
    reportedBy(plan, d.vm, event.source, "target");
    if (d.postcopy) {
      const sent = await ctx.state.get<Sent>(sentKey(d.migrationId, d.vm));
      if (!sent) throw new RetryAfterError("waiting for the source's account of what it sent", 500);
      if (sent.digest !== d.postcopy.digest) {
        return lose(ctx, plan, d.vm, `the image delivered in post-copy differs from the source's (digest ${d.postcopy.digest.slice(0, 16)}… vs ${sent.digest.slice(0, 16)}…)`);
      }
    }
    if (d.postcopy) await ctx.state.put(deliveredKey(d.migrationId, d.vm), d.postcopy.digest);
    await ctx.state.put(resumedKey(d.migrationId, d.vm), true);
    ctx.emit(agentQuitSource, { host: plan.sourceHost }, { host: plan.sourceHost, migrationId: d.migrationId, vm: d.vm });
    if (d.postcopy) {
      await checkPostcopy(ctx, d.migrationId, d.vm);
      await settleGang(ctx, plan);
    }
  },
});

/** Post-copy: the destination has the devices; resuming it is the commit. */
const commitOnPostcopyReady = defineFunction({
  id: "commit-postcopy-ready",
  description: "commit a VM switched to post-copy: resume the destination while its pages follow",
  trigger: commitPostcopyReady,
  retry: { maxAttempts: 8, backoffMs: 250 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await loadPlan(ctx, d.migrationId, true);
    reportedBy(plan, d.vm, event.source, "target");
    const key = decisionKey(d.migrationId, d.vm);
    if (!(await ctx.state.create<Decision>(key, { outcome: "committed", mode: "post-copy", at: ctx.now().toISOString() }))) {
      const existing = (await ctx.state.get<Decision>(key))!;
      if (existing.outcome === "committed") ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId: d.migrationId, vm: d.vm });
      // Rolled back first (a cancel, a failure): its commands go out again.
      else if (existing.outcome === "rolledback") await rollback(ctx, plan, d.vm, existing.reason ?? "rolled back");
      return;
    }
    ctx.emit(agentResumeTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId: d.migrationId, vm: d.vm });
    ctx.emit(migrationCommitted, { migrationId: d.migrationId }, {
      migrationId: d.migrationId, vm: d.vm, targetHost: plan.targetHost, pages: 0, mode: MigrationMode.PostCopy, stats: { time_elapsed: 0, data_processed: 0 },
    });
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
    // A committed VM stays where it is (post-copy cannot be taken back once the destination ran).
    for (const [i, v] of plan.vms.entries()) if (before[i]?.outcome !== "committed") await rollback(ctx, plan, v.vm, `cancelled by ${d.requestedBy}: ${d.reason}`);
    // Said once, and only if it changed something (a cancel after completion is a no-op).
    if (before.some((b) => b === undefined) && (await ctx.state.create(`migration.${d.migrationId}.cancelled`, true))) {
      ctx.emit(migrationCancelled, { migrationId: d.migrationId }, { migrationId: d.migrationId, reason: d.reason, requestedBy: d.requestedBy });
    }
  },
});

export const commitFunctions = [commitSent, commitVerified, commitOnReady, commitOnAbort, commitOnCancel, commitOnResumed, commitOnPostcopyReady] as unknown as FunctionDefinition[];
