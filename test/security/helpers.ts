/**
 * Test helpers for the security suite: a real nats-server with `gangway auth`'s identities
 * (and, when asked, TLS from a throwaway CA made with openssl), provisioned as the
 * functions identity would provision it.
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { writeAuth, type AuthIdentity } from "../../cli/commands/auth.ts";
import { connectNats, type ConnectOptions } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";
import { startEmbeddedServer, type EmbeddedServer } from "../../infra/nats/server.ts";

export interface Certs {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** A CA and a server certificate for 127.0.0.1/localhost, valid for a day. */
export function makeCerts(dir: string): Certs {
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca.key"), "-out", f("ca.pem"), "-days", "1", "-subj", "/CN=gangway test CA");
  ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f("server.key"), "-out", f("server.csr"), "-subj", "/CN=localhost");
  execFileSync("sh", ["-c", `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ${JSON.stringify(f("san.ext"))}`]);
  ssl("x509", "-req", "-in", f("server.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-out", f("server.pem"), "-days", "1", "-extfile", f("san.ext"));
  return { caFile: f("ca.pem"), certFile: f("server.pem"), keyFile: f("server.key") };
}

export interface SecureNats extends AsyncDisposable {
  server: EmbeddedServer;
  url: string;
  dir: string;
  /** Seed files by identity name: agent-hostA, agent-hostB, functions, operator. */
  identities: Map<string, AuthIdentity>;
  certs?: Certs;
  /** The connection options of an identity (with TLS when on). */
  options(identity: string): ConnectOptions;
  connectAs(identity: string): Promise<NatsConnection>;
}

export async function startSecureNats(o: { hosts?: string[]; tls?: boolean } = {}): Promise<SecureNats> {
  const dir = await mkdtemp(join(tmpdir(), "gangway-sec-"));
  const auth = await writeAuth({ hosts: o.hosts ?? ["hostA", "hostB"], outDir: join(dir, "auth") });
  const certs = o.tls ? makeCerts(dir) : undefined;
  const server = await startEmbeddedServer({
    name: `gangway-sec-${process.pid}`,
    authorizationFile: auth.config,
    ...(certs ? { tls: { certFile: certs.certFile, keyFile: certs.keyFile } } : {}),
  });
  const identities = new Map(auth.identities.map((i) => [i.name, i]));
  const open: NatsConnection[] = [];
  const options = (identity: string): ConnectOptions => {
    const id = identities.get(identity);
    if (!id) throw new Error(`no identity ${identity}`);
    return { servers: server.url, name: `test-${identity}`, reconnect: false, nkeyFile: id.seedFile, ...(certs ? { tlsCaFile: certs.caFile } : {}) };
  };
  const connectAs = async (identity: string) => {
    const nc = await connectNats(options(identity));
    open.push(nc);
    return nc;
  };
  // `gangway up --nats … --nkey functions.nk` provisions; so does this.
  await provision(await connectAs("functions"), { duplicateWindowMs: 120_000 });
  return {
    server,
    url: server.url,
    dir,
    identities,
    ...(certs ? { certs } : {}),
    options,
    connectAs,
    async [Symbol.asyncDispose]() {
      await Promise.allSettled(open.map((c) => (c.isClosed() ? undefined : c.close())));
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Permission violations the server logged (publish and subscribe). */
export const violations = (server: EmbeddedServer): string[] => server.log().split("\n").filter((l) => /Violation/.test(l));

