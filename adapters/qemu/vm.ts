/**
 * Starts QEMU VMs for gangway: a VmConfig becomes one QEMU command line (the same on both
 * ends of a migration; the destination adds `-incoming defer -S`). Guest RAM lives in a
 * shared file under /dev/shm, so a scanner can read it at the offsets the migration
 * stream uses. Each VM gets a run directory with its sockets, logs and pid file; QMP and
 * the serial console come connected. By default QEMU dies with the Node process that
 * started it; with `survive` it outlives it (a host agent's VMs, like libvirt's domains),
 * and adoptVm() re-attaches a later process to it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { accessSync, closeSync, constants as fsConstants, createWriteStream, existsSync, openSync, readSync, rmSync, fstatSync } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { PassThrough } from "node:stream";
import { hostname, tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { defaultQemuBinary, firmwareDirArgs } from "./binary.ts";
import { VmAlreadyRunningError, VmConfigError, VmStartError } from "./errors.ts";
import { connectQmp, type QmpClient } from "./qmp.ts";
import { SerialConsole } from "./serial.ts";

export const VmRole = { Source: "source", Destination: "destination" } as const;
export type VmRole = (typeof VmRole)[keyof typeof VmRole];

/**
 * What makes a VM: the same config started on two hosts makes two migration-compatible
 * QEMUs. Structurally compatible with schemas' VmSpec.
 */
export interface VmConfig {
  /** A token (letters, digits, `_`, `-`, `.`): names the run directory, memory file and `-name`. */
  name: string;
  /** Tenant the VM belongs to; recorded in the run directory's vm.json. @default "default" */
  tenant?: string;
  /** Guest RAM in MiB (`-m`, and the size of the memory file). */
  memoryMiB: number;
  /** Kernel for `-kernel` (multiboot test guest or Linux). Either this or `disk`. */
  kernel?: string;
  /** Kernel command line (`-append`). */
  append?: string;
  /** Initial ramdisk (`-initrd`). */
  initrd?: string;
  /** Disk image, attached as a virtio disk. Either this or `kernel`. */
  disk?: string;
  /** Format of `disk`. @default "raw" */
  diskFormat?: "raw" | "qcow2";
  /** SMBIOS UUID (`-uuid`). @default derived from tenant and name, so both ends agree */
  uuid?: string;
  /** Virtual CPUs (`-smp`). @default 1 */
  cpus?: number;
  /** CPU model (`-cpu`). @default QEMU's default (qemu64) */
  cpu?: string;
  /** More QEMU arguments, appended verbatim (both ends must get the same). @default [] */
  extraArgs?: readonly string[];
}

/** Where a VM's files are. */
export interface VmPaths {
  runDir: string;
  qmpSocket: string;
  serialSocket: string;
  /** Everything the guest printed on its serial port. */
  serialLog: string;
  /** QEMU's stdout and stderr. */
  qemuLog: string;
  pidFile: string;
  /** The guest RAM file (memory-backend-file m0): offset = guest-physical address below the PCI hole. */
  ramPath: string;
}

export interface StartVmOptions {
  /** Source runs the guest; destination waits paused for `migrate-incoming`. @default "source" */
  role?: VmRole;
  /** The VM's run directory. @default join(baseDir, host, name, role) */
  runDir?: string;
  /** Parent of run directories. @default join(os.tmpdir(), "gangway-run") */
  baseDir?: string;
  /** Host name in the default run directory (several simulated hosts may share a machine). @default os.hostname() */
  host?: string;
  /** Tag in the memory file's name, e.g. a migration id. @default 8 random hex digits */
  runId?: string;
  /** Directory of the guest RAM file; must be a RAM-backed file system to be fast. @default "/dev/shm" */
  shmDir?: string;
  /** Guest RAM: the shared file (readable by scanners and proofs), or private memory with no file (controls only). @default "shared-file" */
  ram?: "shared-file" | "private";
  /** The QEMU binary. @default $GANGWAY_QEMU, else "qemu-system-x86_64" */
  qemuBinary?: string;
  /** Start the source paused too (`-S`); a destination always is. @default false */
  paused?: boolean;
  /** Incoming URI of a destination; "defer" means: given later with migrate-incoming. @default "defer" */
  incoming?: string;
  /** Time for QEMU to open its sockets. @default 20_000 */
  startTimeoutMs?: number;
  /** How long stop() waits after `quit` before SIGKILL. @default 5_000 */
  stopTimeoutMs?: number;
  /** Default time for each QMP command. @default 30_000 */
  commandTimeoutMs?: number;
  /** Kill QEMU when the process that started it dies (setpriv --pdeathsig, when available). @default true */
  dieWithParent?: boolean;
  /**
   * QEMU outlives the process that started it: no pdeathsig, its own session (a signal to
   * the starter's process group does not reach it), its output straight to qemu.log (no
   * pipe to break), not killed by this process's exit hook. adoptVm() re-attaches to it.
   * @default false
   */
  survive?: boolean;
  /**
   * With `survive`: until `release()`, a small watcher (sh, reading a pipe from this
   * process) SIGKILLs QEMU when this process dies, however it dies — for a destination
   * that must never outlive the agent while it is still incoming. @default false
   */
  lifeline?: boolean;
  /** Leave the run directory (logs) after disposal. @default false */
  keepRunDir?: boolean;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface VmHandle extends AsyncDisposable {
  /** The config as started (uuid and tenant filled in). */
  readonly config: Readonly<VmConfig & { uuid: string; tenant: string }>;
  readonly role: VmRole;
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly serial: SerialConsole;
  /** The guest RAM file (see VmPaths.ramPath); removed when QEMU exits. */
  readonly ramPath: string;
  readonly runDir: string;
  readonly paths: VmPaths;
  /** QEMU's full argument list. */
  readonly args: readonly string[];
  /** Settles when QEMU has exited and its files are cleaned up. */
  readonly exited: Promise<VmExit>;
  readonly isRunning: boolean;
  /** The last part of QEMU's stderr and stdout. */
  stderrTail(): string;
  /** Sends a signal now (default SIGKILL); does not wait. */
  kill(signal?: NodeJS.Signals): void;
  /** Cuts the lifeline (StartVmOptions.lifeline): from now on QEMU outlives this process. */
  release(): void;
  /** Closes QMP and the serial console and leaves QEMU running (a surviving VM, for a later adoptVm()). */
  detach(): Promise<void>;
  /** `quit` over QMP, then SIGKILL after stopTimeoutMs; resolves when QEMU is gone and cleaned up. */
  stop(opts?: { timeoutMs?: number }): Promise<VmExit>;
  /** stop(), then removes the run directory unless keepRunDir. */
  [Symbol.asyncDispose](): Promise<void>;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const TAIL_BYTES = 16 * 1024;

/** The files of a VM in `runDir`, with its RAM file in `shmDir`. */
export function vmPaths(name: string, role: VmRole, runDir: string, runId: string, shmDir = "/dev/shm"): VmPaths {
  return {
    runDir,
    qmpSocket: join(runDir, "qmp.sock"),
    serialSocket: join(runDir, "serial.sock"),
    serialLog: join(runDir, "serial.log"),
    qemuLog: join(runDir, "qemu.log"),
    pidFile: join(runDir, "qemu.pid"),
    ramPath: join(shmDir, `gangway-${runId}-${name}-${role === "source" ? "src" : "dst"}`),
  };
}

/** A stable UUID (version 5 layout) from tenant and name: both ends of a migration agree. */
export function defaultVmUuid(tenant: string, name: string): string {
  const h = createHash("sha1").update(`gangway:${tenant}/${name}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/**
 * The QEMU arguments for `config` (without the binary). Pure: both ends of a migration
 * differ only in the paths and, on the destination, `-incoming <uri> -S`.
 */
export function buildQemuArgs(
  config: VmConfig,
  paths: VmPaths,
  opts: { role?: VmRole; paused?: boolean; incoming?: string; ram?: "shared-file" | "private" } = {},
): string[] {
  validateConfig(config);
  for (const p of [paths.qmpSocket, paths.serialSocket, paths.serialLog, paths.ramPath, paths.pidFile]) {
    if (p.includes(",")) throw new VmConfigError(config.name, `path ${p} contains a comma, which QEMU options cannot carry`);
  }
  const tenant = config.tenant ?? "default";
  const mem = `${config.memoryMiB}M`;
  const args = [
    "-name", config.name,
    "-uuid", config.uuid ?? defaultVmUuid(tenant, config.name),
    "-machine", "pc,memory-backend=m0",
    "-accel", "tcg",
    "-m", mem,
    "-object", opts.ram === "private" ? `memory-backend-ram,id=m0,size=${mem}` : `memory-backend-file,id=m0,size=${mem},mem-path=${paths.ramPath},share=on`,
    "-smp", String(config.cpus ?? 1),
    ...(config.cpu ? ["-cpu", config.cpu] : []),
    "-nodefaults", "-no-user-config", "-display", "none",
    "-qmp", `unix:${paths.qmpSocket},server=on,wait=off`,
    // QEMU connects to a socket we already listen on: nothing it prints is lost, even
    // before we attach, and the log file keeps it all.
    // reconnect=1: a process that adopts a surviving QEMU listens there again, and QEMU
    // comes back to it within a second (the guest's output meanwhile is dropped).
    "-chardev", `socket,id=ser0,path=${paths.serialSocket},server=off,reconnect=1,logfile=${paths.serialLog},logappend=on`,
    "-serial", "chardev:ser0",
    "-pidfile", paths.pidFile,
  ];
  if (config.kernel) {
    args.push("-kernel", config.kernel);
    if (config.append) args.push("-append", config.append);
    if (config.initrd) args.push("-initrd", config.initrd);
  } else if (config.disk) {
    args.push("-drive", `file=${config.disk.replaceAll(",", ",,")},format=${config.diskFormat ?? "raw"},if=virtio`);
  }
  args.push(...(config.extraArgs ?? []));
  if ((opts.role ?? "source") === "destination") args.push("-incoming", opts.incoming ?? "defer", "-S");
  else if (opts.paused) args.push("-S");
  return args;
}

function validateConfig(c: VmConfig): void {
  if (!NAME_RE.test(c.name)) throw new VmConfigError(c.name, "name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit");
  if (!Number.isInteger(c.memoryMiB) || c.memoryMiB < 16) throw new VmConfigError(c.name, `memoryMiB must be an integer >= 16 (got ${c.memoryMiB})`);
  if (!c.kernel === !c.disk) throw new VmConfigError(c.name, "give exactly one of kernel and disk");
  if (!c.kernel && (c.append || c.initrd)) throw new VmConfigError(c.name, "append and initrd need a kernel");
  if (c.cpus !== undefined && (!Number.isInteger(c.cpus) || c.cpus < 1)) throw new VmConfigError(c.name, `cpus must be a positive integer (got ${c.cpus})`);
}

// ---- process bookkeeping: no orphans --------------------------------------------------

interface Live {
  child: ChildProcess;
  ramPath: string;
}
const live = new Set<Live>();
let exitHookInstalled = false;

/** On any normal exit of Node, kill what we started and remove its RAM files (sync: 'exit' allows nothing else). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const l of live) {
      try {
        l.child.kill("SIGKILL");
      } catch {
        /* already gone */
      }
      rmSync(l.ramPath, { force: true });
    }
  });
}

let setprivPath: string | null | undefined;
/** setpriv(1) from util-linux, if installed: it sets PR_SET_PDEATHSIG, then execs QEMU. */
function findSetpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  setprivPath = null;
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter)) {
    const p = join(dir, "setpriv");
    try {
      accessSync(p, fsConstants.X_OK);
      setprivPath = p;
      break;
    } catch {
      /* next */
    }
  }
  return setprivPath;
}

/** The pid of the live QEMU that owns this run directory, if any. */
async function livePid(paths: Pick<VmPaths, "pidFile" | "qmpSocket">): Promise<number | undefined> {
  const text = await readFile(paths.pidFile, "utf8").catch(() => "");
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  return cmdline.includes("qemu") && cmdline.includes(paths.qmpSocket) ? pid : undefined;
}

/**
 * Removes what a dead QEMU left in `runDir` (its RAM file, named in vm.json, sockets,
 * pid file): after a SIGKILL of the whole process tree nobody else would. Returns the
 * RAM files removed; does nothing while a live QEMU owns the directory.
 */
async function cleanStaleRun(runDir: string): Promise<string[]> {
  const meta = await readFile(join(runDir, "vm.json"), "utf8").catch(() => undefined);
  if (meta === undefined) return [];
  let old: Partial<VmPaths> = {};
  try {
    old = (JSON.parse(meta) as { paths?: Partial<VmPaths> }).paths ?? {};
  } catch {
    /* unreadable: treat as no record */
  }
  const here = { pidFile: join(runDir, "qemu.pid"), qmpSocket: join(runDir, "qmp.sock") };
  if ((await livePid(here)) !== undefined) return [];
  const ram = typeof old.ramPath === "string" && existsSync(old.ramPath) ? [old.ramPath] : [];
  await Promise.all([...ram, here.pidFile, here.qmpSocket, join(runDir, "serial.sock")].map((p) => rm(p, { force: true })));
  return ram;
}

/**
 * Cleans every run directory under `baseDir` whose QEMU is gone (see StartVmOptions.baseDir
 * for the layout); for a host agent at start-up. Returns the RAM files removed.
 * @default baseDir join(os.tmpdir(), "gangway-run")
 */
export async function sweepStaleVms(baseDir = join(tmpdir(), "gangway-run")): Promise<string[]> {
  const removed: string[] = [];
  const dirs = async (d: string) => (await readdir(d, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory()).map((e) => join(d, e.name));
  for (const host of await dirs(baseDir)) {
    for (const vm of await dirs(host)) {
      for (const role of await dirs(vm)) removed.push(...(await cleanStaleRun(role)));
    }
  }
  return removed;
}

/** The last TAIL_BYTES of a file (QEMU's log of a surviving VM), or "". */
function fileTail(path: string): string {
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    const size = fstatSync(fd).size;
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString("utf8");
  } catch {
    return "";
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * A watcher that SIGKILLs `pid` when this process dies: it reads a pipe whose only writer
 * is this process, and the kernel closes that pipe however we die (SIGKILL included). Its
 * own session, so a signal to our process group does not take it first. Killing the
 * watcher (release) cuts the line.
 */
function startLifeline(pid: number): ChildProcess {
  const w = spawn("/bin/sh", ["-c", 'while read -r _; do :; done; kill -KILL "$0" 2>/dev/null', String(pid)], { stdio: ["pipe", "ignore", "ignore"], detached: true });
  w.on("error", () => undefined);
  w.unref();
  (w.stdin as Socket | null)?.unref();
  w.stdin?.on("error", () => undefined);
  return w;
}

function listenUnix(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}

// ---- starting -------------------------------------------------------------------------

/**
 * Starts QEMU for `config` and returns once QMP is negotiated and the serial console is
 * attached. A destination starts paused with `-incoming defer`: call
 * `qmp.migrateIncoming(uri)` next.
 * @throws VmConfigError for a config that cannot work
 * @throws VmAlreadyRunningError when a live QEMU owns the run directory
 * @throws VmStartError (with the tail of QEMU's stderr) when QEMU does not come up
 */
export async function startVm(config: VmConfig, opts: StartVmOptions = {}): Promise<VmHandle> {
  validateConfig(config);
  const role = opts.role ?? "source";
  const host = opts.host ?? hostname();
  const runDir = opts.runDir ?? join(opts.baseDir ?? join(tmpdir(), "gangway-run"), host, config.name, role);
  const runId = opts.runId ?? randomBytes(4).toString("hex");
  const paths = vmPaths(config.name, role, runDir, runId, opts.shmDir);
  for (const s of [paths.qmpSocket, paths.serialSocket]) {
    if (Buffer.byteLength(s) > MAX_SOCKET_PATH) {
      throw new VmConfigError(config.name, `socket path ${s} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter runDir or baseDir`);
    }
  }
  const tenant = config.tenant ?? "default";
  const resolved = { ...config, tenant, uuid: config.uuid ?? defaultVmUuid(tenant, config.name) };
  const binary = opts.qemuBinary ?? defaultQemuBinary();
  const args = [...firmwareDirArgs(binary), ...buildQemuArgs(resolved, paths, { role, paused: opts.paused, incoming: opts.incoming, ram: opts.ram })];

  await mkdir(runDir, { recursive: true });
  const running = await livePid(paths);
  if (running !== undefined) throw new VmAlreadyRunningError(config.name, running, runDir);
  await cleanStaleRun(runDir);
  // A RAM file left behind would become the new guest's memory: start from nothing.
  await Promise.all([paths.qmpSocket, paths.serialSocket, paths.pidFile, paths.ramPath].map((p) => rm(p, { force: true })));
  await writeFile(join(runDir, "vm.json"), JSON.stringify({ config: resolved, role, runId, host, paths, args }, null, 2) + "\n");

  const serialServer = await listenUnix(paths.serialSocket);
  const serialConnected = new Promise<Socket>((resolve) => serialServer.once("connection", resolve));

  const survive = opts.survive === true;
  const setpriv = opts.dieWithParent === false || survive ? null : findSetpriv();
  const [cmd, argv] = setpriv ? [setpriv, ["--pdeathsig", "KILL", "--", binary, ...args]] : [binary, args];
  let child: ChildProcess;
  let log: ReturnType<typeof createWriteStream> | undefined;
  let tail = "";
  let lifeline: ChildProcess | undefined;
  let entry: Live | undefined;
  if (survive) {
    // Output straight to the log file: a pipe would break (and could stop QEMU) when we die.
    const fd = openSync(paths.qemuLog, "a");
    try {
      child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], cwd: runDir, detached: true });
    } finally {
      closeSync(fd);
    }
    child.unref();
    if (opts.lifeline && child.pid !== undefined) lifeline = startLifeline(child.pid);
  } else {
    installExitHook();
    child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], cwd: runDir });
    entry = { child, ramPath: paths.ramPath };
    live.add(entry);
    // Output: all of it to qemu.log, the tail in memory for error messages.
    const out = createWriteStream(paths.qemuLog, { flags: "a" });
    log = out;
    const onOutput = (chunk: Buffer) => {
      out.write(chunk);
      tail = (tail + chunk.toString("utf8")).slice(-TAIL_BYTES);
    };
    child.stdout!.on("data", onOutput);
    child.stderr!.on("data", onOutput);
  }
  const outputTail = () => (survive ? fileTail(paths.qemuLog) : tail);
  let spawnError: Error | undefined;
  child.once("error", (err) => (spawnError = err));

  // 'close' comes after the exit and the end of stdout/stderr: the tail is then complete.
  const closedProcess = new Promise<VmExit>((resolve) => {
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
  let cleanupPromise: Promise<void> | undefined;
  let qmp: QmpClient | undefined;
  let serial: SerialConsole | undefined;
  const cleanup = () =>
    (cleanupPromise ??= (async () => {
      if (entry) live.delete(entry);
      lifeline?.kill("SIGKILL");
      serialServer.close();
      await Promise.allSettled([qmp?.close(), serial?.close(), new Promise<void>((r) => (log ? log.end(r) : r()))]);
      await Promise.all([paths.ramPath, paths.qmpSocket, paths.serialSocket, paths.pidFile].map((p) => rm(p, { force: true })));
    })());
  const exited = closedProcess.then(async (exit) => {
    await cleanup();
    return exit;
  });

  const abort = new AbortController();
  void closedProcess.then(() => abort.abort(new Error("QEMU exited")));
  const startTimeoutMs = opts.startTimeoutMs ?? 20_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    const ready = Promise.all([
      connectQmp(paths.qmpSocket, { timeoutMs: startTimeoutMs, signal: abort.signal, commandTimeoutMs: opts.commandTimeoutMs }),
      serialConnected,
    ]);
    const failed = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`QEMU did not open its sockets within ${startTimeoutMs} ms`)), startTimeoutMs);
      void closedProcess.then((e) =>
        reject(new Error(spawnError ? `cannot run ${binary}: ${spawnError.message}` : `QEMU exited during start-up (${describeExit(e)})`)),
      );
    });
    failed.catch(() => undefined); // after a successful start it still settles, unobserved
    const [client, socket] = await Promise.race([ready, failed]);
    qmp = client;
    serial = new SerialConsole(socket);
    serialServer.close(); // one guest, one connection
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    throw new VmStartError(config.name, (err as Error).message, outputTail(), { cause: err });
  } finally {
    clearTimeout(timer);
  }

  const qmpClient = qmp;
  const serialConsole = serial;
  const stopTimeoutMs = opts.stopTimeoutMs ?? 5_000;
  const isAlive = () => child.exitCode === null && child.signalCode === null;
  const handle: VmHandle = {
    config: resolved,
    role,
    pid: child.pid!,
    qmp: qmpClient,
    serial: serialConsole,
    ramPath: paths.ramPath,
    runDir,
    paths,
    args,
    exited,
    get isRunning() {
      return isAlive();
    },
    stderrTail: outputTail,
    kill(signal: NodeJS.Signals = "SIGKILL") {
      if (isAlive()) child.kill(signal);
    },
    release() {
      lifeline?.kill("SIGKILL");
      lifeline = undefined;
    },
    async detach() {
      serialServer.close();
      await Promise.allSettled([qmpClient.close(), serialConsole.close()]);
    },
    async stop(o: { timeoutMs?: number } = {}) {
      if (isAlive()) await stopQemu(handle, qmpClient, exited, o.timeoutMs ?? stopTimeoutMs);
      return exited;
    },
    async [Symbol.asyncDispose]() {
      await handle.stop();
      if (!opts.keepRunDir) await rm(runDir, { recursive: true, force: true });
    },
  };
  return handle;
}

function describeExit(e: VmExit): string {
  return e.signal ? `signal ${e.signal}` : `exit code ${e.code}`;
}

// ---- adopting a surviving QEMU ------------------------------------------------------------

/** What adoptVm() needs to know of a QEMU started (with `survive`) by an earlier process. */
export interface VmRecord {
  config: VmConfig & { uuid: string; tenant: string };
  role: VmRole;
  paths: VmPaths;
  args: readonly string[];
}

export interface AdoptVmOptions {
  /** Time for QMP to answer. @default 5_000 */
  connectTimeoutMs?: number;
  /** How long to wait for QEMU to reconnect its serial console (it retries every second). @default 3_000 */
  serialTimeoutMs?: number;
  /** Default time for each QMP command. @default 30_000 */
  commandTimeoutMs?: number;
  /** How long stop() waits after `quit` before SIGKILL. @default 5_000 */
  stopTimeoutMs?: number;
  /** Leave the run directory (logs) after disposal. @default false */
  keepRunDir?: boolean;
}

/** Alive and not a zombie (an adopted QEMU is not our child: nobody may have reaped it yet). */
async function processAlive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "" && state !== "Z" && state !== "X";
}

/** The pid of the live QEMU that owns these paths (pid file, command line naming its QMP socket), if any. */
export async function liveQemuPid(paths: Pick<VmPaths, "pidFile" | "qmpSocket">): Promise<number | undefined> {
  const pid = await livePid(paths);
  return pid !== undefined && (await processAlive(pid)) ? pid : undefined;
}

/**
 * Re-attaches to a QEMU that outlived the process that started it: finds it by its pid file
 * (its command line must name the recorded QMP socket), connects QMP, and listens on the
 * serial socket again for QEMU to reconnect (`reconnect=1`). Returns undefined when no live
 * QEMU owns the record's run directory. The handle's `exited` settles when the process is
 * gone (polled: it is not our child), after which its RAM file and sockets are removed.
 * @throws QmpConnectError when the QEMU is alive but its QMP does not answer
 */
export async function adoptVm(rec: VmRecord, opts: AdoptVmOptions = {}): Promise<VmHandle | undefined> {
  const { paths } = rec;
  const pid = await liveQemuPid(paths);
  if (pid === undefined) return undefined;
  const qmp = await connectQmp(paths.qmpSocket, { timeoutMs: opts.connectTimeoutMs ?? 5_000, commandTimeoutMs: opts.commandTimeoutMs });

  // The serial console: our socket is gone with the process that made it; QEMU retries.
  await rm(paths.serialSocket, { force: true });
  const serialServer = await listenUnix(paths.serialSocket);
  const gone = new PassThrough();
  gone.destroy(); // until QEMU reconnects, requests fail at once (closed) rather than hang
  let serial = new SerialConsole(gone);
  const firstSerial = new Promise<void>((resolve) => {
    serialServer.on("connection", (socket: Socket) => {
      const previous = serial;
      serial = new SerialConsole(socket);
      void previous.close();
      resolve();
    });
  });
  await Promise.race([firstSerial, new Promise((r) => setTimeout(r, opts.serialTimeoutMs ?? 3_000))]);

  let alive = true;
  let detached = false;
  let resolveExit!: (e: VmExit) => void;
  const gotExit = new Promise<VmExit>((r) => (resolveExit = r));
  const poll = setInterval(() => void check(), 500);
  poll.unref();
  const check = async () => {
    if (!alive || (await processAlive(pid))) return;
    alive = false;
    clearInterval(poll);
    resolveExit({ code: null, signal: null });
  };
  void qmp.closed.then(async () => {
    // QMP goes when QEMU does: look now and a little later (the exit takes a moment).
    for (let i = 0; i < 20 && alive && !detached; i++) {
      await check();
      if (alive) await new Promise((r) => setTimeout(r, 100));
    }
  });
  const exited = gotExit.then(async (exit) => {
    serialServer.close();
    await Promise.allSettled([qmp.close(), serial.close()]);
    await Promise.all([paths.ramPath, paths.qmpSocket, paths.serialSocket, paths.pidFile].map((p) => rm(p, { force: true })));
    return exit;
  });

  const stopTimeoutMs = opts.stopTimeoutMs ?? 5_000;
  const handle: VmHandle = {
    config: rec.config,
    role: rec.role,
    pid,
    qmp,
    get serial() {
      return serial;
    },
    ramPath: paths.ramPath,
    runDir: paths.runDir,
    paths,
    args: rec.args,
    exited,
    get isRunning() {
      return alive;
    },
    stderrTail: () => fileTail(paths.qemuLog),
    kill(signal: NodeJS.Signals = "SIGKILL") {
      if (!alive) return;
      try {
        process.kill(pid, signal);
      } catch {
        /* gone */
      }
    },
    release() {
      /* an adopted QEMU has no lifeline */
    },
    async detach() {
      detached = true;
      clearInterval(poll);
      serialServer.close();
      await Promise.allSettled([qmp.close(), serial.close()]);
    },
    async stop(o: { timeoutMs?: number } = {}) {
      if (alive) await stopQemu(handle, qmp, exited, o.timeoutMs ?? stopTimeoutMs);
      return exited;
    },
    async [Symbol.asyncDispose]() {
      await handle.stop();
      if (!opts.keepRunDir) await rm(paths.runDir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** QMP `quit`, or SIGKILL if QEMU lingers past the time-out (or QMP is gone); resolves once it exited. */
async function stopQemu(handle: { kill(signal: NodeJS.Signals): void }, qmp: QmpClient, exited: Promise<unknown>, timeoutMs: number): Promise<void> {
  const killer = setTimeout(() => handle.kill("SIGKILL"), timeoutMs);
  try {
    if (!qmp.isClosed) await qmp.quit({ timeoutMs }).catch(() => handle.kill("SIGKILL"));
    else handle.kill("SIGTERM");
    await exited;
  } finally {
    clearTimeout(killer);
  }
}
