/**
 * The benchmark's workloads (issue 6), each a gang of VMs described once and started the
 * same way for native QEMU (bench/native.ts) and for gangway (bench/gangway.ts).
 *
 *   W1  four test-guest VMs from one image seed (25% zero, 25% shared pages), 1,000 pages/s dirtied
 *   W2  four VMs booting one Debian kernel with a busybox initramfs, each with 8 MiB of its own random data
 *   W3  one test-guest VM whose pages are all unique LCG data (incompressible, no dedup)
 *   W4  one test-guest VM dirtying faster than the link carries (60,000 pages/s ≈ 246 MB/s; the
 *       guest reaches that rate under TCG here; 30,000 pages/s ≈ the link itself still converged)
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chmod, copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { GUEST_KERNEL } from "../cli/localCluster.ts";
import type { MigrationOptions } from "../schemas/index.ts";

export type WorkloadId = "W1" | "W2" | "W3" | "W4";
export const ALL_WORKLOADS: WorkloadId[] = ["W1", "W2", "W3", "W4"];

/** One VM of a workload: enough for startVm (native) and for an agent's VmSpec (gangway). */
export interface BenchVm {
  name: string;
  memoryMiB: number;
  kernel: string;
  append: string;
  initrd?: string;
  /** Serial line printed once the guest is ready (test guest: READY; Linux: SHELL-READY). */
  readyPattern: string;
}

export interface Workload {
  id: WorkloadId;
  title: string;
  vms: BenchVm[];
  /** How a destination is checked: the test guest's own memory check, or the shell answering. */
  verify: "test-guest" | "shell";
  /** Give up a migration (and report it) after this long. */
  timeLimitMs: number;
  /** Native configurations to compare with. @default plain and multifd-zstd */
  nativeModes?: ("plain" | "multifd-zstd" | "postcopy")[];
  /** gangway's migration options for this workload. @default none */
  gangwayOptions?: Partial<MigrationOptions>;
}

export interface WorkloadOptions {
  quick: boolean;
  /** Directory for generated files (the W2 initramfs). */
  workDir: string;
}

export const BUSYBOX = "/bin/busybox";
export const LINUX_KERNEL = existsSync("/boot") ? readdirSync("/boot").filter((f) => f.startsWith("vmlinuz-")).sort().map((f) => join("/boot", f)).pop() : undefined;

/** Why a workload cannot run on this machine, or undefined. */
export function unavailable(id: WorkloadId): string | undefined {
  if (id === "W2") {
    if (!LINUX_KERNEL) return "no /boot/vmlinuz-* (install linux-image-amd64)";
    if (!existsSync(BUSYBOX)) return "no /bin/busybox (install busybox-static)";
    return undefined;
  }
  return existsSync(GUEST_KERNEL) ? undefined : `the test guest is not built (${GUEST_KERNEL}); run \`npm run setup\``;
}

const guest = (name: string, memoryMiB: number, p: { seed: number; image: number; zero: number; shared: number; rate: number }): BenchVm => ({
  name,
  memoryMiB,
  kernel: GUEST_KERNEL,
  append: `seed=${p.seed} image=${p.image} zero=${p.zero} shared=${p.shared} rate=${p.rate}`,
  readyPattern: "READY",
});

/** A gzip'd newc initramfs: busybox; /init mounts devtmpfs, writes 8 MiB of random data to a tmpfs, prints SHELL-READY and runs a shell. */
export async function buildInitramfs(at: string): Promise<string> {
  const out = join(at, "initramfs.cpio.gz");
  if (existsSync(out)) return out;
  const root = join(at, "initramfs-root");
  for (const d of ["bin", "dev", "proc", "sys", "tmp", "mnt"]) await mkdir(join(root, d), { recursive: true });
  await copyFile(BUSYBOX, join(root, "bin/busybox"));
  await chmod(join(root, "bin/busybox"), 0o755);
  const init = [
    "#!/bin/busybox sh",
    "/bin/busybox --install -s /bin",
    "mount -t devtmpfs devtmpfs /dev",
    "mount -t proc proc /proc",
    "mount -t tmpfs tmpfs /mnt",
    "head -c 8388608 /dev/urandom > /mnt/random",
    "echo SHELL-READY",
    "exec sh",
    "",
  ].join("\n");
  await writeFile(join(root, "init"), init, { mode: 0o755 });
  execFileSync("sh", ["-c", `cd "${root}" && find . | cpio -o -H newc --quiet | gzip -1 > "${out}"`]);
  return out;
}

export async function workload(id: WorkloadId, o: WorkloadOptions): Promise<Workload> {
  const mem = o.quick ? 128 : 256;
  const limit = o.quick ? 60_000 : 120_000;
  switch (id) {
    case "W1":
      return {
        id, title: `4 test VMs × ${mem} MiB, one image (25% zero, 25% shared), 1,000 pages/s dirtied`,
        vms: [1, 2, 3, 4].map((i) => guest(`w1vm${i}`, mem, { seed: i, image: 7, zero: 25, shared: 25, rate: 1000 })),
        verify: "test-guest", timeLimitMs: limit,
      };
    case "W2": {
      const initrd = await buildInitramfs(o.workDir);
      return {
        id, title: "4 VMs × 256 MiB booting one Debian kernel + busybox initramfs, 8 MiB random each",
        vms: [1, 2, 3, 4].map((i) => ({ name: `w2vm${i}`, memoryMiB: 256, kernel: LINUX_KERNEL!, initrd, append: "console=ttyS0 quiet panic=-1", readyPattern: "SHELL-READY" })),
        verify: "shell", timeLimitMs: limit,
      };
    }
    case "W3":
      return {
        id, title: `1 test VM × ${mem} MiB, all pages unique random (no zero, no shared), 1,000 pages/s dirtied`,
        vms: [guest("w3vm1", mem, { seed: 11, image: 7, zero: 0, shared: 0, rate: 1000 })],
        verify: "test-guest", timeLimitMs: limit,
      };
    case "W4":
      // 256 MiB even in quick mode: at 128 MiB the set of pages the guest rewrites (its
      // unique half, 67 MB) is small enough that native pre-copy converged here anyway.
      return {
        id, title: "1 test VM × 256 MiB dirtying 60,000 pages/s (≈246 MB/s, twice what the link carries)",
        vms: [guest("w4vm1", 256, { seed: 21, image: 7, zero: 25, shared: 25, rate: 60000 })],
        verify: "test-guest", timeLimitMs: o.quick ? 30_000 : 60_000,
        // Post-copy on both sides: native after its first pass, gangway when its dirty log
        // sees the passes stop shrinking (or after 3 rounds).
        nativeModes: ["plain", "postcopy"],
        gangwayOptions: { postcopy: true, maxRounds: 3 },
      };
  }
}

export function parseWorkloads(s: string): WorkloadId[] {
  const ids = s.split(",").map((x) => x.trim().toUpperCase()).filter(Boolean);
  for (const id of ids) if (!ALL_WORKLOADS.includes(id as WorkloadId)) throw new Error(`unknown workload "${id}" (known: ${ALL_WORKLOADS.join(", ")})`);
  return ids as WorkloadId[];
}
