/**
 * A minimal, private QEMU launcher and QMP client for the stream tests, until the
 * project's launcher (adapters/qemu/vm.ts) and QMP client (adapters/qemu/qmp.ts) land.
 * Every VM is killed by its own pid in dispose; its RAM file and sockets are removed.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { randomUUID } from "node:crypto";

export class TestQmp {
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }>();
  readonly events: { event: string; data?: unknown }[] = [];
  private constructor(private readonly socket: Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => this.onData(d));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      for (const p of this.pending.values()) p.reject(new Error(`QMP connection closed during ${p.cmd}`));
      this.pending.clear();
    });
  }

  static async connect(path: string, timeoutMs = 10_000): Promise<TestQmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const s = connect(path);
        await once(s, "connect");
        const q = new TestQmp(s);
        await q.greeting();
        await q.execute("qmp_capabilities");
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(30);
      }
    }
  }

  private greeted?: () => void;
  private greeting(): Promise<void> {
    return new Promise((resolve) => (this.greeted = resolve));
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as { QMP?: unknown; id?: number; return?: unknown; error?: { desc: string }; event?: string; data?: unknown };
      if (msg.QMP) this.greeted?.();
      else if (msg.event) this.events.push({ event: msg.event, data: msg.data });
      else if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (!p) continue;
        if (msg.error) p.reject(new Error(`QMP ${p.cmd}: ${msg.error.desc}`));
        else p.resolve(msg.return);
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    if (this.socket.destroyed || !this.socket.writable) return Promise.reject(new Error(`QMP connection closed before ${command}`));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, cmd: command });
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + "\n");
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

export interface TestVmOptions {
  /** Guest RAM in MiB. @default 256 */
  memMiB?: number;
  /** Bytes put into guest RAM at boot (-device loader). */
  image?: { file: string; addr: number };
  /** -incoming defer -S */
  incoming?: boolean;
  /** -S without incoming */
  paused?: boolean;
  kernel?: string;
  initrd?: string;
  append?: string;
  /** Serial console on a unix socket (path in vm.serialPath). */
  serial?: boolean;
  /** Extra QEMU arguments. */
  extra?: string[];
}

export interface TestVm extends AsyncDisposable {
  qmp: TestQmp;
  pid: number;
  memPath: string;
  serialPath: string;
  dir: string;
  proc: ChildProcess;
  stderr(): string;
  kill(): Promise<void>;
}

/** Starts QEMU under TCG with its RAM in /dev/shm, QMP on a unix socket. */
export async function launchVm(o: TestVmOptions = {}): Promise<TestVm> {
  const dir = await mkdtemp(join(tmpdir(), "gw-stream-vm-"));
  const memPath = `/dev/shm/gw-stream-${randomUUID()}`;
  const qmpPath = join(dir, "qmp.sock");
  const serialPath = join(dir, "serial.sock");
  const args = [
    "-machine", "pc,memory-backend=m0",
    "-accel", "tcg",
    "-m", `${o.memMiB ?? 256}M`,
    "-object", `memory-backend-file,id=m0,size=${o.memMiB ?? 256}M,mem-path=${memPath},share=on`,
    "-nodefaults", "-display", "none", "-no-user-config",
    "-qmp", `unix:${qmpPath},server=on,wait=off`,
  ];
  if (o.serial) args.push("-chardev", `socket,id=s0,path=${serialPath},server=on,wait=off`, "-serial", "chardev:s0");
  if (o.image) args.push("-device", `loader,file=${o.image.file},addr=0x${o.image.addr.toString(16)}`);
  if (o.kernel) args.push("-kernel", o.kernel);
  if (o.initrd) args.push("-initrd", o.initrd);
  if (o.append) args.push("-append", o.append);
  if (o.incoming) args.push("-incoming", "defer", "-S");
  else if (o.paused) args.push("-S");
  args.push(...(o.extra ?? []));
  const proc = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  proc.stderr!.setEncoding("utf8");
  proc.stderr!.on("data", (d: string) => (err += d));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  let qmp: TestQmp;
  try {
    qmp = await Promise.race([
      TestQmp.connect(qmpPath),
      exited.then(() => {
        throw new Error(`QEMU exited at start: ${err}`);
      }),
    ]);
  } catch (e) {
    proc.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
    await rm(memPath, { force: true });
    throw e;
  }
  let killed = false;
  const kill = async () => {
    if (killed) return;
    killed = true;
    qmp.close();
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGKILL");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
    await rm(memPath, { force: true });
  };
  return { qmp, pid: proc.pid!, memPath, serialPath, dir, proc, stderr: () => err, kill, [Symbol.asyncDispose]: kill };
}

/** Polls query-migrate until a terminal status. */
export async function waitMigration(qmp: TestQmp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = (await qmp.execute("query-migrate")) as { status?: string };
    if (r.status === "completed" || r.status === "failed" || r.status === "cancelled") return r.status;
    if (Date.now() > deadline) throw new Error(`migration still ${r.status} after ${timeoutMs} ms`);
    await sleep(25);
  }
}

export async function runState(qmp: TestQmp): Promise<string> {
  return ((await qmp.execute("query-status")) as { status: string }).status;
}

/** Saves the VM's migration stream to a file (QMP migrate "exec:cat > FILE"). */
export async function captureStream(vm: TestVm, file: string): Promise<void> {
  await vm.qmp.execute("migrate", { uri: `exec:cat > ${file}` });
  const s = await waitMigration(vm.qmp);
  if (s !== "completed") throw new Error(`capture migration ${s}`);
}

/** Reads guest-physical memory through pmemsave. */
export async function readGuestMemory(vm: TestVm, addr: number, size: number): Promise<Buffer> {
  const { readFile } = await import("node:fs/promises");
  const f = join(vm.dir, `pmem-${addr}-${size}-${Date.now()}.bin`);
  await vm.qmp.execute("pmemsave", { val: addr, size, filename: f });
  const b = await readFile(f);
  await rm(f, { force: true });
  return b;
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

/** Where test images go in guest RAM (32 MiB, clear of the firmware). */
export const IMAGE_ADDR = 0x2000000;
