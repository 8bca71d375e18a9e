/**
 * Native QEMU migrations of a workload's gang, all at once, through one shaped link, tuned
 * as a user would tune them:
 *   plain         pre-copy, max-bandwidth lifted (QEMU 7.2 caps at 32 MiB/s by default)
 *   multifd-zstd  the same plus multifd (2 channels) with zstd compression on both ends;
 *                 every channel is another TCP connection, and all of them go through the link.
 *   postcopy      plain pre-copy with postcopy-ram on both ends, switched to post-copy once the
 *                 first pass is done (virsh --postcopy-after-precopy); the destination is
 *                 resumed as soon as it has the device state, its pages follow.
 * Bytes are counted at the link (QEMU's own counters show uncompressed sizes). Time is from
 * the first `migrate` to the last destination that finished loading; downtime is QEMU's
 * (`query-migrate` on the source). Every destination is resumed and checked.
 */
import { join } from "node:path";
import { startVm, type VmHandle } from "../adapters/qemu/vm.ts";
import type { MigrationInfo } from "../adapters/qemu/qmp.ts";
import { verifyTestGuest } from "../adapters/qemu/testGuest.ts";
import { createLink, diffCounters, freePort } from "./shaper.ts";
import type { Workload } from "./workloads.ts";

export type NativeMode = "plain" | "multifd-zstd" | "postcopy";

/** QEMU 7.2 caps outgoing migration at 32 MiB/s by default; a user lifts it (the link limits). */
const UNLIMITED_BPS = 100 * 1024 ** 3;

export interface NativeVmResult {
  vm: string;
  status: string;
  /** QEMU's downtime (source query-migrate), ms; post-copy: from the switch-over to the destination running. */
  downtime_ms?: number;
  /** Post-copy: QEMU's own downtime figure (source stopped → package sent). */
  qemu_downtime_ms?: number;
  /** From the source stopping (QEMU's end − downtime) to the destination running after `cont`, ms. */
  downtime_to_resume_ms?: number;
  /** QEMU's total-time, ms. */
  total_time_ms?: number;
  /** QEMU's own counter (uncompressed; not the link bytes). */
  qemu_transferred?: number;
  dirty_sync_count?: number;
  verified: boolean;
  check: string;
}

export interface NativeResult {
  mode: NativeMode;
  completed: boolean;
  reason?: string;
  /** First migrate → last destination loaded, ms. */
  time_ms: number;
  /** Both directions at the link. */
  bytes_on_link: number;
  bytes_up: number;
  bytes_down: number;
  connections: number;
  vms: NativeVmResult[];
}

export interface NativeRunOptions {
  workload: Workload;
  mode: NativeMode;
  bytesPerSecond: number;
  /** Short directory for run dirs (unix socket paths are limited to 107 bytes). */
  baseDir: string;
  log?: (s: string) => void;
  /**
   * Post-copy: switch once QEMU has synced its dirty log this often (2: after the first
   * pass, as virsh --postcopy-after-precopy), after `throttleMs` at `throttleBps` (gangway's
   * schedule: passes, then a slow drain before the switch). @default { afterSyncs: 2 }
   */
  postcopySwitch?: { afterSyncs: number; throttleMs?: number; throttleBps?: number };
  /** Guest RAM of both ends. @default "shared-file" (as gangway runs VMs) */
  ram?: "shared-file" | "private";
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function runNative(o: NativeRunOptions): Promise<NativeResult> {
  const { workload: w, mode } = o;
  const log = o.log ?? (() => undefined);
  const link = createLink({ bytesPerSecond: o.bytesPerSecond });
  const pairs: { src: VmHandle; dst: VmHandle }[] = [];
  try {
    // Sources and destinations with the same configuration; destinations wait paused.
    const started = await Promise.allSettled(
      w.vms.map(async (v) => {
        const config = { name: v.name, memoryMiB: v.memoryMiB, kernel: v.kernel, append: v.append, ...(v.initrd ? { initrd: v.initrd } : {}) };
        const both = await Promise.allSettled([
          startVm(config, { role: "source", baseDir: o.baseDir, host: "nsrc", ram: o.ram }),
          startVm(config, { role: "destination", baseDir: o.baseDir, host: "ndst", ram: o.ram }),
        ]);
        const up = both.filter((b): b is PromiseFulfilledResult<VmHandle> => b.status === "fulfilled").map((b) => b.value);
        if (up.length < 2) {
          await Promise.allSettled(up.map((h) => h[Symbol.asyncDispose]()));
          throw (both.find((b) => b.status === "rejected") as PromiseRejectedResult).reason;
        }
        const [src, dst] = up as [VmHandle, VmHandle];
        pairs.push({ src, dst });
        return { src, dst };
      }),
    );
    const failed = started.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const gang = (started as PromiseFulfilledResult<{ src: VmHandle; dst: VmHandle }>[]).map((s) => s.value);
    await Promise.all(gang.map((p) => p.src.serial.waitFor(new RegExp(w.vms.find((v) => v.name === p.src.config.name)!.readyPattern), 180_000)));
    log(`${mode}: ${gang.length} source VM(s) ready`);

    // Tune both ends and open one relay per destination, all on the one link.
    const routes = await Promise.all(
      gang.map(async ({ src, dst }) => {
        if (mode === "multifd-zstd") {
          for (const h of [src, dst]) {
            await h.qmp.migrateSetCapabilities({ multifd: true });
            await h.qmp.migrateSetParameters({ "multifd-channels": 2, "multifd-compression": "zstd" });
          }
        }
        if (mode === "postcopy") for (const h of [src, dst]) await h.qmp.migrateSetCapabilities({ "postcopy-ram": true });
        await src.qmp.migrateSetParameters({ "max-bandwidth": UNLIMITED_BPS });
        const port = await freePort();
        await dst.qmp.migrateIncoming(`tcp:127.0.0.1:${port}`);
        const relay = await link.relay("127.0.0.1", port);
        return { src, dst, relay };
      }),
    );

    const before = link.counters();
    const t0 = performance.now();
    const results = await Promise.all(
      routes.map(async ({ src, dst, relay }): Promise<NativeVmResult & { loadedAt?: number }> => {
        const vm = src.config.name;
        const start = performance.now();
        await src.qmp.migrate(`tcp:127.0.0.1:${relay.port}`);
        // The destination has everything once its incoming migration completed.
        let loadedAt: number | undefined;
        let srcInfo: MigrationInfo = {};
        let postcopyResumedAt: number | undefined;
        let switched = false;
        let switchAt = 0;
        const deadline = start + w.timeLimitMs;
        for (;;) {
          const d = await dst.qmp.queryMigrate();
          if (d.status === "completed") {
            loadedAt = performance.now();
            break;
          }
          if (mode === "postcopy") {
            const sw = o.postcopySwitch ?? { afterSyncs: 2 };
            if (!switched && ((await src.qmp.queryMigrate()).ram?.["dirty-sync-count"] ?? 0) >= sw.afterSyncs) {
              if (sw.throttleMs) {
                await src.qmp.migrateSetParameters({ "max-bandwidth": sw.throttleBps ?? 1e6 });
                await sleep(sw.throttleMs);
              }
              await src.qmp.migrateStartPostcopy();
              switchAt = performance.now();
              switched = true;
            }
            // The destination has the devices (RUN done, -S keeps it paused): resume it now.
            if (postcopyResumedAt === undefined && d.status === "postcopy-active" && (await dst.qmp.queryStatus()).status === "paused") {
              await dst.qmp.cont();
              postcopyResumedAt = performance.now();
            }
          }
          if (d.status === "failed") break;
          srcInfo = await src.qmp.queryMigrate();
          if (srcInfo.status === "failed" || srcInfo.status === "cancelled") break;
          if (performance.now() > deadline) break;
          await sleep(20);
        }
        if (loadedAt === undefined) {
          const info = await src.qmp.queryMigrate();
          const status = info.status === "failed" ? "failed" : "not converged";
          if (info.status !== "failed") await src.qmp.migrateCancel().catch(() => undefined);
          log(`${mode}: ${vm} ${status} (${info.status}, ${info["error-desc"] ?? `${info.ram?.["dirty-sync-count"] ?? "?"} passes in ${Math.round(w.timeLimitMs / 1000)} s`})`);
          return { vm, status, verified: false, check: "", qemu_transferred: info.ram?.transferred, dirty_sync_count: info.ram?.["dirty-sync-count"] };
        }
        if (postcopyResumedAt === undefined) await dst.qmp.cont();
        const resumedAt = postcopyResumedAt ?? performance.now();
        srcInfo = await src.qmp.waitForMigration({ timeoutMs: 30_000 });
        const srcEnd = start + (srcInfo["total-time"] ?? 0);
        const stoppedAt = srcEnd - (srcInfo.downtime ?? 0);
        return {
          vm,
          status: srcInfo.status ?? "unknown",
          // Post-copy: QEMU's own figure ends when the package is sent; count to the destination
          // running, as gangway's downtime is counted.
          downtime_ms: postcopyResumedAt !== undefined ? Math.round(resumedAt - switchAt) : srcInfo.downtime,
          ...(postcopyResumedAt !== undefined ? { qemu_downtime_ms: srcInfo.downtime } : {}),
          // Post-copy: from asking for the switch-over (the source stops) to the destination running.
          downtime_to_resume_ms: Math.round(postcopyResumedAt !== undefined ? resumedAt - switchAt : resumedAt - stoppedAt),
          total_time_ms: srcInfo["total-time"],
          qemu_transferred: srcInfo.ram?.transferred,
          dirty_sync_count: srcInfo.ram?.["dirty-sync-count"],
          verified: false,
          check: "",
          loadedAt,
        };
      }),
    );
    const lastLoaded = Math.max(...results.map((r) => r.loadedAt ?? performance.now()));
    const time_ms = Math.round(lastLoaded - t0);
    // Let the relays go quiet (the tail of the stream, the sockets closing) before counting.
    await sleep(300);
    const bytes = diffCounters(before, link.counters());

    // Check every destination that received its VM.
    for (const r of results) {
      if (r.status !== "completed") continue;
      const dst = routes.find((x) => x.dst.config.name === r.vm)!.dst;
      try {
        if (w.verify === "test-guest") {
          const v = await verifyTestGuest(dst.serial, 120_000);
          r.verified = v.ok;
          r.check = v.ok ? `VERIFY OK pages=${v.pages}` : `VERIFY FAIL ${v.failures} first=${v.first}`;
        } else {
          const n = Math.floor(Math.random() * 1e9);
          const m = await dst.serial.request(`echo alive-${n}\n`, new RegExp(`^alive-${n}$`), 30_000);
          r.verified = true;
          r.check = m[0];
        }
      } catch (err) {
        r.check = (err as Error).message;
      }
    }
    const completed = results.every((r) => r.status === "completed");
    return {
      mode,
      completed,
      ...(completed ? {} : { reason: results.filter((r) => r.status !== "completed").map((r) => `${r.vm}: ${r.status}`).join(", ") }),
      time_ms,
      bytes_on_link: bytes.up + bytes.down,
      bytes_up: bytes.up,
      bytes_down: bytes.down,
      connections: bytes.connections,
      vms: results.map(({ loadedAt: _l, ...r }) => r),
    };
  } finally {
    await link.close();
    await Promise.allSettled(pairs.flatMap((p) => [p.src[Symbol.asyncDispose](), p.dst[Symbol.asyncDispose]()]));
  }
}

/** Where native runs put their VM run directories. */
export const nativeBaseDir = (work: string) => join(work, "n");
