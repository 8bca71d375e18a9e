/**
 * The QemuDriver on real QEMU: the launcher starts VMs (file-backed RAM, QMP, serial), the
 * source proxy takes a VM's outgoing stream, and the destination proxy writes a rebuilt
 * stream into a VM started with -incoming defer -S.
 */
import { qemuVersion } from "../qemu/binary.ts";
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../../infra/log.ts";
import type { VmSpec } from "../../schemas/index.ts";
import { adoptVm, defaultVmUuid, startVm, vmPaths, type VmConfig, type VmHandle, type VmPaths } from "../qemu/vm.ts";
import { createSourceProxy } from "../qemu/sourceProxy.ts";
import { writeToDestination } from "../qemu/destinationProxy.ts";
import type { StreamRecord } from "../qemu/stream/records.ts";
import { encodeReqPages } from "../qemu/returnPath.ts";
import type { AdoptedVm, GoneVm, OutgoingStream, QemuDriver, RunningVm, VmRecordState, VmRole } from "./qemuDriver.ts";

export interface QemuDriverOptions {
  host: string;
  /** Parent of this host's VM run directories. */
  runDir: string;
  log: Logger;
  /** Time for a guest to print its ready pattern. @default 120000 */
  readyTimeoutMs?: number;
  /**
   * VMs outlive the agent (like libvirt's domains): QEMU runs in its own session without
   * pdeathsig, each VM has a record (RECORD_FILE in its run directory), and adopt() lets a
   * restarted agent take them back. A destination still incoming keeps a lifeline: it dies
   * with the agent until it is told to resume. Off: every QEMU dies with the agent.
   * @default false
   */
  vmsOutliveAgent?: boolean;
}

/** The record of a VM in its run directory: what a restarted agent needs to adopt it. */
export const RECORD_FILE = "gangway-vm.json";

interface VmRecordFile extends VmRecordState {
  version: 1;
  host: string;
  spec: VmSpec;
  role: VmRole;
  /** The QEMU's pid when it was last known (adoption finds it by its pid file and command line). */
  pid?: number;
  config: VmConfig & { uuid: string; tenant: string };
  paths: VmPaths;
  args: string[];
  updatedAt: string;
}

/** Writes a file whole or not at all (a temporary file renamed over it). */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
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
  /** RAM files of adopted QEMUs: reclaim never touches them. */
  const adoptedRam = new Set<string>();
  // RAM files live in one /dev/shm for the whole machine: two agents of the same host name
  // (two clusters or test runs side by side) must not share a VM's file, or one's start
  // removes the other's guest memory. Their run directories differ.
  const agentTag = createHash("sha256").update(o.runDir).digest("hex").slice(0, 8);
  const wrap = (h: VmHandle, spec: VmSpec, role: VmRole, record?: VmRecordFile): RunningVm => {
    let writes: Promise<void> = Promise.resolve();
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
      ...(record
        ? {
            remember: (s: VmRecordState) => {
              // A destination told to resume (or running) outlives the agent from now on.
              if (s.state !== "incoming") h.release();
              if (record.state === s.state && record.migrationId === s.migrationId && record.postcopy === s.postcopy) return writes;
              record.state = s.state;
              if (s.migrationId === undefined) delete record.migrationId;
              else record.migrationId = s.migrationId;
              if (s.postcopy === undefined) delete record.postcopy;
              else record.postcopy = s.postcopy;
              record.updatedAt = new Date().toISOString();
              const text = JSON.stringify(record, null, 2) + "\n";
              // One write at a time, in order; a VM quit meanwhile has no directory to write to.
              writes = writes.then(() => (h.isRunning ? writeAtomic(join(h.runDir, RECORD_FILE), text) : undefined)).catch((e: Error) => o.log.warn("VM record not written", { vm: spec.name, error: e }));
              return writes;
            },
            detach: () => h.detach(),
          }
        : {}),
    };
    handles.set(vm, h);
    return vm;
  };

  let version: Promise<string | undefined> | undefined;
  return {
    qemuVersion: () => (version ??= qemuVersion()),
    async reclaim() {
      // Only files no running QEMU uses: another agent of the same name on this machine (a
      // test, a second session) may be alive.
      const inUse = await ramFilesInUse();
      const prefix = `gangway-${o.host}-`;
      const stale = (await readdir(SHM).catch(() => [] as string[])).filter((f) => f.startsWith(prefix) && !inUse.has(join(SHM, f)) && !adoptedRam.has(join(SHM, f)));
      await Promise.all(stale.map((f) => rm(join(SHM, f), { force: true })));
      return stale;
    },
    async startVm(spec, role, tag) {
      const runDir = join(o.runDir, `${spec.name}-${role === "source" ? "src" : "dst"}-${tag}`.slice(0, 60));
      const runId = `${`${o.host}-${tag}`.slice(0, 60)}-${agentTag}`;
      await mkdir(o.runDir, { recursive: true });
      const config = { name: spec.name, tenant: spec.tenant, memoryMiB: spec.memoryMiB, ...(spec.kernel ? { kernel: spec.kernel } : {}), ...(spec.append ? { append: spec.append } : {}), ...(spec.initrd ? { initrd: spec.initrd } : {}), ...(spec.uuid ? { uuid: spec.uuid } : {}) };
      const survive = o.vmsOutliveAgent === true;
      let record: VmRecordFile | undefined;
      if (survive) {
        // Written before QEMU starts: a QEMU whose agent dies at once is still found (by its
        // pid file) and, if it was an incoming destination, quit.
        record = {
          version: 1, host: o.host, spec, role, config: { ...config, uuid: spec.uuid ?? defaultVmUuid(spec.tenant, spec.name) },
          paths: vmPaths(spec.name, role, runDir, runId), args: [], state: role === "source" ? "running" : "incoming", ...(role === "destination" ? { migrationId: tag } : {}), updatedAt: new Date().toISOString(),
        };
        await mkdir(runDir, { recursive: true });
        await writeAtomic(join(runDir, RECORD_FILE), JSON.stringify(record, null, 2) + "\n");
      }
      let h: VmHandle;
      try {
        h = await startVm(config, { role, runDir, host: o.host, runId, ...(survive ? { survive: true, lifeline: role === "destination" } : {}) });
      } catch (err) {
        if (survive) await rm(join(runDir, RECORD_FILE), { force: true });
        throw err;
      }
      try {
        if (record) {
          record.pid = h.pid;
          record.args = [...h.args];
          await writeAtomic(join(runDir, RECORD_FILE), JSON.stringify(record, null, 2) + "\n");
        }
        if (role === "source" && spec.readyPattern) await h.serial.waitFor(new RegExp(spec.readyPattern), o.readyTimeoutMs ?? 120_000);
      } catch (err) {
        await h[Symbol.asyncDispose]().catch(() => undefined);
        throw err;
      }
      o.log.info("VM started", { vm: spec.name, role, pid: h.pid, outlivesAgent: survive && role === "source" });
      return wrap(h, spec, role, record);
    },

    async adopt() {
      const adopted: AdoptedVm[] = [];
      const gone: GoneVm[] = [];
      if (o.vmsOutliveAgent !== true) return { adopted, gone };
      for (const entry of await readdir(o.runDir, { withFileTypes: true }).catch(() => [])) {
        if (!entry.isDirectory()) continue;
        const dir = join(o.runDir, entry.name);
        let record: VmRecordFile;
        try {
          record = JSON.parse(await readFile(join(dir, RECORD_FILE), "utf8")) as VmRecordFile;
          if (record.version !== 1 || record.host !== o.host || record.paths.runDir !== dir) throw new Error("not a record of this host's");
        } catch {
          continue; // no record (or not ours): reclaim and the launcher's own clean-up see to it
        }
        const state: VmRecordState = { state: record.state, ...(record.migrationId ? { migrationId: record.migrationId } : {}), ...(record.postcopy ? { postcopy: true } : {}) };
        let h: VmHandle | undefined;
        try {
          h = await adoptVm({ config: record.config, role: record.role, paths: record.paths, args: record.args });
        } catch (err) {
          // Alive, but QMP does not answer: leave it (and its files) alone; say so.
          o.log.error("a recorded QEMU is alive but cannot be re-attached; left as it is", { vm: record.spec.name, dir, error: err as Error });
          continue;
        }
        if (!h) {
          await rm(record.paths.ramPath, { force: true });
          await rm(dir, { recursive: true, force: true });
          gone.push({ name: record.spec.name, role: record.role, record: state });
          continue;
        }
        adoptedRam.add(h.ramPath);
        void h.exited.then(() => adoptedRam.delete(h.ramPath));
        const vm = wrap(h, record.spec, record.role, record);
        const status = await vm.status().catch(() => "unknown");
        o.log.info("VM adopted", { vm: record.spec.name, role: record.role, pid: h.pid, status, ...state });
        adopted.push({ vm, record: state, status });
      }
      return { adopted, gone };
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
      // A guest run again after that stop (a user's `cont` mid-migration) changed its RAM since.
      let stopSeen = false;
      let resumedSinceStop = false;
      h.qmp
        .waitForEvent((e) => (e.event === "STOP" ? ((stopSeen = true), false) : stopSeen && e.event === "RESUME"), { timeoutMs: 24 * 3600_000 })
        .then(() => (resumedSinceStop = true), () => undefined);
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
        resumedSinceStop: () => resumedSinceStop,
        cancel: async () => {
          const info = await h.qmp.queryMigrate().catch(() => undefined);
          if (info?.status && !["completed", "failed", "cancelled", "none"].includes(info.status)) await h.qmp.migrateCancel().catch(() => undefined);
          await proxy.close();
        },
        figures: async () => {
          const info = await h.qmp.queryMigrate();
          return { remainingBytes: info.ram?.remaining ?? 0, dirtyPagesRate: info.ram?.["dirty-pages-rate"] ?? 0, dirtySyncCount: info.ram?.["dirty-sync-count"] ?? 0, status: info.status ?? "none", cpuThrottlePercent: info["cpu-throttle-percentage"] ?? 0 };
        },
        throttle: (bps) => h.qmp.migrateSetParameters({ "max-bandwidth": Math.max(1, Math.round(bps ?? options.maxBandwidthBps ?? UNLIMITED_BPS)) }),
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
