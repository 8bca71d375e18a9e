/**
 * The benchmark's child processes (source side, destination side, synthetic QEMU): each runs
 * as its own node process, so /proc gives each side's CPU and memory apart. The parent
 * forks it with its configuration, waits for "ready", sends "go", gets "done" (or "error"),
 * samples it, then sends "stop". Children write logs to the parent's stderr, never stdout.
 */
import { fork, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { Session } from "node:inspector/promises";
import { dirname, resolve } from "node:path";
import type { z } from "zod";
import { childMessage, parentMessage, type ParentMessage } from "./pipelineProtocol.ts";

const ROOT = resolve(import.meta.dirname, "..");

/** A check of the delivered pages failed in a child: the run's result is wrong, not just unfinished. */
export class PipelineCheckError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PipelineCheckError";
  }
}
export const isPipelineCheckError = (e: unknown): e is PipelineCheckError => e instanceof PipelineCheckError;

export interface ChildHandle<D> {
  readonly name: string;
  readonly pid: number;
  readonly ready: Promise<void>;
  /** The child's result once it is done; rejects on its error or an early exit. */
  readonly done: Promise<D>;
  go(): void;
  /** Asks it to stop, then SIGKILLs it after `graceMs`; resolves when it is gone. */
  stop(graceMs?: number): Promise<void>;
}

/** `profileTo`: write a CPU profile of the child's main thread over go → done to this file. */
export function forkChild<S extends z.ZodType>(name: string, script: string, config: unknown, doneSchema: S, o: { profileTo?: string } = {}): ChildHandle<z.infer<S>> {
  const child: ChildProcess = fork(resolve(ROOT, script), [JSON.stringify(config), ...(o.profileTo ? [o.profileTo] : [])], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    // stdout of a child goes to our stderr: our stdout is for --json.
    stdio: ["ignore", 2, 2, "ipc"],
    env: { ...process.env, GANGWAY_LOG_LEVEL: process.env.GANGWAY_LOG_LEVEL ?? "warn" },
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  let onReady!: () => void;
  let onDone!: (v: z.infer<S>) => void;
  let fail!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => {
    onReady = res;
    fail = rej;
  });
  let failDone!: (e: Error) => void;
  const done = new Promise<z.infer<S>>((res, rej) => {
    onDone = res;
    failDone = rej;
  });
  const failBoth = (e: Error) => {
    fail(e);
    failDone(e);
  };
  // Observed by whoever awaits them; an early failure must not count as unhandled meanwhile.
  ready.catch(() => undefined);
  done.catch(() => undefined);
  let stopping = false;
  child.on("message", (raw: unknown) => {
    const m = childMessage.safeParse(raw);
    if (!m.success) return failBoth(new Error(`${name}: unreadable message: ${m.error.message}`));
    if (m.data.type === "ready") onReady();
    else if (m.data.type === "error") failBoth(m.data.check ? new PipelineCheckError(`${name}: ${m.data.message}`) : new Error(`${name}: ${m.data.message}`));
    else {
      const r = doneSchema.safeParse(m.data.result);
      if (r.success) onDone(r.data);
      else failDone(new Error(`${name}: unreadable result: ${r.error.message}`));
    }
  });
  child.once("exit", (code, signal) => {
    if (!stopping) failBoth(new Error(`${name} exited (${signal ?? `code ${code}`}) before it was done`));
  });
  const send = (m: ParentMessage) => {
    if (child.connected) child.send(m);
  };
  return {
    name,
    pid: child.pid!,
    ready,
    done,
    go: () => send({ type: "go" }),
    async stop(graceMs = 10_000) {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      send({ type: "stop" });
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * Profiles this thread from `go` on (set-up and preparation are left out, unlike --cpu-prof);
 * the returned function stops and writes the profile (bench/profile.ts reads it).
 */
async function profileMeasuredPhase(path: string, go: Promise<void>): Promise<() => Promise<void>> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  const started = go.then(() => session.post("Profiler.start"));
  return async () => {
    await started;
    const { profile } = await session.post("Profiler.stop");
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, JSON.stringify(profile));
    session.disconnect();
  };
}

export interface ChildContext {
  /** Tells the parent this side is set up. */
  ready(detail?: Record<string, unknown>): void;
  /** Resolves when the parent says go. */
  readonly go: Promise<void>;
}

/**
 * A child's main: parses its configuration, runs `main`, reports its result or its error
 * (`isCheck(err)`: a failed check, reported as such), and waits for "stop" to clean up and exit:
 * the parent samples /proc/<pid> after "done", so the process must still be there.
 */
export async function runChild<C extends z.ZodType, D>(configSchema: C, main: (config: z.infer<C>, ctx: ChildContext) => Promise<{ result: D; cleanup?: () => Promise<void> }>, isCheck: (e: unknown) => boolean = () => false): Promise<void> {
  const send = (m: unknown) => new Promise<void>((r) => (process.send ? process.send(m, () => r()) : r()));
  let go!: () => void;
  const goP = new Promise<void>((r) => (go = r));
  let stop!: () => void;
  const stopP = new Promise<void>((r) => (stop = r));
  process.on("message", (raw: unknown) => {
    const m = parentMessage.safeParse(raw);
    if (!m.success) return;
    if (m.data.type === "go") go();
    else stop();
  });
  // The parent went away: nothing left to report to.
  process.on("disconnect", () => process.exit(1));
  let code = 0;
  try {
    const config = configSchema.parse(JSON.parse(process.argv[2] ?? "null"));
    const profile = process.argv[3] ? await profileMeasuredPhase(process.argv[3], goP) : undefined;
    const { result, cleanup } = await main(config, { ready: (detail) => void send({ type: "ready", ...(detail ? { detail } : {}) }), go: goP });
    await profile?.();
    await send({ type: "done", result });
    await stopP;
    await cleanup?.();
  } catch (err) {
    code = 1;
    await send({ type: "error", message: (err as Error)?.message ?? String(err), check: isCheck(err) });
    if (process.env.GANGWAY_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
    await Promise.race([stopP, new Promise((r) => setTimeout(r, 5000))]);
  }
  process.exit(code);
}
