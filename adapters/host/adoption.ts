/**
 * VMs an earlier agent of this host left behind. A driver whose VMs outlive their agent
 * re-attaches them at start: this takes them back and settles what each was in the middle
 * of. The outcome of a migration stays the commit function's: the agent only reports, and
 * then follows its commands.
 */
import { commitResumed } from "../../schemas/index.ts";
import { readEvents } from "../../infra/events/reader.ts";
import type { Logger } from "../../infra/log.ts";
import { publishAbort, publishInventory } from "./hostFacts.ts";
import { sessionKey, type HostSessions, type HostState } from "./hostState.ts";
import type { AdoptedVm, GoneVm } from "./qemuDriver.ts";

/**
 * Takes back the VMs an earlier agent left running (into `owned`, as its records say) and
 * returns those whose migration, incoming or resume that agent left undecided: they are
 * settled once the agent is up.
 */
export function takeBack(sessions: HostSessions, found: { adopted: AdoptedVm[]; gone: GoneVm[] }, log: Logger): AdoptedVm[] {
  const leftOver: AdoptedVm[] = [];
  for (const a of found.adopted) {
    const r = a.record;
    if (r.state === "incoming" || (r.state === "resuming" && r.postcopy)) {
      leftOver.push(a);
      continue;
    }
    const state = r.state === "migrating" ? "migrating" : r.state === "resuming" ? "running" : a.status === "running" ? "running" : "paused";
    sessions.owned.set(a.vm.name, { spec: a.vm.spec, vm: a.vm, state, ...(r.state === "migrating" && r.migrationId ? { migrationId: r.migrationId } : {}) });
    if (r.state === "migrating" || r.state === "resuming") leftOver.push(a);
  }
  if (found.adopted.length) log.warn("adopted the VMs an earlier agent of this host left running", { vms: found.adopted.map((a) => ({ vm: a.vm.name, status: a.status, ...a.record })) });
  for (const g of found.gone) log.warn("a VM of an earlier agent of this host is gone (its QEMU died without it)", { vm: g.name, role: g.role, ...g.record });
  return leftOver;
}

/** Has the destination of this migration said it runs the VM (commit-resumed)? */
async function destinationRuns(state: HostState, migrationId: string, vm: string): Promise<boolean> {
  for await (const e of readEvents(state.nc, { filter: commitResumed.subject({ migrationId }) })) {
    if (e.result.ok && e.result.event.mode === "structured" && (e.result.event.data as { vm?: string }).vm === vm) return true;
  }
  return false;
}

/**
 * Settles what an adopted VM was doing when its agent died.
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
export async function settleAdopted(state: HostState, a: AdoptedVm): Promise<void> {
  const { log, host } = state;
  const name = a.vm.name;
  const { state: recorded, migrationId, postcopy } = a.record;
  if (!migrationId) return;
  if (recorded === "migrating") {
    if (await destinationRuns(state, migrationId, name)) {
      const v = state.owned.get(name);
      if (v?.vm !== a.vm || v.state !== "migrating") return;
      log.warn("adopted a source whose destination already runs it: quitting this copy", { migrationId, vm: name });
      state.owned.delete(name);
      await a.vm.quit();
      await publishInventory(state);
      return;
    }
    // A rollback or quit command queued while no agent ran may have settled it already.
    const v = state.owned.get(name);
    if (v?.vm !== a.vm || v.state !== "migrating" || v.migrationId !== migrationId) return;
    log.warn("adopted a VM in the middle of leaving: asking for a rollback", { migrationId, vm: name, status: a.status });
    return publishAbort(state, migrationId, name, `the agent of ${host} restarted during the migration; the source VM survived it and still runs here`);
  }
  if (recorded === "incoming") {
    log.warn("adopted an incoming destination its agent left: quitting it, never resuming", { migrationId, vm: name, status: a.status });
    await a.vm.quit().catch(() => undefined);
    return publishAbort(state, migrationId, name, `the agent of ${host} restarted while ${name} was arriving; its destination VM was stopped and never resumed`, true);
  }
  if (recorded === "resuming" && !postcopy) {
    if (a.status !== "running") await a.vm.cont();
    await a.vm.remember?.({ state: "running" });
    state.resumed.add(sessionKey(migrationId, name));
    log.warn("adopted a destination told to resume: resumed", { migrationId, vm: name, was: a.status });
    await state.publisher.publish(commitResumed, { migrationId }, { migrationId, vm: name, targetHost: host }, { id: `${migrationId}-${name}-commit-resumed` });
    await publishInventory(state);
    return;
  }
  if (recorded === "resuming" && postcopy) {
    state.owned.set(name, { spec: a.vm.spec, vm: a.vm, state: a.status === "running" ? "running" : "paused" });
    await a.vm.remember?.({ state: a.status === "running" ? "running" : "paused" });
    await publishInventory(state);
    log.error("adopted a post-copy destination whose pages stopped coming with its agent: left as it is", { migrationId, vm: name, status: a.status });
    return publishAbort(state, migrationId, name, `the agent of ${host} restarted in post-copy; the destination VM is ${a.status}`);
  }
}

/** A recorded VM whose QEMU died with no agent watching: say what that means for its migration. */
export async function settleGone(state: HostState, g: GoneVm): Promise<void> {
  const { state: recorded, migrationId } = g.record;
  if (!migrationId) return;
  // An incoming destination (killed by its lifeline): never resumed, so the source takes over.
  if (recorded === "incoming") await publishAbort(state, migrationId, g.name, `the agent of ${state.host} died while ${g.name} was arriving; its destination VM died with it, never resumed`, true);
  else if (recorded === "resuming") await publishAbort(state, migrationId, g.name, `the destination VM of ${g.name} on ${state.host} died around its resume, with no agent watching`);
  // A source that died while leaving: the destination may still complete; nothing to say.
}
