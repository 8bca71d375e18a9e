/** The flags every command that talks to NATS shares, and how they become a connection. */
import type { NatsConnection } from "@nats-io/transport-node";
import { connectNats, type ConnectOptions } from "../infra/nats/connect.ts";
import { SetupError, UsageError } from "./errors.ts";

export const natsFlagSpec = {
  nats: { type: "string" },
  creds: { type: "string" },
  nkey: { type: "string" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
} as const;

export const natsFlagHelp = [
  "  --nats URL        NATS server(s), comma separated; host:port means nats://host:port",
  "                    (default: $GANGWAY_NATS_URL, else $NATS_URL as the nats CLI reads it)",
  "  --creds FILE      NATS credentials file",
  "  --nkey FILE       nkey seed file of this identity (written by `gangway auth`)",
  "  --tls-ca FILE     CA that signs the servers' certificates (enables TLS)",
  "  --tls-cert FILE   client certificate (mutual TLS), with --tls-key FILE",
].join("\n");

export interface NatsFlags {
  nats?: string;
  creds?: string;
  nkey?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
}

export function natsUrl(flags: NatsFlags): string | undefined {
  const given = flags.nats ?? (process.env.GANGWAY_NATS_URL || undefined) ?? (process.env.NATS_URL || undefined);
  if (given === undefined) return undefined;
  // Like the nats CLI: a bare host:port (or a host) is a nats:// URL.
  const urls = given.split(",").map((u) => u.trim()).filter(Boolean).map((u) => (/^[A-Za-z0-9.[\]:_-]+$/.test(u) && !u.includes("://") ? `nats://${u}` : u));
  const bad = urls.find((u) => !/^(nats|tls|wss?):\/\/[^\s]+$/.test(u));
  if (bad !== undefined || urls.length === 0) throw new UsageError(`--nats must be a URL like nats://127.0.0.1:4222 (or host:port), got "${given}"`);
  return urls.join(",");
}

/** The connection the flags describe; a command that needs a server and got none says so. */
export function connectOptionsFromFlags(flags: NatsFlags, name: string, opts: { reconnect?: boolean } = {}): ConnectOptions {
  const servers = natsUrl(flags);
  if (!servers) throw new UsageError("needs a NATS server: pass --nats URL (or set GANGWAY_NATS_URL); `gangway up` starts one");
  if (flags["tls-cert"] && !flags["tls-key"]) throw new UsageError("--tls-cert needs --tls-key");
  if (flags.creds && flags.nkey) throw new UsageError("--creds and --nkey are two ways to authenticate: pass one");
  return {
    servers,
    name,
    reconnect: opts.reconnect ?? false,
    ...(flags.creds ? { credsFile: flags.creds } : {}),
    ...(flags.nkey ? { nkeyFile: flags.nkey } : {}),
    ...(flags["tls-ca"] ? { tlsCaFile: flags["tls-ca"] } : {}),
    ...(flags["tls-cert"] ? { tlsCertFile: flags["tls-cert"], tlsKeyFile: flags["tls-key"] } : {}),
  };
}

/** Connects with the flags. */
export async function connectFromFlags(flags: NatsFlags, name: string, opts: { reconnect?: boolean } = {}): Promise<NatsConnection> {
  const options = connectOptionsFromFlags(flags, name, opts);
  try {
    return await connectNats(options);
  } catch (err) {
    throw new SetupError(`cannot connect to NATS at ${options.servers}: ${(err as Error).message}`, { cause: err });
  }
}

export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off("SIGINT", on);
      process.off("SIGTERM", on);
      resolve(sig);
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}
