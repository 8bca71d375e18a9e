/**
 * NATS as the fault suite breaks it: a server that can be SIGKILLed and started again on the
 * same port and store, a three-node JetStream cluster whose nodes can be killed one by one,
 * and a TCP relay between one process and NATS whose link can be cut and restored.
 */
import { createServer, connect, type Server, type Socket } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { startEmbeddedServer, type EmbeddedServer } from "../../infra/nats/server.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";
import { eventually, sleep, type TestNats } from "../helpers/nats.ts";

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** SIGKILL, and wait until the process is gone. */
export async function killServer(s: EmbeddedServer): Promise<void> {
  s.signal("SIGCONT");
  s.signal("SIGKILL");
  await eventually(() => !alive(s.pid), 10_000, `nats-server ${s.pid} gone`);
}

/** A free TCP port on 127.0.0.1 (for cluster routes, which need fixed ones). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The test's own connections reconnect (a CLI would give up; a test must see the end). */
const connectTo = (servers: string, name: string) => connectNats({ servers, name, reconnect: true });

/** More connections to `url` beside the main one, and closing them all (main one included). */
function connections(url: string, nc: NatsConnection): { connect(name?: string): Promise<NatsConnection>; closeAll(): Promise<void> } {
  const extra: NatsConnection[] = [];
  return {
    async connect(name = "test-extra") {
      const c = await connectTo(url, name);
      extra.push(c);
      return c;
    },
    async closeAll() {
      await Promise.allSettled([nc, ...extra].map((c) => (c.isClosed() ? undefined : c.close())));
    },
  };
}

export interface RestartableNats extends TestNats {
  /** SIGKILL the server (its store stays). */
  kill(): Promise<void>;
  /** Start it again on the same port and store directory. */
  restart(): Promise<void>;
}

export async function startRestartableNats(): Promise<RestartableNats> {
  const base = await mkdtemp(join(tmpdir(), "gw-faults-nats-"));
  const storeDir = join(base, "js");
  let server = await startEmbeddedServer({ name: `gangway-faults-${process.pid}`, storeDir });
  const port = server.port;
  const url = server.url;
  const nc = await connectTo(url, "test");
  await provision(nc, { duplicateWindowMs: 120_000 });
  const conns = connections(url, nc);
  return {
    get server() {
      return server;
    },
    nc,
    url,
    connect: conns.connect,
    kill: () => killServer(server),
    async restart() {
      server = await startEmbeddedServer({ name: `gangway-faults-${process.pid}`, storeDir, port });
    },
    async [Symbol.asyncDispose]() {
      await conns.closeAll();
      await server.stop();
      await rm(base, { recursive: true, force: true });
    },
  };
}

export interface NatsCluster extends TestNats {
  readonly nodes: EmbeddedServer[];
  /** The node of that server name. */
  node(name: string): EmbeddedServer;
  readonly names: string[];
  /** Starts a (killed) node again: same name, ports and store. */
  restart(name: string): Promise<void>;
}

/**
 * `n` nats-servers in one cluster, JetStream on each, gangway's stream and stores
 * provisioned with `n` replicas; `url` lists every node, comma separated.
 */
export async function startNatsCluster(n = 3): Promise<NatsCluster> {
  const base = await mkdtemp(join(tmpdir(), "gw-faults-cluster-"));
  const routes = await Promise.all(Array.from({ length: n }, () => freePort()));
  const names = routes.map((_, i) => `gw-faults-${process.pid}-n${i}`);
  const options = routes.map((port, i) => ({
    name: names[i]!,
    storeDir: join(base, `n${i}`),
    extraConfig: [
      `cluster {`,
      `  name: "gw-faults-${process.pid}"`,
      `  listen: "127.0.0.1:${port}"`,
      `  routes: [${routes.filter((_, j) => j !== i).map((p) => JSON.stringify(`nats-route://127.0.0.1:${p}`)).join(", ")}]`,
      `}`,
    ].join("\n"),
  }));
  const nodes = await Promise.all(options.map((o) => startEmbeddedServer(o)));
  const url = nodes.map((s) => s.url).join(",");
  const nc = await connectTo(url, "test");
  // JetStream answers once the meta group has a leader.
  await eventually(async () => {
    try {
      await provision(nc, { duplicateWindowMs: 120_000, replicas: n });
      return true;
    } catch {
      await sleep(500);
      return false;
    }
  }, 60_000, "JetStream cluster ready and provisioned");
  const conns = connections(url, nc);
  return {
    server: nodes[0]!,
    nodes,
    names,
    node: (name) => nodes[names.indexOf(name)]!,
    async restart(name) {
      const i = names.indexOf(name);
      nodes[i] = await startEmbeddedServer({ ...options[i]!, port: nodes[i]!.port });
    },
    nc,
    url,
    connect: conns.connect,
    async [Symbol.asyncDispose]() {
      await conns.closeAll();
      await Promise.allSettled(nodes.map((s) => s.stop()));
      await rm(base, { recursive: true, force: true });
    },
  };
}

export interface CuttableRelay {
  readonly url: string;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Cuts the link: every connection through it is dropped and new ones are refused. */
  cut(): void;
  /** The link is back: new connections go through. */
  restore(): void;
  close(): Promise<void>;
}

/** A TCP relay to a NATS server that can be cut, as a network partition would. */
export async function cuttableRelay(targetPort: number): Promise<CuttableRelay> {
  const sockets = new Set<Socket>();
  let down = false;
  let connections = 0;
  const server: Server = createServer((client) => {
    if (down) return void client.destroy();
    connections++;
    const upstream = connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => undefined);
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `nats://127.0.0.1:${port}`,
    get connections() {
      return connections;
    },
    cut() {
      down = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      down = false;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
