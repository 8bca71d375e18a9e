/**
 * resume-target (destination, the commit): the VM runs here from now on. In pre-copy every
 * page is in and the session ends; in post-copy the VM runs while its remaining pages are
 * faulted in, and prepare-target ends the session once they are all here.
 */
import { agentResumeTarget, commitResumed, MigrationMode, MigrationPhase, migrationProgress } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { publishAbort, publishInventory } from "../hostFacts.ts";
import { endTarget, sessionKey, type HostState, type TargetSession } from "../hostState.ts";
import type { RunningVm } from "../qemuDriver.ts";

export default defineAction({
  trigger: agentResumeTarget,
  async handle(state, c) {
    const key = sessionKey(c.migrationId, c.vm);
    if (state.resumed.has(key)) return; // a repeated command: already done
    const t = state.targets.get(key);
    if (t?.postcopy) return resumePostcopy(state, c.migrationId, t);
    if (!t) {
      // Nothing to resume here (this agent restarted, and its QEMUs died with the old one):
      // say so, so that the intact source is resumed instead.
      return publishAbort(state, c.migrationId, c.vm, `no destination VM ${c.vm} for this migration on ${state.host}`, true);
    }
    endTarget(state, t);
    // Taken before the first await: a copy of this command delivered meanwhile (a redelivery
    // while `cont` is slow) must not find the session gone and abort a VM being resumed (seen
    // once in a benchmark run, after the commit).
    state.resumed.add(key);
    // Recorded before it runs: from now on it outlives the agent, and a restarted one finishes the resume.
    await t.vm.remember?.({ state: "resuming", migrationId: c.migrationId });
    const failed = await resumeOrStop(t.vm);
    if (failed) return publishAbort(state, c.migrationId, c.vm, `destination did not resume: ${failed}`, true);
    state.owned.set(c.vm, { spec: t.spec, vm: t.vm, state: "running" });
    await state.publisher.publish(commitResumed, { migrationId: c.migrationId }, { migrationId: c.migrationId, vm: c.vm, targetHost: state.host }, { id: `${c.migrationId}-${c.vm}-commit-resumed` });
    await state.publisher.publish(migrationProgress, { migrationId: c.migrationId }, {
      migrationId: c.migrationId, vm: c.vm, phase: MigrationPhase.Succeeded, mode: MigrationMode.PreCopy, stats: { time_elapsed: 0, data_processed: 0, percent: 100 },
    }, { id: `${c.migrationId}-${c.vm}-resumed` });
    await publishInventory(state);
  },
});

/**
 * Resumes a destination VM. A `cont` that errs (a QMP time-out under load, say) may still
 * have started the guest: only a VM that is not running is quit and reported stopped — the
 * commit function resumes the source on that word, so it must never be said of one that ran.
 * Returns why it failed, or undefined.
 */
async function resumeOrStop(vm: RunningVm): Promise<string | undefined> {
  try {
    await vm.cont();
    return undefined;
  } catch (err) {
    const status = await vm.status().catch(() => "gone");
    if (status === "running") return undefined;
    await vm.quit().catch(() => undefined);
    return `${(err as Error).message} (QEMU ${status})`;
  }
}

/** Post-copy: the VM runs here now while its remaining pages are faulted in. */
async function resumePostcopy(state: HostState, migrationId: string, t: TargetSession): Promise<void> {
  const key = sessionKey(migrationId, t.spec.name);
  await t.vm.remember?.({ state: "resuming", migrationId, postcopy: true });
  const failed = await resumeOrStop(t.vm);
  if (failed) return publishAbort(state, migrationId, t.spec.name, `destination did not resume: ${failed}`, true);
  state.resumed.add(key);
  t.postcopy!.isResumed = true;
  t.postcopy!.resumed.open();
  state.owned.set(t.spec.name, { spec: t.spec, vm: t.vm, state: "running" });
  await state.publisher.publish(migrationProgress, { migrationId }, {
    migrationId, vm: t.spec.name, phase: MigrationPhase.Running, mode: MigrationMode.PostCopy, stats: { time_elapsed: 0, data_processed: 0 },
  }, { id: `${migrationId}-${t.spec.name}-postcopy-resumed` });
  await publishInventory(state);
}
