/**
 * An embedded nats-server: spawned from PATH with JetStream on a free port and its
 * own store directory, for `gangway up`, the demo and tests. Operators run their own
 * servers and pass --nats instead.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve as resolvePath } from "node:path";

export interface EmbeddedServerOptions {
  /** Directory for JetStream files; a fresh temporary one (removed on stop) when unset. */
  storeDir?: string;
  /** Server name (shows in monitoring and cluster info). @default "gangway-embedded" */
  name?: string;
  /** JetStream domain, for racks joined by leafnodes. @default undefined (none) */
  domain?: string;
  /** Largest message the server accepts, in bytes. @default 8 MiB */
  maxPayload?: number;
  /** Seconds to wait for the server to listen. @default 15 */
  startTimeoutSec?: number;
  /** Fixed client port; a free one when unset. */
  port?: number;
  /** Extra lines for the server config. */
  extraConfig?: string;
  /**
   * A config file with an `authorization { users = [...] }` block (`gangway auth` writes
   * one), included as it is: every client must then authenticate. @default none (open)
   */
  authorizationFile?: string;
  /** TLS for client connections: once set, the server refuses plaintext. @default none */
  tls?: ServerTlsOptions;
}

export interface ServerTlsOptions {
  certFile: string;
  keyFile: string;
  /** CA of client certificates; with it, clients must present one (mutual TLS). */
  caFile?: string;
}

export class NatsServerStartError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NatsServerStartError";
  }
}

export interface EmbeddedServer extends AsyncDisposable {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  readonly pid: number;
  /** Stops the server (SIGTERM, then SIGKILL) and removes a temporary store. */
  stop(): Promise<void>;
  /** Sends a signal without waiting (fault tests: SIGSTOP/SIGCONT/SIGKILL). */
  signal(sig: NodeJS.Signals): void;
  /** The server's log so far (the last 1 MiB): permission violations show up here. */
  log(): string;
}

export async function startEmbeddedServer(opts: EmbeddedServerOptions = {}): Promise<EmbeddedServer> {
  const ownStore = opts.storeDir === undefined;
  const base = await mkdtemp(join(tmpdir(), "gangway-nats-"));
  const storeDir = opts.storeDir ?? join(base, "js");
  const confPath = join(base, "nats.conf");
  const conf = [
    `server_name: ${JSON.stringify(opts.name ?? "gangway-embedded")}`,
    `listen: "127.0.0.1:${opts.port ?? -1}"`,
    `max_payload: ${opts.maxPayload ?? 8 * 1024 * 1024}`,
    `jetstream {`,
    `  store_dir: ${JSON.stringify(storeDir)}`,
    `  max_memory_store: 1GB`,
    `  max_file_store: 64GB`,
    opts.domain ? `  domain: ${JSON.stringify(opts.domain)}` : "",
    `}`,
    // nats-server resolves includes relative to the including file only: inline it instead.
    opts.authorizationFile ? await readFile(opts.authorizationFile, "utf8") : "",
    opts.tls
      ? [
          `tls {`,
          `  cert_file: ${JSON.stringify(resolvePath(opts.tls.certFile))}`,
          `  key_file: ${JSON.stringify(resolvePath(opts.tls.keyFile))}`,
          opts.tls.caFile ? `  ca_file: ${JSON.stringify(resolvePath(opts.tls.caFile))}\n  verify: true` : "",
          `  timeout: 5`,
          `}`,
        ].join("\n")
      : "",
    opts.extraConfig ?? "",
  ].join("\n");
  await writeFile(confPath, conf);

  let child: ChildProcess;
  try {
    child = spawn("nats-server", ["-c", confPath], { stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    throw new NatsServerStartError("cannot run nats-server (is it installed? run `npm run setup`)", { cause: err });
  }
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new NatsServerStartError(`nats-server did not start within ${opts.startTimeoutSec ?? 15}s:\n${log.slice(-2000)}`));
    }, (opts.startTimeoutSec ?? 15) * 1000);
    const onData = (chunk: Buffer) => {
      log += chunk.toString();
      const m = /Listening for client connections on [^\s]*:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stderr!.on("data", onData);
    child.stdout!.on("data", onData);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new NatsServerStartError(`cannot run nats-server: ${err.message} (run \`npm run setup\`)`, { cause: err }));
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new NatsServerStartError(`nats-server exited with code ${code}:\n${log.slice(-2000)}`));
    });
  });
  // Keep draining its output so a chatty server never blocks on a full pipe, and keep the
  // tail for tests that look for permission violations.
  const keep = (chunk: Buffer) => {
    log += chunk.toString();
    if (log.length > 2 * 1024 * 1024) log = log.slice(-1024 * 1024);
  };
  child.stderr!.removeAllListeners("data").on("data", keep);
  child.stdout!.removeAllListeners("data").on("data", keep);

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGCONT"); // a paused server cannot handle SIGTERM
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }
    await rm(ownStore ? base : confPath, { recursive: true, force: true });
  };
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    pid: child.pid!,
    stop,
    signal: (sig) => {
      child.kill(sig);
    },
    log: () => log,
    [Symbol.asyncDispose]: stop,
  };
}
