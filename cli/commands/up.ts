/**
 * `gangway up`: an embedded nats-server (or an operator's, with --nats), the streams and
 * stores provisioned, and every function served in one process. Drains on SIGTERM/SIGINT.
 */
import { allFunctions } from "../../functions/index.ts";
import { createDedupIndex } from "../../infra/dedupIndex.ts";
import { createLogger } from "../../infra/log.ts";
import { startEmbeddedServer, type EmbeddedServer } from "../../infra/nats/server.ts";
import { provision } from "../../infra/nats/provision.ts";
import { serveFunctions } from "../../infra/runtime/functionHost.ts";
import { startTelemetry } from "../../infra/telemetry.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec, natsUrl, untilSignal } from "../natsFlags.ts";
import { UsageError } from "../errors.ts";
import { readFile } from "node:fs/promises";
import { jetstream } from "@nats-io/jetstream";
import { createPublisher } from "../../infra/events/publisher.ts";
import { startHttpIngress } from "../../infra/httpIngress.ts";
import { watchMigrationMetrics } from "../../infra/migrationMetrics.ts";

const help = `usage: gangway up [--nats URL] [--store DIR] [--port N] [--json]

Runs every gangway function in this process. Without --nats it starts an embedded
nats-server with JetStream on 127.0.0.1 (a free port unless --port) and prints its URL.

  --store DIR       JetStream store directory for the embedded server (default: temporary)
  --port N          client port for the embedded server
  --http PORT       also accept commands over HTTP (POST /events, /alertmanager) on 127.0.0.1:PORT,
                    authenticated by the bearer token in GANGWAY_HTTP_TOKEN or --http-token-file FILE
  --http-token-file FILE  file holding that token
  --metrics-port N  serve Prometheus metrics at http://127.0.0.1:N/metrics (KubeVirt-style
                    gangway_migration_* series per migration and VM; see README "Metrics")
  --metrics-host H  address for --metrics-port (default 127.0.0.1; 0.0.0.0 for every interface)
  --replicas N      stream and bucket replicas when provisioning a cluster (default 1)
  --json            print {"url":…} as one JSON line once ready
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, store: { type: "string" }, port: { type: "string" }, replicas: { type: "string" }, http: { type: "string" }, "http-token-file": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" }, "metrics-port": { type: "string" }, "metrics-host": { type: "string" } });
  if (values.help) return void process.stdout.write(help + "\n");
  if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw new UsageError(`--port must be a TCP port number, got "${values.port}"`);
  const replicas = values.replicas === undefined ? 1 : Number(values.replicas);
  if (!(Number.isInteger(replicas) && replicas >= 1 && replicas <= 5)) throw new UsageError(`--replicas must be 1 to 5, got "${values.replicas}"`);
  const httpPort = values.http === undefined ? undefined : Number(values.http);
  if (httpPort !== undefined && !(Number.isInteger(httpPort) && httpPort >= 0 && httpPort < 65536)) throw new UsageError(`--http must be a TCP port number, got "${values.http}"`);
  const httpToken = values["http-token-file"] ? (await readFile(values["http-token-file"], "utf8")).trim() : process.env.GANGWAY_HTTP_TOKEN;
  if (httpPort !== undefined && (!httpToken || httpToken.length < 16)) throw new UsageError("--http needs a bearer token of at least 16 characters in GANGWAY_HTTP_TOKEN or --http-token-file");
  const url = natsUrl(values);
  if (url && (values.store || port)) throw new UsageError("--store and --port are for the embedded server; not with --nats");

  const metricsPort = values["metrics-port"] === undefined ? undefined : Number(values["metrics-port"]);
  if (metricsPort !== undefined && !(Number.isInteger(metricsPort) && metricsPort > 0 && metricsPort < 65536)) throw new UsageError(`--metrics-port must be a TCP port number, got "${values["metrics-port"]}"`);
  if (values["metrics-host"] !== undefined && metricsPort === undefined) throw new UsageError("--metrics-host needs --metrics-port");

  const log = createLogger({ component: "up" });
  const telemetry = startTelemetry({ serviceName: "gangway-functions", ...(metricsPort ? { prometheus: { port: metricsPort, host: values["metrics-host"] ?? "127.0.0.1" } } : {}) });
  let server: EmbeddedServer | undefined;
  try {
    if (!url) server = await startEmbeddedServer({ ...(values.store ? { storeDir: values.store } : {}), ...(port ? { port } : {}) });
    const servers = url ?? server!.url;
    const nc = await connectFromFlags({ ...values, nats: servers }, "gangway-up", { reconnect: true });
    try {
      await provision(nc, { replicas });
      const functions = allFunctions({ dedupIndex: createDedupIndex(nc) });
      const served = await serveFunctions(functions, nc);
      const migrationMetrics = watchMigrationMetrics(nc);
      const ingress = httpPort === undefined ? undefined : await startHttpIngress({ port: httpPort, token: httpToken!, publisher: createPublisher(jetstream(nc), "gangway/http"), log });
      log.info("gangway is up", { url: servers, functions: functions.map((f) => f.id) });
      if (values.json) printJson({ url: servers, functions: functions.map((f) => f.id), embedded: Boolean(server), ...(ingress ? { http: ingress.port } : {}), ...(metricsPort ? { metrics: `http://${values["metrics-host"] ?? "127.0.0.1"}:${metricsPort}/metrics` } : {}) });
      else process.stdout.write(`gangway is up: NATS at ${servers}; functions: ${functions.map((f) => f.id).join(", ")}. Ctrl-C to stop.\n`);
      const sig = await untilSignal();
      log.info("draining", { signal: sig });
      await ingress?.close();
      migrationMetrics.close();
      await served.stop();
    } finally {
      await nc.drain().catch(() => nc.close());
    }
  } finally {
    await server?.stop();
    await telemetry.shutdown();
  }
}
