/** The HTTP door onto the bus: token required, commands validated, Alertmanager webhooks. */
import { describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { startTestNats, eventually } from "../helpers/nats.ts";
import { startHttpIngress } from "../../infra/httpIngress.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { readEvents } from "../../infra/events/reader.ts";
import { createLogger } from "../../infra/log.ts";

const TOKEN = "s3cret-token-for-tests";

describe("HTTP ingress (real nats-server)", () => {
  it("puts authenticated, valid commands on the bus and refuses the rest with a reason", async () => {
    await using nats = await startTestNats();
    const ingress = await startHttpIngress({ port: 0, token: TOKEN, publisher: createPublisher(jetstream(nats.nc), "gangway/http"), log: createLogger() });
    const post = (path: string, body: unknown, token: string | null = TOKEN) =>
      fetch(`http://127.0.0.1:${ingress.port}${path}`, { method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
    try {
      const evacuate = { specversion: "1.0", id: "scaler-1", source: "autoscaler", type: "io.gangway.host.evacuate.v1", data: { host: "h1", evacuationId: "ev1", requestedBy: "autoscaler" } };
      expect((await post("/events", evacuate, null)).status).toBe(401);
      expect((await post("/events", evacuate, "wrong-token-wrong-token")).status).toBe(401);
      const bad = await post("/events", { ...evacuate, data: { host: "h.1", evacuationId: "ev1", requestedBy: "x" } });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: string }).error).toMatch(/host: /);
      const notCommand = await post("/events", { ...evacuate, type: "io.gangway.migration.committed.v1" });
      expect(notCommand.status).toBe(400);
      const ok = await post("/events", evacuate);
      expect(ok.status).toBe(202);
      expect(await ok.json()).toMatchObject({ id: "scaler-1", subject: "gw.cmd.host.h1.evacuate" });
      const am = await post("/alertmanager", { alerts: [{ status: "firing", fingerprint: "abc123", labels: { alertname: "DiskFailing", host: "h2" } }, { status: "resolved", labels: { host: "h3" } }] });
      expect(am.status).toBe(202);
      const events = await eventually(async () => {
        const out = [];
        for await (const e of readEvents(nats.nc, { filter: "gw.cmd.host.>" })) if (e.result.ok) out.push(e.result.event);
        return out.length >= 2 ? out : undefined;
      }, 10_000, "two evacuate commands");
      expect(events.map((e) => [e.subject, (e as { data: { reason?: string } }).data.reason])).toEqual([["host/h1", undefined], ["host/h2", "DiskFailing"]]);
    } finally {
      await ingress.close();
    }
  });
});
