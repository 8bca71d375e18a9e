/**
 * A QMP client over a unix socket: greeting and capability negotiation, commands matched
 * to replies by id (several may be in flight), events as async iterators, and typed
 * helpers for what a migration needs. Field names are QEMU's own (hyphens and all), so
 * what QEMU documents is what the types say.
 */
import { createConnection, type Socket } from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import { QmpCommandError, QmpConnectError, QmpDisconnectedError, QmpTimeoutError } from "./errors.ts";
import { PushQueue } from "./pushQueue.ts";

// ---- wire types --------------------------------------------------------------------

/** A JSON value as QMP carries it. */
export type QmpValue = string | number | boolean | null | QmpValue[] | { [key: string]: QmpValue | undefined };
/** Arguments of a command (`undefined` fields are left out). */
export type QmpArgs = { [key: string]: QmpValue | undefined };

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** An asynchronous event, as QEMU sends it. */
export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  data: D;
  timestamp: { seconds: number; microseconds: number };
}

/** Run states reported by query-status and the events (QEMU's RunState). */
export const RunState = {
  Debug: "debug",
  InMigrate: "inmigrate",
  InternalError: "internal-error",
  IoError: "io-error",
  Paused: "paused",
  PostMigrate: "postmigrate",
  Prelaunch: "prelaunch",
  FinishMigrate: "finish-migrate",
  RestoreVm: "restore-vm",
  Running: "running",
  SaveVm: "save-vm",
  Shutdown: "shutdown",
  Suspended: "suspended",
  Watchdog: "watchdog",
  GuestPanicked: "guest-panicked",
  Colo: "colo",
} as const;
export type RunState = (typeof RunState)[keyof typeof RunState];

export interface StatusInfo {
  running: boolean;
  singlestep?: boolean;
  status: RunState;
}

/** Migration states (QEMU's MigrationStatus). */
export const MigrationStatus = {
  None: "none",
  Setup: "setup",
  Cancelling: "cancelling",
  Cancelled: "cancelled",
  Active: "active",
  PostcopyActive: "postcopy-active",
  PostcopyPaused: "postcopy-paused",
  PostcopyRecover: "postcopy-recover",
  Completed: "completed",
  Failed: "failed",
  Colo: "colo",
  PreSwitchover: "pre-switchover",
  Device: "device",
  WaitUnplug: "wait-unplug",
} as const;
export type MigrationStatus = (typeof MigrationStatus)[keyof typeof MigrationStatus];

/** States a migration does not leave by itself. */
export const FINAL_MIGRATION_STATUSES: readonly MigrationStatus[] = ["completed", "failed", "cancelled"];

/** RAM counters of query-migrate (bytes unless named pages; `duplicate` counts zero pages). */
export interface MigrationRamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  "normal-bytes": number;
  "dirty-pages-rate": number;
  mbps: number;
  "dirty-sync-count": number;
  "postcopy-requests": number;
  "page-size": number;
  "multifd-bytes": number;
  "pages-per-second": number;
  "precopy-bytes"?: number;
  "downtime-bytes"?: number;
  "postcopy-bytes"?: number;
}

export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationRamStats;
  /** Milliseconds since the migration started. */
  "total-time"?: number;
  "expected-downtime"?: number;
  downtime?: number;
  "setup-time"?: number;
  "error-desc"?: string;
  "postcopy-blocktime"?: number;
  "blocked-reasons"?: string[];
  /** auto-converge: the share of vCPU time taken from the guest now. */
  "cpu-throttle-percentage"?: number;
}

/** Migration capabilities of QEMU 7.2. */
export type MigrationCapability =
  | "xbzrle" | "rdma-pin-all" | "auto-converge" | "zero-blocks" | "compress" | "events" | "postcopy-ram"
  | "x-colo" | "release-ram" | "block" | "return-path" | "pause-before-switchover" | "multifd"
  | "dirty-bitmaps" | "postcopy-blocktime" | "late-block-activate" | "x-ignore-shared" | "validate-uuid"
  | "background-snapshot" | "zero-copy-send" | "postcopy-preempt";

/** Settable migration parameters of QEMU 7.2 (migrate-set-parameters); all optional. */
export interface MigrationParameters {
  /** Bytes per second. */
  "max-bandwidth"?: number;
  /** Milliseconds of downtime allowed at switch-over. */
  "downtime-limit"?: number;
  "max-postcopy-bandwidth"?: number;
  "multifd-channels"?: number;
  "multifd-compression"?: "none" | "zlib" | "zstd";
  "multifd-zlib-level"?: number;
  "multifd-zstd-level"?: number;
  "xbzrle-cache-size"?: number;
  "compress-level"?: number;
  "compress-threads"?: number;
  "decompress-threads"?: number;
  "throttle-trigger-threshold"?: number;
  "cpu-throttle-initial"?: number;
  "cpu-throttle-increment"?: number;
  "cpu-throttle-tailslow"?: boolean;
  "max-cpu-throttle"?: number;
  "announce-initial"?: number;
  "announce-max"?: number;
  "announce-rounds"?: number;
  "announce-step"?: number;
  "tls-creds"?: string;
  "tls-hostname"?: string;
  "tls-authz"?: string;
  "x-checkpoint-delay"?: number;
  "block-incremental"?: boolean;
}

/** Data of the events a migration cares about. */
export interface QmpEventMap {
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SHUTDOWN: { guest: boolean; reason: string };
  POWERDOWN: Record<string, never>;
  RESET: { guest: boolean; reason: string };
  MIGRATION: { status: MigrationStatus };
  MIGRATION_PASS: { pass: number };
  GUEST_PANICKED: { action: string };
}
export type QmpEventName = keyof QmpEventMap;

// ---- options -------------------------------------------------------------------------

export interface QmpClientOptions {
  /** Time allowed for each command unless execute() says otherwise. @default 30_000 */
  commandTimeoutMs?: number;
  /** Events buffered for one events() iterator that is not being read. @default 10_000 */
  maxBufferedEvents?: number;
}

export interface QmpConnectOptions extends QmpClientOptions {
  /** Total time for connecting (retrying while the socket is absent or refused) and the greeting. @default 10_000 */
  timeoutMs?: number;
  /** Pause between connection attempts. @default 50 */
  retryMs?: number;
  /** Gives up at once when aborted (e.g. QEMU exited). */
  signal?: AbortSignal;
}

export interface ExecuteOptions {
  /** Time allowed for the reply. @default the client's commandTimeoutMs */
  timeoutMs?: number;
}

export interface WaitForEventOptions {
  /** @default 30_000 */
  timeoutMs?: number;
  /** Stops waiting when aborted (rejects with the signal's reason). */
  signal?: AbortSignal;
}

// ---- client ----------------------------------------------------------------------------

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout;
}

type Incoming =
  | { QMP: QmpGreeting }
  | { event: string; data?: Record<string, unknown>; timestamp: { seconds: number; microseconds: number } }
  | { return: unknown; id?: string }
  | { error: { class: string; desc: string }; id?: string };

/**
 * Connects to QEMU's QMP socket, retrying while it is not there yet, reads the greeting
 * and negotiates capabilities. The client is ready for commands when this resolves.
 */
export async function connectQmp(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    if (opts.signal?.aborted) throw new QmpConnectError(path, "aborted", { cause: opts.signal.reason });
    try {
      const socket = await openSocket(path);
      const client = new QmpClient(socket, path, opts);
      try {
        await client.handshake(Math.max(1, deadline - Date.now()));
      } catch (err) {
        await client.close();
        throw new QmpConnectError(path, "no QMP greeting", { cause: err });
      }
      return client;
    } catch (err) {
      if (err instanceof QmpConnectError) throw err;
      lastError = err;
      const code = (err as NodeJS.ErrnoException).code;
      // Absent or not listening yet: QEMU is still starting. Anything else is final.
      if (code !== "ENOENT" && code !== "ECONNREFUSED") throw new QmpConnectError(path, String(err), { cause: err });
    }
    if (Date.now() + (opts.retryMs ?? 50) > deadline) {
      throw new QmpConnectError(path, `gave up after ${timeoutMs} ms (${(lastError as Error)?.message ?? "no attempt"})`, {
        cause: new QmpTimeoutError("connection", timeoutMs, { cause: lastError }),
      });
    }
    await delay(opts.retryMs ?? 50, undefined, { signal: opts.signal }).catch(() => undefined);
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

export class QmpClient implements AsyncDisposable {
  /** The socket path, for messages. */
  readonly path: string;
  /** Resolves when the connection is gone: with the reason if it was not close(), else undefined. */
  readonly closed: Promise<Error | undefined>;
  #socket: Socket;
  #buffer = "";
  #nextId = 1;
  #pending = new Map<string, Pending>();
  #subscribers = new Set<PushQueue<QmpEvent>>();
  #greeting: QmpGreeting | undefined;
  #onGreeting: ((g: QmpGreeting) => void) | undefined;
  #closing = false;
  #isClosed = false;
  #resolveClosed!: (e: Error | undefined) => void;
  readonly #commandTimeoutMs: number;
  readonly #maxBufferedEvents: number;

  /** Use connectQmp(); this wraps an already connected socket. */
  constructor(socket: Socket, path: string, opts: QmpClientOptions = {}) {
    this.#socket = socket;
    this.path = path;
    this.#commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.#maxBufferedEvents = opts.maxBufferedEvents ?? 10_000;
    this.closed = new Promise((r) => (this.#resolveClosed = r));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.#onData(chunk));
    socket.on("error", () => undefined); // 'close' follows and carries the news
    socket.on("close", () => this.#onClose());
  }

  /** QEMU's greeting (version, capabilities); set once connected. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new QmpDisconnectedError(`QMP ${this.path}: no greeting yet`);
    return this.#greeting;
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** Waits for the greeting and enters command mode. Called by connectQmp(). */
  async handshake(timeoutMs: number): Promise<void> {
    if (!this.#greeting) {
      await withTimeout(
        new Promise<QmpGreeting>((resolve) => (this.#onGreeting = resolve)),
        timeoutMs,
        () => new QmpTimeoutError("greeting", timeoutMs),
        this.closed.then((e) => e ?? new QmpDisconnectedError(`QMP ${this.path} closed before its greeting`)),
      );
    }
    await this.execute("qmp_capabilities", undefined, { timeoutMs });
  }

  /**
   * Runs a command and resolves with its `return`. The type parameter is the caller's
   * claim about that value; the typed helpers below make it for you.
   * @throws QmpCommandError when QEMU answers with an error
   * @throws QmpTimeoutError when no reply comes in time (a late reply is then ignored)
   * @throws QmpDisconnectedError when the connection closes first
   */
  execute<R = unknown>(command: string, args?: QmpArgs, opts: ExecuteOptions = {}): Promise<R> {
    if (this.#isClosed || this.#closing) {
      return Promise.reject(new QmpDisconnectedError(`QMP ${this.path} is closed; cannot run ${command}`));
    }
    const id = `gw-${this.#nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.#commandTimeoutMs;
    return new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new QmpTimeoutError(`reply to ${command}`, timeoutMs));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args) msg.arguments = args;
      this.#socket.write(JSON.stringify(msg) + "\n");
    });
  }

  /**
   * Events from now on, until the connection closes or the loop breaks. Each call is an
   * independent subscription. To wait for the consequence of a command without a race,
   * subscribe (or call waitForEvent) before running the command.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const q: PushQueue<QmpEvent> = new PushQueue({
      maxBuffered: this.#maxBufferedEvents,
      onClose: () => this.#subscribers.delete(q),
    });
    if (this.#isClosed) q.end();
    else this.#subscribers.add(q);
    return q;
  }

  /**
   * The next event with this name (and passing `where`, if given).
   * @throws QmpTimeoutError, QmpDisconnectedError
   */
  waitForEvent<K extends QmpEventName>(
    name: K,
    opts?: WaitForEventOptions & { where?: (data: QmpEventMap[K]) => boolean },
  ): Promise<QmpEvent<QmpEventMap[K]>>;
  /** The next event `match` accepts. */
  waitForEvent(match: (e: QmpEvent) => boolean, opts?: WaitForEventOptions): Promise<QmpEvent>;
  async waitForEvent(
    nameOrMatch: string | ((e: QmpEvent) => boolean),
    opts: WaitForEventOptions & { where?: (data: never) => boolean } = {},
  ): Promise<QmpEvent> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const what = typeof nameOrMatch === "string" ? `${nameOrMatch} event` : "matching event";
    const match =
      typeof nameOrMatch === "string"
        ? (e: QmpEvent) => e.event === nameOrMatch && (!opts.where || (opts.where as (d: unknown) => boolean)(e.data))
        : nameOrMatch;
    const it = this.events();
    const found = (async () => {
      for await (const e of it) if (match(e)) return e;
      throw new QmpDisconnectedError(`QMP ${this.path} closed while waiting for ${what}`);
    })();
    try {
      return await withTimeout(found, timeoutMs, () => new QmpTimeoutError(what, timeoutMs), abortPromise(opts.signal));
    } finally {
      await it.return?.();
    }
  }

  /** Closes the connection; commands in flight fail with QmpDisconnectedError. */
  async close(): Promise<void> {
    if (!this.#isClosed) {
      this.#closing = true;
      this.#socket.destroy();
    }
    await this.closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- typed helpers ----

  queryStatus(): Promise<StatusInfo> {
    return this.execute<StatusInfo>("query-status");
  }

  queryMigrate(): Promise<MigrationInfo> {
    return this.execute<MigrationInfo>("query-migrate");
  }

  /** Sets only the capabilities named; `{ events: true }` makes QEMU send MIGRATION events. */
  migrateSetCapabilities(caps: Partial<Record<MigrationCapability, boolean>>): Promise<void> {
    const capabilities = Object.entries(caps).map(([capability, state]) => ({ capability, state: state === true }));
    return this.execute<void>("migrate-set-capabilities", { capabilities });
  }

  async queryMigrateCapabilities(): Promise<Partial<Record<MigrationCapability, boolean>>> {
    const list = await this.execute<{ capability: MigrationCapability; state: boolean }[]>("query-migrate-capabilities");
    return Object.fromEntries(list.map((c) => [c.capability, c.state]));
  }

  migrateSetParameters(params: MigrationParameters): Promise<void> {
    return this.execute<void>("migrate-set-parameters", { ...params });
  }

  queryMigrateParameters(): Promise<MigrationParameters> {
    return this.execute<MigrationParameters>("query-migrate-parameters");
  }

  /** Starts an outgoing migration (e.g. "unix:/path", "tcp:host:port", "fd:name"); returns at once. */
  migrate(uri: string, opts: { resume?: boolean } = {}): Promise<void> {
    return this.execute<void>("migrate", { uri, resume: opts.resume });
  }

  /** Starts listening for an incoming migration; the VM must run with `-incoming defer`. */
  migrateIncoming(uri: string): Promise<void> {
    return this.execute<void>("migrate-incoming", { uri });
  }

  migrateCancel(): Promise<void> {
    return this.execute<void>("migrate_cancel");
  }

  /** Switches a running pre-copy migration (postcopy-ram on) to post-copy. */
  migrateStartPostcopy(): Promise<void> {
    return this.execute<void>("migrate-start-postcopy");
  }

  /** Lets a migration paused at `pre-switchover` (pause-before-switchover) go on. */
  migrateContinue(state: MigrationStatus = "pre-switchover"): Promise<void> {
    return this.execute<void>("migrate-continue", { state });
  }

  /**
   * Polls query-migrate until the status is one of `until` (default: completed, failed,
   * cancelled) and returns that info. Polling, not events: it cannot miss a change that
   * happened before the call.
   * @throws QmpTimeoutError
   */
  async waitForMigration(
    opts: { until?: readonly MigrationStatus[]; timeoutMs?: number; pollMs?: number; signal?: AbortSignal } = {},
  ): Promise<MigrationInfo> {
    const until = opts.until ?? FINAL_MIGRATION_STATUSES;
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.queryMigrate();
      if (info.status && until.includes(info.status)) return info;
      if (Date.now() > deadline) {
        throw new QmpTimeoutError(`migration status ${until.join("/")} (last: ${info.status ?? "none"})`, timeoutMs);
      }
      await delay(opts.pollMs ?? 50, undefined, { signal: opts.signal });
    }
  }

  cont(): Promise<void> {
    return this.execute<void>("cont");
  }

  stop(): Promise<void> {
    return this.execute<void>("stop");
  }

  /** Asks QEMU to exit. A connection that closes before the reply also counts as done. */
  async quit(opts: ExecuteOptions = {}): Promise<void> {
    try {
      await this.execute<void>("quit", undefined, opts);
    } catch (err) {
      if (!(err instanceof QmpDisconnectedError)) throw err;
    }
  }

  /** Writes `size` bytes of guest-physical memory from `addr` to `filename` (a path QEMU can write). */
  pmemsave(addr: number, size: number, filename: string): Promise<void> {
    return this.execute<void>("pmemsave", { val: addr, size, filename });
  }

  /** Runs a human monitor (HMP) command and returns its text output. */
  humanMonitorCommand(commandLine: string): Promise<string> {
    return this.execute<string>("human-monitor-command", { "command-line": commandLine });
  }

  // ---- internals ----

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf("\n")) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line) this.#onMessage(line);
    }
  }

  #onMessage(line: string): void {
    let msg: Incoming;
    try {
      msg = JSON.parse(line) as Incoming;
    } catch {
      return; // QEMU only sends JSON objects; ignore anything else rather than die
    }
    if ("QMP" in msg) {
      this.#greeting = msg.QMP;
      this.#onGreeting?.(msg.QMP);
      return;
    }
    if ("event" in msg) {
      const e: QmpEvent = { event: msg.event, data: msg.data ?? {}, timestamp: msg.timestamp };
      for (const q of this.#subscribers) q.push(e);
      return;
    }
    // A reply without an id (QEMU could not parse our request) can only belong to the one in flight.
    const id = msg.id ?? (this.#pending.size === 1 ? [...this.#pending.keys()][0] : undefined);
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (!p) return; // a late reply to a command that timed out
    this.#pending.delete(id!);
    clearTimeout(p.timer);
    if ("error" in msg) p.reject(new QmpCommandError(p.command, msg.error.class, msg.error.desc));
    else p.resolve(msg.return);
  }

  #onClose(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    const reason = this.#closing ? undefined : new QmpDisconnectedError(`QMP connection ${this.path} closed`);
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new QmpDisconnectedError(`QMP connection ${this.path} closed before the reply to ${p.command}`, { cause: reason }));
    }
    this.#pending.clear();
    for (const q of [...this.#subscribers]) q.end();
    this.#subscribers.clear();
    this.#resolveClosed(reason);
  }
}

/** Races `p` against a timeout and an optional failure source; clears the timer either way. */
function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error, fail?: Promise<unknown>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(onTimeout()), ms)));
  const racers: Promise<T>[] = [p, t];
  if (fail) {
    racers.push(
      fail.then((e) => {
        throw e;
      }),
    );
  }
  return Promise.race(racers).finally(() => clearTimeout(timer));
}

function abortPromise(signal: AbortSignal | undefined): Promise<unknown> | undefined {
  if (!signal) return undefined;
  return new Promise((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    else signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
  });
}
