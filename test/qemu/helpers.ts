/**
 * Test helper for real QEMU: builds the test guest if needed, starts VMs under a private
 * base directory with random names, and stops every one of them (and removes the
 * directory) in afterEach, whatever the test did.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startVm, type StartVmOptions, type VmConfig, type VmHandle } from "../../adapters/qemu/index.ts";

const guestDir = fileURLToPath(new URL("../../guest", import.meta.url));

/** `make -s -C guest` (incremental: a no-op when the kernel is up to date). */
export function buildTestGuest(): void {
  execFileSync("make", ["-s", "-C", guestDir], { stdio: ["ignore", "ignore", "inherit"] });
}

export const randomName = (prefix: string) => `${prefix}-${randomBytes(3).toString("hex")}`;

export interface Fleet {
  /** Where run directories go (short, so socket paths stay under 108 bytes). */
  readonly baseDir: string;
  start(config: VmConfig, opts?: StartVmOptions): Promise<VmHandle>;
  /** Stops all VMs started here; kill after a short grace. */
  stopAll(): Promise<void>;
}

export function fleet(): Fleet {
  const baseDir = mkdtempSync(join(tmpdir(), "gw-t-"));
  const vms: VmHandle[] = [];
  return {
    baseDir,
    async start(config, opts = {}) {
      const vm = await startVm(config, { baseDir, host: "test", stopTimeoutMs: 2000, ...opts });
      vms.push(vm);
      return vm;
    },
    async stopAll() {
      await Promise.allSettled(vms.splice(0).map((vm) => vm.stop()));
      if (!process.env.GW_KEEP_RUNS) rmSync(baseDir, { recursive: true, force: true });
    },
  };
}

/** Page `index` of a RAM file (file offset = guest-physical address). */
export function pageAt(ram: Buffer, index: number): Buffer {
  return ram.subarray(index * 4096, (index + 1) * 4096);
}
