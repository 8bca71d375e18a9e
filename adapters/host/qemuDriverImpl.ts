/**
 * The QemuDriver on real QEMU: the launcher starts VMs (file-backed RAM, QMP, serial), the
 * source proxy takes a VM's outgoing stream, and the destination proxy writes a rebuilt
 * stream into a VM started with -incoming defer -S.
 */
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../../infra/log.ts";
import type { VmSpec } from "../../schemas/index.ts";
import { startVm, type VmHandle } from "../qemu/vm.ts";
import { createSourceProxy } from "../qemu/sourceProxy.ts";
import { writeToDestination } from "../qemu/destinationProxy.ts";
import type { StreamRecord } from "../qemu/stream/records.ts";
import { encodeReqPages } from "../qemu/returnPath.ts";
import type { OutgoingStream, QemuDriver, RunningVm, VmRole } from "./qemuDriver.ts";

export interface QemuDriverOptions {
  host: string;
  /** Parent of this host's VM run directories. */
  runDir: string;
  log: Logger;
  /** Time for a guest to print its ready pattern. @default 120000 */
  readyTimeoutMs?: number;
}

const SHM = "/dev/shm";

/** The guest-RAM files (mem-path=…) of every QEMU running on this machine. */
async function ramFilesInUse(): Promise<Set<string>> {
  const used = new Set<string>();
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "latin1").catch(() => "");
    if (!cmdline.includes("qemu-system")) continue;
    for (const m of cmdline.matchAll(/mem-path=([^,\0]+)/g)) used.add(m[1]!);
  }
  return used;
}

/** QEMU 7.2 caps outgoing migration at 32 MiB/s by default; the proxy is local, so lift it. */
const UNLIMITED_BPS = 100 * 1024 ** 3;
/** A downtime limit no remainder exceeds: QEMU completes at its next check (QEMU's maximum). */
const FORCE_DOWNTIME_MS = 2_000_000;

export function createQemuDriver(o: QemuDriverOptions): QemuDriver {
  const handles = new WeakMap<RunningVm, VmHandle>();
  const wrap = (h: VmHandle, spec: VmSpec, role: VmRole): RunningVm => {
    const vm: RunningVm = {
      name: spec.name,
      spec,
      role,
      ramPath: h.ramPath,
      exited: h.exited,
      status: async () => (await h.qmp.queryStatus()).status,
      cont: () => h.qmp.cont(),
      stop: () => h.qmp.stop(),
      quit: async () => {
        await h[Symbol.asyncDispose]();
      },
      console: async (send, expect, timeoutMs) => (await h.serial.request(send, expect, timeoutMs))[0],
    };
    handles.set(vm, h);
    return vm;
  };

  return {
    async reclaim() {
      // Only files no running QEMU uses: another agent of the same name on this machine (a
      // test, a second session) may be alive.
      const inUse = await ramFilesInUse();
      const prefix = `gangway-${o.host}-`;
      const stale = (await readdir(SHM).catch(() => [] as string[])).filter((f) => f.startsWith(prefix) && !inUse.has(join(SHM, f)));
      await Promise.all(stale.map((f) => rm(join(SHM, f), { force: true })));
      return stale;
    },
    async startVm(spec, role, tag) {
      const runDir = join(o.runDir, `${spec.name}-${role === "source" ? "src" : "dst"}-${tag}`.slice(0, 60));
      await mkdir(o.runDir, { recursive: true });
      const h = await startVm(
        { name: spec.name, tenant: spec.tenant, memoryMiB: spec.memoryMiB, ...(spec.kernel ? { kernel: spec.kernel } : {}), ...(spec.append ? { append: spec.append } : {}), ...(spec.initrd ? { initrd: spec.initrd } : {}), ...(spec.uuid ? { uuid: spec.uuid } : {}) },
        { role, runDir, host: o.host, runId: `${o.host}-${tag}`.slice(0, 40) },
      );
      try {
        if (role === "source" && spec.readyPattern) await h.serial.waitFor(new RegExp(spec.readyPattern), o.readyTimeoutMs ?? 120_000);
      } catch (err) {
        await h[Symbol.asyncDispose]().catch(() => undefined);
        throw err;
      }
      o.log.info("VM started", { vm: spec.name, role, pid: h.pid });
      return wrap(h, spec, role);
    },

    async migrateOut(vm, options = {}): Promise<OutgoingStream> {
      const h = handles.get(vm);
      if (!h) throw new Error(`VM ${vm.name} is not one of this driver's`);
      await h.qmp.migrateSetParameters({
        "max-bandwidth": Math.round(options.maxBandwidthBps ?? UNLIMITED_BPS),
        // The link is the link after the switch-over too (0: unlimited).
        "max-postcopy-bandwidth": Math.round(options.maxBandwidthBps ?? 0),
        ...(options.downtimeLimitMs ? { "downtime-limit": options.downtimeLimitMs } : {}),
      });
      await h.qmp.migrateSetCapabilities({ "postcopy-ram": options.postcopy === true, "auto-converge": options.autoConvergeMaxPercent !== undefined });
      if (options.autoConvergeMaxPercent !== undefined) await h.qmp.migrateSetParameters({ "max-cpu-throttle": options.autoConvergeMaxPercent });
      const proxy = await createSourceProxy({ socketPath: join(h.runDir, "out.sock") });
      // The guest stops for the final pass: the start of the downtime, by QEMU's clock.
      const stopped = h.qmp
        .waitForEvent((e) => e.event === "STOP", { timeoutMs: 24 * 3600_000 })
        .then((e) => e.timestamp.seconds * 1000 + Math.round(e.timestamp.microseconds / 1000));
      stopped.catch(() => undefined);
      try {
        await h.qmp.migrate(proxy.uri);
      } catch (err) {
        await proxy.close();
        throw err;
      }
      const records = (async function* (): AsyncGenerator<StreamRecord> {
        try {
          yield* proxy.records();
        } finally {
          await proxy.close();
        }
      })();
      return {
        records,
        nativeBytes: () => proxy.nativeBytes(),
        stopped,
        cancel: async () => {
          const info = await h.qmp.queryMigrate().catch(() => undefined);
          if (info?.status && !["completed", "failed", "cancelled", "none"].includes(info.status)) await h.qmp.migrateCancel().catch(() => undefined);
          await proxy.close();
        },
        figures: async () => {
          const info = await h.qmp.queryMigrate();
          return { remainingBytes: info.ram?.remaining ?? 0, dirtyPagesRate: info.ram?.["dirty-pages-rate"] ?? 0, dirtySyncCount: info.ram?.["dirty-sync-count"] ?? 0, status: info.status ?? "none", cpuThrottlePercent: info["cpu-throttle-percentage"] ?? 0 };
        },
        throttle: (bps) => h.qmp.migrateSetParameters({ "max-bandwidth": Math.max(1, Math.round(bps)) }),
        forceComplete: () => h.qmp.migrateSetParameters({ "downtime-limit": FORCE_DOWNTIME_MS }),
        startPostcopy: () => h.qmp.migrateStartPostcopy(),
        requestPages: (block, start, length) => proxy.sendReturnPath(encodeReqPages(block, start, length)),
      };
    },

    async migrateIn(vm, records, options = {}) {
      const h = handles.get(vm);
      if (!h) throw new Error(`VM ${vm.name} is not one of this driver's`);
      const sock = join(h.runDir, "in.sock");
      await h.qmp.migrateSetCapabilities({ "postcopy-ram": options.postcopy === true });
      await h.qmp.migrateIncoming(`unix:${sock}`);
      const written = await writeToDestination(records, { socketPath: sock, ...(options.onReturnPath ? { onReturnPath: options.onReturnPath } : {}) });
      options.onWritten?.();
      // Post-copy: QEMU completes once its last fault is served; the manifest's own progress
      // time-out has already bounded the wait for the stream itself.
      const info = await h.qmp.waitForMigration({ timeoutMs: options.postcopy ? 600_000 : 120_000 });
      if (info.status !== "completed") throw new Error(`the destination QEMU did not load the stream (status ${info.status}); ${h.stderrTail().slice(-300)}`);
      return { bytes: written.bytes };
    },
  };
}
