/**
 * plan: turns a migration request into a plan. Each VM must be on the source host (per its
 * inventory); the destination is the one asked for, or else the candidate with the most
 * free memory that fits the whole gang — a gang goes to one place so its shared pages
 * cross the link once (IRLM, gang migration). What cannot be planned fails with a reason.
 */
import { agentPrepareTarget, agentStartSource, migrationFailed, migrationPlanned, migrationRequested, MigrationPhase, type VmSpec } from "../../schemas/index.ts";
import { defineFunction, RetryAfterError } from "../../kit/index.ts";

/** Tries (0.5 s apart) to see the VMs in a fresh inventory before failing the request. */
const WAIT_FOR_INVENTORY_ATTEMPTS = 6;
import type { z } from "zod";
import { inventoryKey, type HostInventory } from "../inventory/index.ts";

export type Plan = z.infer<typeof migrationPlanned.data>;
export const planKey = (migrationId: string) => `migration.${migrationId}.plan`;
/** The migration a VM (on its source host) is leaving in; over once that one has an outcome. */
const vmClaimKey = (host: string, vm: string) => `vm.${host}.${vm}.migration`;

export default defineFunction({
  id: "plan",
  description: "choose a destination and describe each VM of a requested gang migration",
  trigger: migrationRequested,
  retry: { maxAttempts: WAIT_FOR_INVENTORY_ATTEMPTS + 2, backoffMs: 500 },
  async handler(event, ctx) {
    const req = event.data;
    const params = { migrationId: req.migrationId };
    const fail = (reason: string) => ctx.emit(migrationFailed, params, { migrationId: req.migrationId, reason, phase: MigrationPhase.Failed });

    // A VM claimed by a migration without an outcome is refused at once, naming that
    // migration (its inventory soon says "migrating", which would not name it).
    if (!(await ctx.state.get<Plan>(planKey(req.migrationId)))) {
      for (const name of req.vms) {
        const other = await ctx.state.get<string>(vmClaimKey(req.sourceHost, name));
        if (other && other !== req.migrationId && !(await ctx.state.get(`migration.${other}.outcome`))) {
          return fail(`VM ${name} is already migrating (migration ${other}); cancel that one first`);
        }
      }
    }
    const source = await ctx.state.get<HostInventory>(inventoryKey(req.sourceHost));
    // The inventory may lag the request by a moment (both are events): wait for a report
    // at least as new as the request before saying a VM is not there.
    const stale = !source || source.reportedAt < event.time;
    const missing = !source || req.vms.some((n) => !source.vms.some((v) => v.vm === n && (v.state === "running" || v.state === "paused")));
    if (stale && missing && ctx.attempt < WAIT_FOR_INVENTORY_ATTEMPTS) throw new RetryAfterError("waiting for a newer inventory of the source host", 500);
    if (!source) return fail(`source host ${req.sourceHost} has not reported its inventory`);
    const vms = [];
    const specs = new Map<string, VmSpec>();
    for (const name of req.vms) {
      const vm = source.vms.find((v) => v.vm === name);
      if (!vm) return fail(`VM ${name} is not on host ${req.sourceHost}`);
      if (vm.state !== "running" && vm.state !== "paused") return fail(`VM ${name} is ${vm.state}, not running or paused`);
      if (vm.spec) specs.set(vm.vm, vm.spec);
      vms.push({ vm: vm.vm, tenant: vm.tenant, memoryBytes: vm.memoryBytes, ...(vm.uuid ? { uuid: vm.uuid } : {}) });
    }
    if (new Set(req.vms).size !== req.vms.length) return fail("a VM is named twice");
    const need = vms.reduce((n, v) => n + v.memoryBytes, 0);

    let target = req.targetHost;
    if (target === req.sourceHost) return fail(`target host ${target} is the source host`);
    if (target) {
      const inv = await ctx.state.get<HostInventory>(inventoryKey(target));
      if (!inv && ctx.attempt < WAIT_FOR_INVENTORY_ATTEMPTS) throw new RetryAfterError("waiting for the target host's inventory", 500);
      if (!inv) return fail(`target host ${target} has not reported its inventory`);
      if (inv.memoryFreeBytes < need) return fail(`target host ${target} has ${inv.memoryFreeBytes} bytes free, the gang needs ${need}`);
      const mismatch = qemuMismatch(source, inv);
      if (mismatch) return fail(mismatch);
      // Another VM of the same name or identity there (another tenant's, say) would receive
      // these pages: refuse now, before any page moves.
      for (const v of vms) {
        const clash = inv.vms.find((t) => t.vm === v.vm || (v.uuid !== undefined && t.uuid === v.uuid));
        if (clash) return fail(`target host ${target} already has VM ${clash.vm} (tenant ${clash.tenant}${clash.uuid ? `, uuid ${clash.uuid}` : ""}); VM ${v.vm} of tenant ${v.tenant} cannot move there`);
      }
    } else {
      const hosts = (await ctx.state.keys("inventory.")).map((k) => k.slice("inventory.".length)).filter((h) => h !== req.sourceHost);
      let best: HostInventory | undefined;
      for (const h of hosts) {
        const inv = await ctx.state.get<HostInventory>(inventoryKey(h));
        if (inv && inv.memoryFreeBytes >= need && !qemuMismatch(source, inv) && (!best || inv.memoryFreeBytes > best.memoryFreeBytes)) best = inv;
      }
      if (!best) return fail(`no host has ${need} bytes free for the gang${source.qemuVersion ? ` and runs QEMU ${source.qemuVersion.split(".").slice(0, 2).join(".")} like ${req.sourceHost}` : ""}`);
      target = best.host;
    }
    // Later decisions (commit, rollback, gang outcome) need the plan: keep it in state, once.
    // A retry reuses the plan already made, so it can never send a VM's halves to two places.
    let plan: Plan = { migrationId: req.migrationId, sourceHost: req.sourceHost, targetHost: target, vms, options: req.options };
    const existing = await ctx.state.get<Plan>(planKey(req.migrationId));
    if (!existing) {
      // One migration per VM at a time: a VM is claimed until its migration has an outcome
      // (the inventory says "migrating" only a moment later). Cancel the other one first.
      for (const v of vms) {
        const other = await ctx.state.get<string>(vmClaimKey(req.sourceHost, v.vm));
        if (other && other !== req.migrationId && !(await ctx.state.get(`migration.${other}.outcome`))) {
          return fail(`VM ${v.vm} is already migrating (migration ${other}); cancel that one first`);
        }
      }
      for (const v of vms) await ctx.state.put(vmClaimKey(req.sourceHost, v.vm), req.migrationId);
    }
    if (!(await ctx.state.create(planKey(req.migrationId), plan))) plan = (await ctx.state.get<Plan>(planKey(req.migrationId)))!;
    ctx.log.info("planned", { migrationId: req.migrationId, target: plan.targetHost, vms: req.vms.length });
    ctx.emit(migrationPlanned, params, plan);
    // Start both sides of every VM: the destination prepares a paused VM of the same
    // configuration, the source starts streaming (what it sends waits in the stream).
    for (const v of plan.vms) {
      const spec = specs.get(v.vm);
      if (!spec) continue; // inventory without specs (tests of planning alone)
      ctx.emit(agentPrepareTarget, { host: plan.targetHost }, { host: plan.targetHost, migrationId: req.migrationId, sourceHost: req.sourceHost, spec, options: req.options });
      ctx.emit(agentStartSource, { host: req.sourceHost }, { host: req.sourceHost, migrationId: req.migrationId, targetHost: plan.targetHost, vm: v.vm, options: req.options });
    }
  },
});

/**
 * Why the two hosts' QEMUs cannot migrate to each other, or undefined. gangway starts VMs with
 * the machine alias `pc`, which each QEMU version resolves to its own machine type, and QEMU
 * refuses another's stream: the versions must agree in major and minor (a stable release's
 * micro versions keep the machine type). A host that does not say is not refused here.
 */
export function qemuMismatch(source: Pick<HostInventory, "host" | "qemuVersion">, target: Pick<HostInventory, "host" | "qemuVersion">): string | undefined {
  if (!source.qemuVersion || !target.qemuVersion) return undefined;
  const line = (v: string) => v.split(".").slice(0, 2).join(".");
  if (line(source.qemuVersion) === line(target.qemuVersion)) return undefined;
  return `QEMU on ${source.host} is ${source.qemuVersion}, on ${target.host} ${target.qemuVersion}: both ends of a migration must run the same QEMU version (each resolves the machine type "pc" to its own, and QEMU refuses another's stream)`;
}
