/**
 * VMs for the stream tests, on the project's launcher (adapters/qemu/vm.ts): a private
 * base directory per test file, random names, every VM stopped in stopAll().
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startVm, type StartVmOptions, type VmConfig, type VmHandle } from "../../../adapters/qemu/vm.ts";

/** Where test images go in guest RAM (32 MiB, clear of the firmware). */
export const IMAGE_ADDR = 0x2000000;

export const TEST_GUEST = join(process.cwd(), "guest/build/gangway-guest.elf");

export interface StreamFleet {
  /** Short private directory: run directories, disks and files of this test file. */
  readonly dir: string;
  start(config: VmConfig, opts?: StartVmOptions): Promise<VmHandle>;
  /**
   * An idle firmware VM (SeaBIOS finds nothing to boot and waits) with 256 MiB of RAM,
   * optionally with `image` loaded at IMAGE_ADDR (-device loader). Each VM pair gets its
   * own empty disk: QEMU locks a disk image against a second writer.
   */
  idle(name: string, opts?: { image?: string; disk?: string; role?: "source" | "destination"; incoming?: string }): Promise<VmHandle>;
  /** A fresh 1 MiB empty disk image. */
  emptyDisk(): Promise<string>;
  /** Stops every VM started so far (for afterEach). */
  stopVms(): Promise<void>;
  /** Stops every VM and removes the directory (for afterAll). */
  stopAll(): Promise<void>;
}

export async function streamFleet(): Promise<StreamFleet> {
  const dir = await mkdtemp(join(tmpdir(), "gw-s-"));
  const vms: VmHandle[] = [];
  const fleet: StreamFleet = {
    dir,
    async start(config, opts = {}) {
      const vm = await startVm(config, { baseDir: dir, host: "t", stopTimeoutMs: 2000, ...opts });
      vms.push(vm);
      return vm;
    },
    async emptyDisk() {
      const f = join(dir, `disk-${randomBytes(3).toString("hex")}.img`);
      await writeFile(f, Buffer.alloc(1024 * 1024));
      return f;
    },
    async idle(name, o = {}) {
      const disk = o.disk ?? (await fleet.emptyDisk());
      const extraArgs = o.image ? ["-device", `loader,file=${o.image},addr=0x${IMAGE_ADDR.toString(16)}`] : [];
      return fleet.start({ name, memoryMiB: 256, disk, extraArgs }, { role: o.role, incoming: o.incoming });
    },
    async stopVms() {
      await Promise.allSettled(vms.splice(0).map((vm) => vm.stop()));
    },
    async stopAll() {
      await fleet.stopVms();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fleet;
}

export const vmName = (prefix: string): string => `${prefix}-${randomBytes(3).toString("hex")}`;

export async function runState(vm: VmHandle): Promise<string> {
  return (await vm.qmp.queryStatus()).status;
}

/** Guest-physical memory through pmemsave. */
export async function readGuestMemory(vm: VmHandle, addr: number, size: number): Promise<Buffer> {
  const f = join(vm.runDir, `pmem-${addr}-${size}.bin`);
  await vm.qmp.pmemsave(addr, size, f);
  const b = await readFile(f);
  await rm(f, { force: true });
  return b;
}

/** Saves the VM's migration stream to a file (QMP migrate "exec:cat > FILE"). */
export async function captureStream(vm: VmHandle, file: string): Promise<void> {
  await vm.qmp.migrate(`exec:cat > ${file}`);
  const info = await vm.qmp.waitForMigration({ timeoutMs: 60_000 });
  if (info.status !== "completed") throw new Error(`capture migration ${info.status}`);
}

/**
 * An image of `pages` 4 KiB pages mixing zero, uniform (one byte value), duplicate (a
 * few distinct pages repeated) and random pages, deterministically from a seed.
 */
export function mixedImage(pages: number, seed = 1): Buffer {
  const img = Buffer.alloc(pages * 4096);
  let s = seed >>> 0 || 1;
  const rnd = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  const dupSources: Buffer[] = [];
  for (let k = 0; k < 4; k++) {
    const b = Buffer.alloc(4096);
    for (let i = 0; i < 4096; i += 4) b.writeUInt32LE(rnd(), i);
    dupSources.push(b);
  }
  for (let p = 0; p < pages; p++) {
    const page = img.subarray(p * 4096, (p + 1) * 4096);
    switch (p % 4) {
      case 0:
        break; // zero
      case 1:
        page.fill((p % 251) + 1); // uniform, non-zero
        break;
      case 2:
        dupSources[p % dupSources.length].copy(page); // duplicate
        break;
      default:
        for (let i = 0; i < 4096; i += 4) page.writeUInt32LE(rnd(), i); // random
    }
  }
  return img;
}
