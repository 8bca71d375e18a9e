/**
 * Running guests through the proxies: the gangway test guest dirtying its 256 MiB while
 * it migrates (its own self-check must pass at the destination), and a Debian kernel
 * with a busybox initramfs (its shell must still answer on the serial console). Also the
 * codec on a multi-round stream captured from the dirtying guest.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chmod, copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { migrateThroughProxies } from "../../adapters/qemu/proxyPipe.ts";
import { parseBuffer } from "../../adapters/qemu/stream/stream.ts";
import { encodeRecords } from "../../adapters/qemu/stream/encoder.ts";
import type { VmConfig, VmHandle } from "../../adapters/qemu/vm.ts";
import { captureStream, runState, streamFleet, TEST_GUEST as GUEST, vmName, type StreamFleet } from "./helpers/vms.ts";

const KERNEL = existsSync("/boot") ? readdirSync("/boot").filter((f) => f.startsWith("vmlinuz-")).sort().map((f) => join("/boot", f)).pop() : undefined;
const BUSYBOX = "/bin/busybox";

let fleet: StreamFleet;
let dir: string;

/** The same config as source and as destination (-incoming defer -S). */
async function pair(config: VmConfig): Promise<{ src: VmHandle; dst: VmHandle }> {
  const src = await fleet.start(config);
  const dst = await fleet.start(config, { role: "destination" });
  return { src, dst };
}

beforeAll(async () => {
  fleet = await streamFleet();
  dir = fleet.dir;
});

afterEach(async () => {
  await fleet.stopVms();
});

afterAll(async () => {
  await fleet?.stopAll();
});

describe.skipIf(!existsSync(GUEST))("the gangway test guest through the proxies", () => {
  const guest = (): VmConfig => ({ name: vmName("tg"), memoryMiB: 256, kernel: GUEST, append: "seed=5 image=3 zero=25 shared=25 rate=1000" });

  it("a running, dirtying 256 MiB guest migrates and passes its own memory check after cont", async () => {
    const { src, dst } = await pair(guest());
    await src.serial.waitFor(/READY pages=\d+/, 30_000);
    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp });
    expect(report.ok).toBe(true);
    expect(report.nativeBytes).toBeGreaterThan(100 * 1024 * 1024);
    expect(await runState(dst)).toBe("paused");
    await dst.qmp.cont();
    expect(await runState(dst)).toBe("running");
    const verdict = await dst.serial.request("v", /VERIFY (OK|FAIL).*/, 30_000);
    expect(verdict[0]).toMatch(/^VERIFY OK/);
  });

  it("its multi-round stream parses into rounds and re-encodes byte-identically", async () => {
    const src = await fleet.start(guest());
    await src.serial.waitFor(/READY/, 30_000);
    // Slow the migration down so the guest dirties pages during it: several rounds.
    await src.qmp.migrateSetParameters({ "max-bandwidth": 200 * 1024 * 1024 });
    const file = join(dir, "dirtying.stream");
    await captureStream(src, file);
    const stream = await readFile(file);
    const records = parseBuffer(stream);
    const rounds = records.filter((r) => r.type === "round").length;
    expect(rounds).toBeGreaterThan(1);
    expect(encodeRecords(records).equals(stream)).toBe(true);
    await rm(file, { force: true });
  });
});

/** A gzip'd newc initramfs: busybox and an /init that mounts devtmpfs and runs a shell on the console. */
async function buildInitramfs(at: string): Promise<string> {
  const root = join(at, "root");
  for (const d of ["bin", "dev", "proc", "sys", "tmp"]) await mkdir(join(root, d), { recursive: true });
  await copyFile(BUSYBOX, join(root, "bin/busybox"));
  await chmod(join(root, "bin/busybox"), 0o755);
  const init = [
    "#!/bin/busybox sh",
    "/bin/busybox --install -s /bin",
    "mount -t devtmpfs devtmpfs /dev",
    "mount -t proc proc /proc",
    "echo SHELL-READY",
    "exec sh",
    "",
  ].join("\n");
  await writeFile(join(root, "init"), init, { mode: 0o755 });
  const out = join(at, "initramfs.cpio.gz");
  execFileSync("sh", ["-c", `cd "${root}" && find . | cpio -o -H newc --quiet | gzip -1 > "${out}"`]);
  return out;
}

describe.skipIf(!KERNEL || !existsSync(BUSYBOX))("a Debian kernel with a busybox initramfs through the proxies", () => {
  it("migrates while running and its shell still answers on the serial console", async () => {
    const initrd = await buildInitramfs(dir);
    const linux: VmConfig = { name: vmName("linux"), memoryMiB: 256, kernel: KERNEL!, initrd, append: "console=ttyS0 quiet panic=-1" };
    const { src, dst } = await pair(linux);
    await src.serial.waitFor(/SHELL-READY/, 60_000);
    const n = Math.floor(Math.random() * 1e9);
    await src.serial.request(`echo before-${n}\n`, new RegExp(`^before-${n}$`), 10_000);

    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp });
    expect(report.ok).toBe(true);
    expect(await runState(dst)).toBe("paused");
    await dst.qmp.cont();
    expect(await runState(dst)).toBe("running");
    // The shell answers at the destination (the line it prints, not the echo of what we typed).
    await dst.serial.request(`echo hello-${n}\n`, new RegExp(`^hello-${n}$`), 15_000);
  });
});
