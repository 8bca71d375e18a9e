/**
 * A small authenticated HTTP door onto the bus, for autoscalers and ops tools that only
 * speak HTTP: POST a structured CloudEvent (one of gangway's commands) to /events, or an
 * Alertmanager webhook to /alertmanager (each firing alert with a `host` label asks for
 * that host's evacuation). Every request needs `Authorization: Bearer <token>`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { timingSafeEqual, createHash } from "node:crypto";
import type { AddressInfo } from "node:net";
import { hostEvacuate, hostEvacuateCancel, migrationCancel, migrationRequested, describeIssues, type AnyEventDefinition } from "../schemas/index.ts";
import type { EventPublisher } from "./events/publisher.ts";
import { encodeStructured } from "./events/binding.ts";
import type { Logger } from "./log.ts";

/** The commands that may come in over HTTP. */
const ACCEPTED: readonly AnyEventDefinition[] = [hostEvacuate, hostEvacuateCancel, migrationRequested, migrationCancel];
const MAX_BODY = 256 * 1024;

export interface HttpIngressOptions {
  /** Port to listen on (0: any free one). */
  port: number;
  /** Address to bind. @default "127.0.0.1" */
  host?: string;
  /** The bearer token callers must present. */
  token: string;
  publisher: EventPublisher;
  log: Logger;
}

export interface HttpIngress {
  readonly port: number;
  close(): Promise<void>;
}

const sha = (s: string) => createHash("sha256").update(s).digest();

function reply(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new Error(`body larger than ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

export async function startHttpIngress(o: HttpIngressOptions): Promise<HttpIngress> {
  if (o.token.length < 16) throw new Error("the HTTP ingress token must be at least 16 characters");
  const want = sha(o.token);
  const authorized = (req: IncomingMessage) => {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? "");
    // Compare digests in constant time: the token never leaks through timing.
    return m !== null && timingSafeEqual(sha(m[1]!), want);
  };

  const publishCloudEvent = async (ce: Record<string, unknown>) => {
    const def = ACCEPTED.find((d) => d.type === ce.type);
    if (!def || def.mode !== "structured") throw new Error(`event type ${String(ce.type)} is not accepted here (accepted: ${ACCEPTED.map((d) => d.type).join(", ")})`);
    const data = def.data.safeParse(ce.data);
    if (!data.success) throw new Error(`${def.type} data: ${describeIssues(data.error)}`);
    const params = Object.fromEntries(def.params.map((p) => [p, String((data.data as Record<string, unknown>)[p] ?? "")]));
    const id = typeof ce.id === "string" && ce.id ? ce.id : undefined;
    const source = typeof ce.source === "string" && ce.source ? `http:${ce.source}` : "http";
    const msg = encodeStructured(def, params, data.data, { source, ...(id ? { id } : {}) });
    await o.publisher.send(msg);
    return { id: msg.id, subject: msg.subject };
  };

  const server: Server = createServer((req, res) => {
    void (async () => {
      if (req.method !== "POST") return reply(res, 405, { error: "POST only" });
      if (!authorized(req)) return reply(res, 401, { error: "missing or wrong bearer token" });
      let body: unknown;
      try {
        body = JSON.parse(await readBody(req));
      } catch (err) {
        return reply(res, 400, { error: `body is not JSON: ${(err as Error).message}` });
      }
      try {
        if (req.url === "/events") return reply(res, 202, await publishCloudEvent(body as Record<string, unknown>));
        if (req.url === "/alertmanager") {
          const alerts = (body as { alerts?: { status?: string; fingerprint?: string; labels?: Record<string, string> }[] }).alerts ?? [];
          const published = [];
          for (const a of alerts) {
            const host = a.labels?.host;
            if (a.status !== "firing" || !host) continue;
            published.push(
              await publishCloudEvent({
                type: hostEvacuate.type,
                id: `alertmanager-${a.fingerprint ?? host}-${host}`,
                source: "alertmanager",
                data: { host, evacuationId: `am-${(a.fingerprint ?? host).replace(/[^A-Za-z0-9_-]/g, "")}`.slice(0, 128), requestedBy: "alertmanager", reason: a.labels?.alertname ?? "alert" },
              }),
            );
          }
          return reply(res, 202, { published });
        }
        return reply(res, 404, { error: "POST /events (a CloudEvent) or /alertmanager (a webhook)" });
      } catch (err) {
        o.log.warn("http ingress refused a request", { url: req.url, reason: (err as Error).message });
        return reply(res, 400, { error: (err as Error).message });
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host ?? "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
