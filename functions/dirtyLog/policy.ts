/**
 * The switch-over policy, as a pure function of a VM's dirty log (paper 003, §3): pre-copy
 * goes on while each pass leaves less to send; it stops and copies when what remains fits
 * the downtime limit; when passes stop shrinking, or the round or time budget is spent, it
 * switches to post-copy if the migration allows it, and otherwise gives up (KubeVirt's
 * completion time-out) rather than run for hours.
 */

/** One pre-copy pass of one VM, as the dirty log recorded it. */
export interface PassFigures {
  round: number;
  pagesSent: number;
  remainingBytes: number;
  expectedDowntimeMs: number;
  /** Bytes per second the pipeline took in during the pass. */
  transferRate: number;
  /** Pages per second the guest dirtied. */
  dirtyRate: number;
}

export interface SwitchoverLimits {
  maxDowntimeMs: number;
  postcopy: boolean;
  maxRounds: number;
  /** Pre-copy time budget (completionTimeoutPerGiB × the VM's GiB). */
  timeBudgetMs: number;
}

export type SwitchoverDecision =
  | { action: "continue" }
  | { action: "stop-and-copy" | "post-copy" | "abort"; reason: string };

/** A pass that sends at least this share of the one before has not shrunk. */
export const NOT_SHRINKING = 0.9;
/** Passes in a row that must fail to shrink before pre-copy is called stuck. */
export const STUCK_PASSES = 2;

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

export function decideSwitchover(passes: readonly PassFigures[], limits: SwitchoverLimits, elapsedMs: number): SwitchoverDecision {
  const last = passes[passes.length - 1];
  if (!last) return { action: "continue" };
  if (last.expectedDowntimeMs <= limits.maxDowntimeMs) {
    return { action: "stop-and-copy", reason: `${mb(last.remainingBytes)} left fits the ${limits.maxDowntimeMs} ms downtime limit at ${mb(last.transferRate)}/s (≈${last.expectedDowntimeMs} ms)` };
  }
  let why: string | undefined;
  if (last.round + 1 >= limits.maxRounds) why = `${last.round + 1} rounds reached the limit of ${limits.maxRounds}`;
  else if (elapsedMs >= limits.timeBudgetMs) why = `pre-copy ran ${Math.round(elapsedMs / 1000)} s, its budget is ${Math.round(limits.timeBudgetMs / 1000)} s`;
  else if (passes.length > STUCK_PASSES) {
    const recent = passes.slice(-(STUCK_PASSES + 1));
    const stuck = recent.slice(1).every((p, i) => p.pagesSent >= NOT_SHRINKING * recent[i]!.pagesSent);
    if (stuck) why = `passes stopped shrinking (${recent.map((p) => p.pagesSent).join(" → ")} pages; the guest dirties ${Math.round(last.dirtyRate)} pages/s)`;
  }
  if (!why) return { action: "continue" };
  if (limits.postcopy) return { action: "post-copy", reason: why };
  // Without post-copy only the hard limits end the migration; a stuck one keeps trying until then.
  if (why.startsWith("passes")) return { action: "continue" };
  return { action: "abort", reason: `pre-copy did not converge: ${why} (expected downtime ${last.expectedDowntimeMs} ms > ${limits.maxDowntimeMs} ms; post-copy not allowed)` };
}
