/**
 * Test helper: a real nats-server on a free port with its own store directory, the
 * gangway resources provisioned, and a connection; disposed with `await using`.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { startEmbeddedServer, type EmbeddedServer, type EmbeddedServerOptions } from "../../infra/nats/server.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { provision } from "../../infra/nats/provision.ts";

export interface TestNats extends AsyncDisposable {
  server: EmbeddedServer;
  nc: NatsConnection;
  url: string;
  /** Another connection to the same server (a second process's view). */
  connect(name?: string): Promise<NatsConnection>;
}

export async function startTestNats(opts: EmbeddedServerOptions = {}): Promise<TestNats> {
  const server = await startEmbeddedServer({ name: `gangway-test-${process.pid}`, ...opts });
  const extra: NatsConnection[] = [];
  const nc = await connectNats({ servers: server.url, name: "test", reconnect: false });
  await provision(nc, { duplicateWindowMs: 120_000 });
  const dispose = async () => {
    await Promise.allSettled([nc, ...extra].map((c) => (c.isClosed() ? undefined : c.close())));
    await server.stop();
  };
  return {
    server,
    nc,
    url: server.url,
    async connect(name = "test-extra") {
      const c = await connectNats({ servers: server.url, name, reconnect: false });
      extra.push(c);
      return c;
    },
    [Symbol.asyncDispose]: dispose,
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `check` returns a value (not undefined/false) or the time runs out. */
export async function eventually<T>(check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000, what = "condition"): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}
