/**
 * Source proxy → destination proxy, directly (no NATS): for tests and for a local
 * "migrate through the codec" path. `pipeProxies` moves the records; `migrateThroughProxies`
 * also drives both QEMUs over QMP and, when anything fails, leaves the source running
 * (QEMU fails its migration when we close its connection; if it had already sent
 * everything and sits in postmigrate, we `cont` it) and reports what happened.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createLogger, type Logger } from "../../infra/log.ts";
import { writeToDestination, type DestinationProxyOptions } from "./destinationProxy.ts";
import { createSourceProxy, type SourceProxy, type SourceProxyOptions } from "./sourceProxy.ts";
import type { StreamRecord } from "./stream/records.ts";

/** The QMP surface these helpers need; the project's QMP client has it. */
export interface QmpCommander {
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
}

/** Rewrites the records between the proxies (re-framing, fault injection). */
export type RecordTransform = (records: AsyncIterable<StreamRecord>) => AsyncIterable<StreamRecord>;

export interface PipeResult {
  /** Bytes the source QEMU sent. */
  nativeBytes: number;
  /** Bytes written into the destination QEMU. */
  bytesWritten: number;
  records: number;
}

/** Moves one stream from a source proxy into a destination QEMU. Rejects with the first error of either side. */
export async function pipeProxies(source: SourceProxy, destination: DestinationProxyOptions, transform?: RecordTransform): Promise<PipeResult> {
  const records = transform ? transform(source.records()) : source.records();
  const r = await writeToDestination(records, destination);
  return { nativeBytes: source.nativeBytes(), bytesWritten: r.bytes, records: r.records };
}

/** Options of migrateThroughProxies. */
export interface ProxyMigrationOptions {
  /** QMP of the running source VM. */
  sourceQmp: QmpCommander;
  /** QMP of the destination VM, started with `-incoming defer -S` and the same configuration. */
  destinationQmp: QmpCommander;
  /** Source proxy options. @default createSourceProxy defaults */
  sourceProxy?: SourceProxyOptions;
  /** Destination proxy options (its socket path is chosen here). @default writeToDestination defaults */
  destination?: Omit<DestinationProxyOptions, "socketPath">;
  /** Records transform between the proxies. @default none */
  transform?: RecordTransform;
  /** How long to wait for each QEMU to report the migration's outcome, in ms. @default 60000 */
  settleTimeoutMs?: number;
  /** @default a logger with component "proxyPipe" */
  logger?: Logger;
}

export interface ProxyMigrationReport extends Partial<PipeResult> {
  ok: boolean;
  /** The first error (stream, connection or QEMU), if any. */
  error?: Error;
  /** Source: query-migrate status and run state at the end, and whether we resumed it. */
  source: { migration: string; runState: string; resumed: boolean };
  /** Destination: query-migrate status at the end ("completed" on success). */
  destination: { migration: string };
  /** Wall time from `migrate` until both sides settled, in ms. */
  elapsedMs: number;
}

/** A migration through the proxies failed; the source was left running. */
export class ProxyMigrationError extends Error {
  readonly report: ProxyMigrationReport;
  constructor(report: ProxyMigrationReport) {
    const src = report.source.resumed ? "source resumed" : `source ${report.source.runState}`;
    super(`migration through the proxies failed (${src}): ${report.error?.message ?? "unknown error"}`, { cause: report.error });
    this.name = "ProxyMigrationError";
    this.report = report;
  }
}
export const isProxyMigrationError = (e: unknown): e is ProxyMigrationError => e instanceof ProxyMigrationError;

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** A QMP command that gives up after `ms`: a QEMU that died must not hang the rollback. */
async function exec(qmp: QmpCommander, command: string, args?: Record<string, unknown>, ms = 10_000): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`QMP ${command}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([qmp.execute(command, args), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function migrationStatus(qmp: QmpCommander): Promise<string> {
  const r = (await exec(qmp, "query-migrate")) as { status?: string };
  return r.status ?? "none";
}

async function runState(qmp: QmpCommander): Promise<{ status: string; running: boolean }> {
  return (await exec(qmp, "query-status")) as { status: string; running: boolean };
}

/** Polls query-migrate until it reports a terminal status or the time is up. */
async function settle(qmp: QmpCommander, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await migrationStatus(qmp).catch(() => "unreachable");
    if (TERMINAL.has(s) || s === "unreachable" || Date.now() > deadline) return s;
    await sleep(50);
  }
}

/**
 * Migrates the source VM into the destination VM through a source proxy, the codec and
 * a destination proxy. On success the source sits in postmigrate and the destination is
 * paused with the state loaded (commit = `cont` there, quit the source). On failure the
 * source is running again and a ProxyMigrationError carries the report.
 */
export async function migrateThroughProxies(o: ProxyMigrationOptions): Promise<ProxyMigrationReport> {
  const log = o.logger ?? createLogger({ component: "proxyPipe" });
  const timeout = o.settleTimeoutMs ?? 60_000;
  const wasRunning = (await runState(o.sourceQmp)).running;
  const dir = await mkdtemp(join(tmpdir(), "gangway-dst-"));
  const incoming = join(dir, "incoming.sock");
  const proxy = await createSourceProxy(o.sourceProxy);
  const t0 = performance.now();
  let error: Error | undefined;
  let piped: PipeResult | undefined;
  try {
    await o.destinationQmp.execute("migrate-incoming", { uri: `unix:${incoming}` });
    const pipe = pipeProxies(proxy, { ...o.destination, socketPath: incoming, logger: o.destination?.logger ?? log }, o.transform);
    pipe.catch(() => undefined); // observed below; avoid an unhandled rejection meanwhile
    try {
      await o.sourceQmp.execute("migrate", { uri: proxy.uri });
    } catch (err) {
      await proxy.close(); // unblocks the pipe
      throw err;
    }
    piped = await pipe;
  } catch (err) {
    error = err as Error;
  }

  // Let each side report; a source still sending after a failure is cancelled.
  let srcMigration = await settle(o.sourceQmp, error ? Math.min(timeout, 10_000) : timeout);
  if (!TERMINAL.has(srcMigration) && error) {
    await exec(o.sourceQmp, "migrate_cancel").catch(() => undefined);
    srcMigration = await settle(o.sourceQmp, timeout);
  }
  const dstMigration = error ? await migrationStatus(o.destinationQmp).catch(() => "unreachable") : await settle(o.destinationQmp, timeout);
  if (!error && dstMigration !== "completed") error = new Error(`the destination QEMU did not load the stream (migration status ${dstMigration})`);
  if (!error && srcMigration !== "completed") error = new Error(`the source QEMU reports migration status ${srcMigration}`);

  let resumed = false;
  let state = await runState(o.sourceQmp).catch(() => ({ status: "unreachable", running: false }));
  if (error && wasRunning && !state.running && state.status !== "unreachable") {
    // Rollback: QEMU restarts a failed source itself, but not one that finished sending.
    await exec(o.sourceQmp, "cont");
    resumed = true;
    state = await runState(o.sourceQmp);
  }
  await proxy.close();
  await rm(dir, { recursive: true, force: true });
  const report: ProxyMigrationReport = {
    ok: !error,
    ...piped,
    nativeBytes: piped?.nativeBytes ?? proxy.nativeBytes(),
    error,
    source: { migration: srcMigration, runState: state.status, resumed },
    destination: { migration: dstMigration },
    elapsedMs: performance.now() - t0,
  };
  if (error) {
    log.warn("migration through the proxies failed", { error, source: report.source, destination: report.destination });
    throw new ProxyMigrationError(report);
  }
  return report;
}
