/**
 * Adapter control: commands that functions (and the CLI) send to a host agent, which acts
 * on its QEMU. Functions decide, adapters act: these are the only way a decision reaches
 * a VM. Each travels on gw.cmd.agent.<host>.<action>.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { hostName, migrationId, migrationOptions, reason, tenantId, vmName } from "./common.ts";

const about = (p: { host: string }) => `host/${p.host}`;

/** A VM as a host agent runs it: enough to start the same VM on another host. */
export const vmSpec = z.object({
  name: vmName,
  tenant: tenantId,
  memoryMiB: z.number().int().min(16).max(1 << 20),
  /** Kernel image for -kernel (test guest or a Linux kernel). */
  kernel: z.string().min(1).optional(),
  initrd: z.string().min(1).optional(),
  append: z.string().max(4096).optional(),
  uuid: z.string().uuid().optional(),
  /** The agent reports the VM running once its serial console printed this (e.g. "READY"). */
  readyPattern: z.string().max(256).optional(),
});
export type VmSpec = z.infer<typeof vmSpec>;

function action<A extends string, D extends z.ZodType>(name: A, data: D) {
  return defineEvent({ type: `io.gangway.agent.${name}.v1` as `io.gangway.agent.${A}.v1`, family: "agent", subject: `gw.cmd.agent.{host}.${name}`, about, data });
}

export const agentVmStart = action("vm-start", z.object({ host: hostName, spec: vmSpec }));
export const agentVmStop = action("vm-stop", z.object({ host: hostName, vm: vmName }));

/** Destination: start the VM paused with -incoming defer, ready to receive. */
export const agentPrepareTarget = action(
  "prepare-target",
  z.object({ host: hostName, migrationId, sourceHost: hostName, spec: vmSpec, options: migrationOptions }),
);

/** Source: start migrating the VM into the adapter's proxy. */
export const agentStartSource = action(
  "start-source",
  z.object({ host: hostName, migrationId, targetHost: hostName, vm: vmName, options: migrationOptions }),
);

/** Source: switch over now (stop-and-copy, or post-copy). */
export const agentSwitchover = action(
  "switchover",
  z.object({ host: hostName, migrationId, vm: vmName, mode: z.enum(["stop-and-copy", "post-copy"]), reason }),
);

/**
 * Source, post-copy: have QEMU send these pages next (the destination faulted on them, or
 * they neighbour a fault). `ranges` are bytes of RAM block `block`.
 */
export const agentPageRequest = action(
  "page-request",
  z.object({
    host: hostName,
    migrationId,
    vm: vmName,
    block: z.string().min(1).max(255),
    ranges: z.array(z.object({ offset: z.number().int().nonnegative().multipleOf(4096), length: z.number().int().positive().multipleOf(4096) })).min(1).max(4096),
    requestSeq: z.number().int().nonnegative(),
  }),
);

/** Destination: commit — resume the destination VM. */
export const agentResumeTarget = action("resume-target", z.object({ host: hostName, migrationId, vm: vmName }));

/** Source: after commit, quit the source VM. */
export const agentQuitSource = action("quit-source", z.object({ host: hostName, migrationId, vm: vmName }));

/** Either side: roll back — destination kills its VM, source resumes (cont) its VM. */
export const agentRollback = action("rollback", z.object({ host: hostName, migrationId, vm: vmName, reason }));
