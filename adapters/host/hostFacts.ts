/**
 * Facts a host reports whatever it is doing: its inventory (and the VM records behind it),
 * and the abort of a migration it cannot go on with. It decides nothing: the functions do.
 */
import { freemem, totalmem } from "node:os";
import { commitAbort, hostInventory } from "../../schemas/index.ts";
import type { HostState } from "./hostState.ts";

/**
 * Each VM's record follows the agent's view of it (written only when it changes), so a
 * restarted agent knows what it was doing. A post-copy destination still receiving pages
 * keeps its "resuming" record until every page is in.
 */
export async function syncRecords(state: HostState): Promise<void> {
  await Promise.all([...state.owned.values()].map((v) => {
    if ([...state.targets.values()].some((t) => t.vm === v.vm)) return undefined;
    return v.vm.remember?.({ state: v.state, ...(v.state === "migrating" && v.migrationId ? { migrationId: v.migrationId } : {}) });
  }));
}

export async function publishInventory(state: HostState): Promise<void> {
  await syncRecords(state);
  const vms = [...state.owned.values()].map((v) => ({ vm: v.spec.name, tenant: v.spec.tenant, memoryBytes: v.spec.memoryMiB * 1024 * 1024, state: v.state, ...(v.spec.uuid ? { uuid: v.spec.uuid } : {}), spec: v.spec }));
  const used = vms.reduce((n, v) => n + v.memoryBytes, 0);
  const qemuVersion = await state.driver.qemuVersion?.();
  await state.publisher.publish(hostInventory, { host: state.host }, { host: state.host, memoryTotalBytes: totalmem(), memoryFreeBytes: Math.max(0, Math.min(freemem(), totalmem() - used)), ...(qemuVersion ? { qemuVersion } : {}), vms });
}

/** Reports that this host cannot go on with a VM's migration; the commit function decides. */
export async function publishAbort(state: HostState, migrationId: string, vm: string, reason: string, destinationStopped = false): Promise<void> {
  state.log.warn("aborting", { migrationId, vm, reason });
  // NATS may be away (stopped, paused, cut off) just when things fail: an abort that is
  // never published leaves the VM undecided for good, so keep trying (for up to ~10 min;
  // the stream drops the copies of one that got through unseen).
  for (let attempt = 0; ; attempt++) {
    try {
      await state.publisher.publish(commitAbort, { migrationId }, { migrationId, vm, reason: reason.slice(0, 2000), reportedBy: `host ${state.host}`, destinationStopped }, { id: `abort-${migrationId}-${vm}-${state.host}${destinationStopped ? "-stopped" : ""}` });
      return;
    } catch (e) {
      if (attempt >= 120 || state.nc.isClosed()) return state.log.error("abort not published; giving up", { migrationId, vm, error: e });
      if (attempt === 0) state.log.error("abort not published; retrying", { migrationId, vm, error: e });
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
    }
  }
}
