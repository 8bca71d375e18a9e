/**
 * The agent's request-reply services as schemas/ declares them, against a real nats-server:
 * a request that fits is answered by the handler, one that does not (or a handler that
 * throws) by `failed`, and the asking side checks the answer's shape.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, type TestNats } from "../helpers/nats.ts";
import { answer, ask } from "../../infra/nats/service.ts";
import { agentConsole, agentManifest } from "../../schemas/index.ts";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => {
  await nats[Symbol.asyncDispose]();
});

describe("request-reply services", () => {
  it("answers a request that fits, and says why of one that does not", async () => {
    const sub = answer(nats.nc, agentConsole, { host: "svcA" }, {
      handle: async (req) => {
        if (req.vm === "gone") throw new Error(`no VM ${req.vm}`);
        return { ok: true, line: `${req.send}->${req.expect}` };
      },
      failed: (error) => ({ ok: false, error }),
    });
    try {
      expect(await ask(nats.nc, agentConsole, { host: "svcA" }, { vm: "v1", send: "v", expect: "OK" }, { timeoutMs: 2000 })).toEqual({ ok: true, line: "v->OK" });
      expect(await ask(nats.nc, agentConsole, { host: "svcA" }, { vm: "gone", send: "v", expect: "OK" }, { timeoutMs: 2000 })).toEqual({ ok: false, error: "no VM gone" });
      const bad = JSON.parse(new TextDecoder().decode((await nats.nc.request(agentConsole.subject({ host: "svcA" }), JSON.stringify({ vm: "v1" }), { timeout: 2000 })).data)) as { ok: boolean; error: string };
      expect(bad.ok).toBe(false);
      expect(bad.error).toMatch(/^send: /);
    } finally {
      sub.unsubscribe();
    }
  });

  it("refuses an answer that does not fit the service", async () => {
    const sub = nats.nc.subscribe(agentManifest.subject({ host: "svcB" }), { callback: (_e, m) => void m.respond(JSON.stringify({ seqWritten: "three" })) });
    try {
      await expect(ask(nats.nc, agentManifest, { host: "svcB" }, { migrationId: "m1", vm: "v1" }, { timeoutMs: 2000 })).rejects.toThrow();
    } finally {
      sub.unsubscribe();
    }
  });
});
