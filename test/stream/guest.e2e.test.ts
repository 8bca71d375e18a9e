/**
 * Running guests through the proxies: the gangway test guest dirtying its 256 MiB while
 * it migrates (its own self-check must pass at the destination), and a Debian kernel
 * with a busybox initramfs (its shell must still answer on the serial console). Also the
 * codec on a multi-round stream captured from the dirtying guest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { migrateThroughProxies } from "../../adapters/qemu/proxyPipe.ts";
import { parseBuffer } from "../../adapters/qemu/stream/stream.ts";
import { encodeRecords } from "../../adapters/qemu/stream/encoder.ts";
import { captureStream, launchVm, runState, type TestVm } from "./helpers/qemu.ts";
import { TestSerial } from "./helpers/serial.ts";

const GUEST = join(process.cwd(), "guest/build/gangway-guest.elf");
const KERNEL = existsSync("/boot") ? readdirSync("/boot").filter((f) => f.startsWith("vmlinuz-")).sort().map((f) => join("/boot", f)).pop() : undefined;
const BUSYBOX = "/bin/busybox";

let dir: string;
const cleanup: (() => Promise<void> | void)[] = [];

async function vmWithSerial(o: Parameters<typeof launchVm>[0]): Promise<{ vm: TestVm; serial: TestSerial }> {
  const vm = await launchVm({ ...o, serial: true });
  cleanup.push(() => vm.kill());
  const serial = await TestSerial.connect(vm.serialPath);
  cleanup.push(() => serial.close());
  return { vm, serial };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "gw-guest-"));
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await Promise.resolve(c()).catch(() => undefined);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!existsSync(GUEST))("the gangway test guest through the proxies", () => {
  const guest = { kernel: GUEST, append: "seed=5 image=3 zero=25 shared=25 rate=1000" };

  it("a running, dirtying 256 MiB guest migrates and passes its own memory check after cont", async () => {
    const src = await vmWithSerial({ ...guest, paused: true });
    const dst = await vmWithSerial({ ...guest, incoming: true });
    await src.vm.qmp.execute("cont");
    await src.serial.waitFor(/READY pages=\d+/, 30_000);
    const report = await migrateThroughProxies({ sourceQmp: src.vm.qmp, destinationQmp: dst.vm.qmp });
    expect(report.ok).toBe(true);
    expect(report.nativeBytes).toBeGreaterThan(100 * 1024 * 1024);
    expect(await runState(dst.vm.qmp)).toBe("paused");
    await dst.vm.qmp.execute("cont");
    expect(await runState(dst.vm.qmp)).toBe("running");
    dst.serial.send("v");
    const { match } = await dst.serial.waitFor(/VERIFY (OK|FAIL)[^\n]*/, 30_000);
    expect(match[0]).toMatch(/^VERIFY OK/);
  });

  it("its multi-round stream parses into rounds and re-encodes byte-identically", async () => {
    const src = await vmWithSerial({ ...guest, paused: true });
    await src.vm.qmp.execute("cont");
    await src.serial.waitFor(/READY/, 30_000);
    // Slow the migration down so the guest dirties pages during it: several rounds.
    await src.vm.qmp.execute("migrate-set-parameters", { "max-bandwidth": 200 * 1024 * 1024 });
    const file = join(dir, "dirtying.stream");
    await captureStream(src.vm, file);
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
    const linux = { kernel: KERNEL!, initrd, append: "console=ttyS0 quiet panic=-1" };
    const src = await vmWithSerial({ ...linux, paused: true });
    const dst = await vmWithSerial({ ...linux, incoming: true });
    await src.vm.qmp.execute("cont");
    await src.serial.waitFor(/SHELL-READY/, 60_000);
    const n = Math.floor(Math.random() * 1e9);
    src.serial.send(`echo before-${n}\n`);
    await src.serial.waitFor(new RegExp(`\\r?\\nbefore-${n}\\r?\\n`), 10_000);

    const report = await migrateThroughProxies({ sourceQmp: src.vm.qmp, destinationQmp: dst.vm.qmp });
    expect(report.ok).toBe(true);
    expect(await runState(dst.vm.qmp)).toBe("paused");
    await dst.vm.qmp.execute("cont");
    expect(await runState(dst.vm.qmp)).toBe("running");
    dst.serial.send(`echo hello-${n}\n`);
    await dst.serial.waitFor(new RegExp(`\\r?\\nhello-${n}\\r?\\n`), 15_000);
  });
});
