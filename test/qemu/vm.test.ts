/**
 * The VM launcher and the QMP client against real QEMU: status, stop/cont with their
 * events, errors as typed classes, guest memory through pmemsave and the RAM file, start
 * failures carrying QEMU's own words, separate files for source and destination, and no
 * QEMU left behind when the Node process that started it dies.
 */
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  buildQemuArgs,
  isQmpCommandError,
  isVmAlreadyRunning,
  isVmConfigError,
  isVmStartError,
  sweepStaleVms,
  testGuestConfig,
  vmPaths,
  waitTestGuestReady,
  type QmpEvent,
} from "../../adapters/qemu/index.ts";
import { buildTestGuest, fleet, pageAt, randomName } from "./helpers.ts";

const vms = fleet();
beforeAll(buildTestGuest);
afterEach(() => vms.stopAll());

/** Alive and not a zombie waiting for whoever adopted it to reap it. */
const alive = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]![0] !== "Z";
  } catch {
    return false;
  }
};

describe("QMP against QEMU", () => {
  it("reports status, stops and continues with STOP/RESUME events, and types its errors", async () => {
    const vm = await vms.start(testGuestConfig(randomName("qmp")));
    await waitTestGuestReady(vm.serial, 15_000);
    expect(vm.qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(await vm.qmp.queryStatus()).toMatchObject({ running: true, status: "running" });

    const events: QmpEvent[] = [];
    const collecting = (async () => {
      for await (const e of vm.qmp.events()) {
        events.push(e);
        if (e.event === "RESUME") break;
      }
    })();
    const stopped = vm.qmp.waitForEvent("STOP", { timeoutMs: 5000 });
    await vm.qmp.stop();
    await stopped;
    expect(await vm.qmp.queryStatus()).toMatchObject({ running: false, status: "paused" });
    expect(await vm.qmp.humanMonitorCommand("info status")).toMatch(/paused/);
    const resumed = vm.qmp.waitForEvent("RESUME", { timeoutMs: 5000 });
    await vm.qmp.cont();
    await resumed;
    await collecting;
    expect(events.map((e) => e.event)).toEqual(["STOP", "RESUME"]);
    expect(events[0]!.timestamp.seconds).toBeGreaterThan(0);

    const notFound = await vm.qmp.execute("no-such-command").catch((e: unknown) => e);
    expect(isQmpCommandError(notFound) && notFound.errorClass).toBe("CommandNotFound");
    const badArgs = await vm.qmp.migrateIncoming("unix:/nonexistent/x.sock").catch((e: unknown) => e);
    expect(isQmpCommandError(badArgs)).toBe(true); // not started with -incoming
    // Several commands in flight at once each get their own answer.
    const [s, m, c] = await Promise.all([vm.qmp.queryStatus(), vm.qmp.queryMigrate(), vm.qmp.queryMigrateCapabilities()]);
    expect(s.status).toBe("running");
    expect(m.status ?? "none").toBe("none");
    expect(c.events).toBe(false);
    await vm.qmp.migrateSetCapabilities({ events: true });
    expect((await vm.qmp.queryMigrateCapabilities()).events).toBe(true);
    await vm.qmp.migrateSetParameters({ "max-bandwidth": 64 * 1024 * 1024, "downtime-limit": 250 });
    expect(await vm.qmp.queryMigrateParameters()).toMatchObject({ "max-bandwidth": 64 * 1024 * 1024, "downtime-limit": 250 });
  });

  it("sees guest memory at the same offsets in pmemsave and the RAM file", async () => {
    const vm = await vms.start(testGuestConfig(randomName("mem")));
    const ready = await waitTestGuestReady(vm.serial, 15_000);
    await vm.qmp.stop();
    const dump = join(vm.runDir, "pmem.bin");
    const first = ready.first + 100;
    await vm.qmp.pmemsave(first * 4096, 64 * 4096, dump);
    const [saved, ram] = await Promise.all([readFile(dump), readFile(vm.ramPath)]);
    expect(saved.equals(ram.subarray(first * 4096, (first + 64) * 4096))).toBe(true);
    expect(pageAt(ram, first).some((b) => b !== 0) || pageAt(ram, first + 1).some((b) => b !== 0)).toBe(true);
  });
});

describe("VM launcher", () => {
  it("fails with QEMU's own stderr when QEMU cannot start (missing kernel)", async () => {
    const missing = "/nonexistent/gangway-kernel.elf";
    const err = await vms.start({ name: randomName("bad"), memoryMiB: 64, kernel: missing }).catch((e: unknown) => e);
    expect(isVmStartError(err)).toBe(true);
    if (!isVmStartError(err)) return;
    expect(err.name).toBe("VmStartError");
    expect(err.stderrTail).toContain(missing); // "qemu: could not load kernel '...'"
    expect(err.message).toContain("QEMU said");
  });

  it("rejects configs that cannot work before running anything", async () => {
    for (const config of [
      { name: "has/slash", memoryMiB: 64, kernel: "k" },
      { name: "nokernel", memoryMiB: 64 },
      { name: "tiny", memoryMiB: 4, kernel: "k" },
    ]) {
      const err = await vms.start(config).catch((e: unknown) => e);
      expect(isVmConfigError(err), config.name).toBe(true);
    }
  });

  it("gives source and destination of one VM their own files, the same machine, and -incoming defer -S", async () => {
    const config = testGuestConfig(randomName("pair"), { seed: 2 });
    const src = await vms.start(config);
    const dst = await vms.start(config, { role: "destination" });
    expect(new Set([src.runDir, dst.runDir]).size).toBe(2);
    expect(new Set([src.ramPath, dst.ramPath]).size).toBe(2);
    expect(new Set([src.paths.qmpSocket, dst.paths.qmpSocket]).size).toBe(2);
    expect(dst.config.uuid).toBe(src.config.uuid);
    expect(dst.args.slice(-3)).toEqual(["-incoming", "defer", "-S"]);
    // Apart from paths and the incoming flags, the command lines are identical.
    const norm = (args: readonly string[], runDir: string, ram: string) => args.map((a) => a.replaceAll(runDir, "RUN").replaceAll(ram, "RAM"));
    expect(norm(dst.args, dst.runDir, dst.ramPath).slice(0, -3)).toEqual(norm(src.args, src.runDir, src.ramPath));
    expect(await dst.qmp.queryStatus()).toMatchObject({ running: false, status: "inmigrate" });
    expect(src.args).toEqual(expect.arrayContaining(["-nodefaults", "-no-user-config", "-accel", "tcg", "-machine", "pc,memory-backend=m0"]));

    const again = await vms.start(config, { role: "destination" }).catch((e: unknown) => e);
    expect(isVmAlreadyRunning(again)).toBe(true);
  });

  it("builds the documented command line", () => {
    const paths = vmPaths("vm1", "source", "/run/x", "r1");
    const args = buildQemuArgs({ name: "vm1", memoryMiB: 256, kernel: "/k.elf", append: "seed=1", uuid: "00000000-0000-4000-8000-000000000001" }, paths);
    const joined = args.join(" ");
    expect(joined).toContain("-object memory-backend-file,id=m0,size=256M,mem-path=/dev/shm/gangway-r1-vm1-src,share=on");
    expect(joined).toContain("-qmp unix:/run/x/qmp.sock,server=on,wait=off");
    expect(joined).toContain("-uuid 00000000-0000-4000-8000-000000000001");
    expect(joined).toContain("-kernel /k.elf -append seed=1");
    expect(args).not.toContain("-incoming");
  });

  it("kill() ends QEMU at once and still cleans up its RAM file", async () => {
    const vm = await vms.start(testGuestConfig(randomName("kill")));
    await waitTestGuestReady(vm.serial, 15_000);
    vm.kill();
    expect(await vm.exited).toEqual({ code: null, signal: "SIGKILL" });
    expect(vm.isRunning).toBe(false);
    expect(existsSync(vm.ramPath)).toBe(false);
    expect(await vm.stop()).toEqual({ code: null, signal: "SIGKILL" }); // idempotent
  });

  it("leaves no QEMU behind when the Node process that started it is killed", async () => {
    const fixture = fileURLToPath(new URL("./fixtures/vmChild.ts", import.meta.url));
    const child = spawn(process.execPath, ["--import", "tsx", fixture, vms.baseDir, randomName("orphan")], { stdio: ["ignore", "pipe", "inherit"] });
    const info = await new Promise<{ pid: number; ramPath: string }>((resolve, reject) => {
      let out = "";
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(JSON.parse(out));
      });
      child.once("exit", (code) => reject(new Error(`fixture exited with ${code}`)));
    });
    try {
      expect(alive(info.pid)).toBe(true);
      child.kill("SIGKILL"); // no exit hooks run: only the kernel's parent-death signal can help
      const deadline = Date.now() + 5000;
      while (alive(info.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(alive(info.pid)).toBe(false);
      // Its RAM file outlives it; a sweep (or restarting the same VM) removes it.
      expect(existsSync(info.ramPath)).toBe(true);
      expect(await sweepStaleVms(vms.baseDir)).toEqual([info.ramPath]);
      expect(existsSync(info.ramPath)).toBe(false);
    } finally {
      if (alive(info.pid)) process.kill(info.pid, "SIGKILL");
      child.kill("SIGKILL");
      await rm(info.ramPath, { force: true });
    }
  });
});
