/**
 * The proof that the allow-lists are complete: a real gang migration (real QEMU, the
 * functions and two host agents as separate processes) on a nats-server with
 * authentication and TLS on, every process on its own identity. Then no permission
 * violation may have happened, and no secret (the content-key secret, an nkey seed, the
 * HTTP token) may appear in the retained stream, the server's log or the processes' logs.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createHmac, randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { reapVms, spawnGangway, startVms, testGuestSpec, verifyGuest, hostVms, type GangwayProcess } from "../../cli/localCluster.ts";
import { migrateGang } from "../../cli/gangMigration.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { startSecureNats, violations, type SecureNats } from "./helpers.ts";
import { eventually } from "../helpers/nats.ts";

let s: SecureNats;
let work: string;
let procs: GangwayProcess[];
const logs: string[] = [];
const secret = `key-secret-${randomBytes(16).toString("hex")}`;
const httpToken = `http-token-${randomBytes(16).toString("hex")}`;

beforeEach(async () => {
  s = await startSecureNats({ tls: true });
  work = await mkdtemp(join(tmpdir(), "gangway-secmig-"));
  procs = [];
});

afterEach(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => undefined);
  await reapVms(work); // these agents keep their VMs on exit (the default), so nothing may stay behind
  await s[Symbol.asyncDispose]();
  await rm(work, { recursive: true, force: true });
});

/** A gangway process on an identity, over TLS, with its log kept for the secrets check. */
async function spawnAs(name: string, identity: string, args: string[], ready: RegExp): Promise<GangwayProcess> {
  const env = { GANGWAY_KEY_SECRET: secret, GANGWAY_HTTP_TOKEN: httpToken, GANGWAY_LOG_LEVEL: "info" };
  const p = await spawnGangway(name, [...args, "--nats", s.url, "--nkey", s.identities.get(identity)!.seedFile, "--tls-ca", s.certs!.caFile, "--json"], ready, env);
  p.child.stderr!.on("data", (d: Buffer) => logs.push(d.toString()));
  p.child.stdout!.on("data", (d: Buffer) => logs.push(d.toString()));
  procs.push(p);
  return p;
}

describe("a gang migration with authentication and TLS on", () => {
  it("completes and verifies with every process on its own identity: no permission violation, no secret in events or logs", async () => {
    const httpPort = await freePort();
    await spawnAs("functions", "functions", ["up", "--http", String(httpPort)], /"url"/);
    await spawnAs("agent hostA", "agent-hostA", ["agent", "--host", "hostA", "--run-dir", join(work, "hostA")], /"ready"/);
    await spawnAs("agent hostB", "agent-hostB", ["agent", "--host", "hostB", "--run-dir", join(work, "hostB")], /"ready"/);
    const op = await s.connectAs("operator");

    const vms = ["s1", "s2"];
    await startVms(op, "hostA", vms.map((n, i) => testGuestSpec(n, { tenant: "alpha", memoryMiB: 64, seed: i + 1, rate: 200 })));
    const summary = await migrateGang({ nc: op, vms, sourceHost: "hostA", targetHost: "hostB" });
    expect(summary.outcome, summary.reason).toBe("succeeded");
    for (const v of vms) expect(await verifyGuest(op, "hostB", v)).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    // Exactly one copy: the source quits its VMs once the destination runs them.
    await eventually(async () => {
      const onA = await hostVms(op, "hostA");
      return vms.every((v) => !onA.has(v)) || undefined;
    }, 30_000, "the source's copies gone");
    // The operator re-verifies it from the stream and the packs (gangway audit, as a process).
    const audit = spawnSync(process.execPath, ["bin/gangway.mjs", "audit", summary.migrationId, "--json", "--nats", s.url, "--nkey", s.identities.get("operator")!.seedFile, "--tls-ca", s.certs!.caFile], { encoding: "utf8", env: { ...process.env, GANGWAY_KEY_SECRET: secret } });
    expect(audit.status, audit.stderr).toBe(0);
    logs.push(audit.stdout, audit.stderr);

    // The HTTP ingress: a wrong token is refused, the right one accepted (a harmless cancel).
    const post = (token: string) =>
      fetch(`http://127.0.0.1:${httpPort}/events`, {
        method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ type: "io.gangway.migration.cancel.v1", data: { migrationId: "mig-none", requestedBy: "security-test" } }),
      }).then((r) => r.status);
    expect(await post(`${httpToken}-wrong`)).toBe(401);
    expect(await post(httpToken)).toBe(202);

    // Every identity stayed within its allow-list through the whole run.
    expect(violations(s.server)).toEqual([]);

    // Secrets: the key secret, the seeds, the token, and the tenant's derived key seeds.
    const seeds = await Promise.all([...s.identities.values()].map(async (i) => (await readFile(i.seedFile, "utf8")).trim()));
    // The tenant's key material: what createPageKeyer derives from the secret (the two
    // xxh64 seeds), in hex and in decimal.
    const mac = createHmac("sha256", secret).update("gangway/page-key/v1/alpha").digest();
    const derived = [mac.toString("hex"), mac.subarray(0, 8).toString("hex"), mac.subarray(8, 16).toString("hex"), String(mac.readBigUInt64BE(0)), String(mac.readBigUInt64BE(8))];
    const forbidden = [secret, httpToken, `${httpToken}-wrong`, ...seeds, ...derived];
    const streamText = await dumpStream(op);
    expect(streamText.length).toBeGreaterThan(10_000);
    const logText = logs.join("") + s.server.log();
    for (const f of forbidden) {
      expect(streamText.includes(f), "a secret is in the event stream").toBe(false);
      expect(logText.includes(f), "a secret is in a log").toBe(false);
    }
  }, 300_000);

  it("post-copy (fault requests, pages served after switch-over) stays within the allow-lists too", async () => {
    await spawnAs("functions", "functions", ["up"], /"url"/);
    await spawnAs("agent hostA", "agent-hostA", ["agent", "--host", "hostA", "--run-dir", join(work, "hostA")], /"ready"/);
    await spawnAs("agent hostB", "agent-hostB", ["agent", "--host", "hostB", "--run-dir", join(work, "hostB")], /"ready"/);
    const op = await s.connectAs("operator");
    // A guest rewriting pages faster than an 8 MB/s link carries: pre-copy cannot finish.
    await startVms(op, "hostA", [testGuestSpec("hot1", { tenant: "alpha", memoryMiB: 64, seed: 5, rate: 5000 })]);
    const summary = await migrateGang({ nc: op, vms: ["hot1"], sourceHost: "hostA", targetHost: "hostB", options: { bandwidthMBps: 8, maxRounds: 2, postcopy: true } });
    expect(summary.outcome, summary.reason).toBe("succeeded");
    expect(summary.vms[0]!.mode).toBe("PostCopy");
    expect(await verifyGuest(op, "hostB", "hot1")).toMatchObject({ ok: true, line: expect.stringMatching(/VERIFY OK/) });
    expect(violations(s.server)).toEqual([]);
  }, 300_000);
});

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });

/** Every message of the event stream, subjects, headers and bodies, as text (latin1, so bytes survive). */
async function dumpStream(nc: Parameters<typeof jetstream>[0]): Promise<string> {
  const js = jetstream(nc);
  const c = await js.consumers.get(EVENTS_STREAM, { filter_subjects: "gw.>" });
  const parts: string[] = [];
  for (;;) {
    const m = await c.next({ expires: 2000 });
    if (!m) break;
    parts.push(m.subject, m.headers ? [...m.headers.keys()].map((k) => `${k}: ${m.headers!.get(k)}`).join("\n") : "", Buffer.from(m.data).toString("latin1"));
    if (m.info.pending === 0) break;
  }
  return parts.join("\n");
}
