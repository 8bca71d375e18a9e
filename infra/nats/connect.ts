/** Connecting to NATS: the embedded server's URL or an operator's, with credentials and TLS. */
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { readFile } from "node:fs/promises";

export interface ConnectOptions {
  /** Server URL(s), comma separated. */
  servers: string;
  /** Connection name shown by the server (host agent, function, CLI). @default "gangway" */
  name?: string;
  /** NATS credentials file (JWT + nkey seed), as `nats --creds`. */
  credsFile?: string;
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
  const authenticator = opts.credsFile ? credsAuthenticator(await readFile(opts.credsFile)) : undefined;
  const tls =
    opts.tlsCaFile || opts.tlsCertFile
      ? {
          ...(opts.tlsCaFile ? { caFile: opts.tlsCaFile } : {}),
          ...(opts.tlsCertFile ? { certFile: opts.tlsCertFile } : {}),
          ...(opts.tlsKeyFile ? { keyFile: opts.tlsKeyFile } : {}),
        }
      : undefined;
  return connect({
    servers: opts.servers.split(",").map((s) => s.trim()),
    name: opts.name ?? "gangway",
    ...(authenticator ? { authenticator } : {}),
    ...(opts.user ? { user: opts.user, pass: opts.pass } : {}),
    ...(tls ? { tls } : {}),
    reconnect: opts.reconnect ?? true,
    maxReconnectAttempts: opts.reconnect === false ? 0 : -1,
    reconnectTimeWait: 250,
  });
}
