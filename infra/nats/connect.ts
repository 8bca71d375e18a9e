/** Connecting to NATS: the embedded server's URL or an operator's, with credentials and TLS. */
import { connect, credsAuthenticator, nkeyAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { fromSeed } from "@nats-io/nkeys";
import { readFile } from "node:fs/promises";
import { inboxPrefixFor } from "./auth.ts";
import { createLogger } from "../log.ts";

export interface ConnectOptions {
  /** Server URL(s), comma separated. */
  servers: string;
  /** Connection name shown by the server (host agent, function, CLI). @default "gangway" */
  name?: string;
  /** NATS credentials file (JWT + nkey seed), as `nats --creds`. */
  credsFile?: string;
  /**
   * A file holding an nkey seed (SU…), as written by `gangway auth`. The connection's
   * inboxes then live under _INBOX.<public key>, the only inbox its permissions allow.
   */
  nkeyFile?: string;
  /** User and password, for simple deployments. */
  user?: string;
  pass?: string;
  /** CA certificate that signs the servers' TLS certificates; enables TLS. */
  tlsCaFile?: string;
  /** Client certificate and key for mutual TLS. */
  tlsCertFile?: string;
  tlsKeyFile?: string;
  /** Keep reconnecting forever (agents, functions); a CLI gives up. @default true */
  reconnect?: boolean;
}

export async function connectNats(opts: ConnectOptions): Promise<NatsConnection> {
  const nkey = opts.nkeyFile ? await readNkeySeed(opts.nkeyFile) : undefined;
  const authenticator = opts.credsFile ? credsAuthenticator(await readFile(opts.credsFile)) : nkey ? nkeyAuthenticator(nkey.seed) : undefined;
  const tls =
    opts.tlsCaFile || opts.tlsCertFile
      ? {
          ...(opts.tlsCaFile ? { caFile: opts.tlsCaFile } : {}),
          ...(opts.tlsCertFile ? { certFile: opts.tlsCertFile } : {}),
          ...(opts.tlsKeyFile ? { keyFile: opts.tlsKeyFile } : {}),
        }
      : undefined;
  const nc = await connect({
    servers: opts.servers.split(",").map((s) => s.trim()),
    name: opts.name ?? "gangway",
    ...(authenticator ? { authenticator } : {}),
    ...(opts.user ? { user: opts.user, pass: opts.pass } : {}),
    ...(tls ? { tls } : {}),
    ...(nkey ? { inboxPrefix: inboxPrefixFor(nkey.publicKey) } : {}),
    reconnect: opts.reconnect ?? true,
    maxReconnectAttempts: opts.reconnect === false ? 0 : -1,
    reconnectTimeWait: 250,
  });
  void logConnectionTrouble(nc, opts.name ?? "gangway");
  return nc;
}

/**
 * What goes wrong with a connection is said in the log: a reconnect loses the requests in
 * flight (they end in their time-outs), and a slow consumer loses messages.
 */
async function logConnectionTrouble(nc: NatsConnection, name: string): Promise<void> {
  const log = createLogger({ component: "nats", connection: name });
  for await (const s of nc.status()) {
    if (s.type === "disconnect" || s.type === "reconnect" || s.type === "ldm") log.warn(`NATS connection: ${s.type}`, { server: s.server });
    else if (s.type === "staleConnection") log.warn("NATS connection: stale (the server stopped answering pings)");
    else if (s.type === "slowConsumer") log.warn("NATS connection: slow consumer", { subject: s.sub.getSubject(), pending: s.pending });
    else if (s.type === "error") log.warn("NATS connection: server error", { error: s.error });
  }
}

export class NkeySeedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NkeySeedError";
  }
}

/** Reads a user seed file; errors name the file, never its content (the seed is a secret). */
export async function readNkeySeed(path: string): Promise<{ seed: Uint8Array; publicKey: string }> {
  const text = await readFile(path, "utf8").catch((err: Error) => {
    throw new NkeySeedError(`cannot read nkey seed file ${path}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err });
  });
  const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l.startsWith("SU"));
  if (!line) throw new NkeySeedError(`${path} holds no nkey user seed (a line starting with SU)`);
  const seed = new TextEncoder().encode(line);
  try {
    return { seed, publicKey: fromSeed(seed).getPublicKey() };
  } catch (err) {
    throw new NkeySeedError(`${path} holds an invalid nkey user seed`, { cause: err });
  }
}
