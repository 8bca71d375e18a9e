/**
 * NATS authentication and per-identity permissions, against a real nats-server started
 * with `gangway auth`'s config: each host agent does its own work and nothing of another
 * host's; unauthenticated clients and unknown keys are refused; TLS when configured.
 */
import { describe, expect, it } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createUser } from "@nats-io/nkeys";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { startAgent } from "../../adapters/host/agent.ts";
import type { QemuDriver, RunningVm } from "../../adapters/host/qemuDriver.ts";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { connectNats } from "../../infra/nats/connect.ts";
import { createLogger } from "../../infra/log.ts";
import { latestInventories } from "../../cli/localCluster.ts";
import { agentVmStart, hostInventory, migrationCommitted, type VmSpec } from "../../schemas/index.ts";
import { eventually } from "../helpers/nats.ts";
import { startSecureNats, violations, type SecureNats } from "./helpers.ts";

/** A driver with VMs that exist only in memory: the agent's bus side is what is tested. */
function memoryDriver(): QemuDriver {
  const vm = (spec: VmSpec): RunningVm => ({
    name: spec.name, spec, role: "source", ramPath: "/nonexistent",
    status: async () => "running", cont: async () => undefined, stop: async () => undefined, quit: async () => undefined,
    console: async () => "ok", exited: new Promise(() => undefined),
  });
  return {
    reclaim: async () => [],
    startVm: async (s: VmSpec) => vm(s),
    migrateOut: () => Promise.reject(new Error("not in this test")),
    migrateIn: () => Promise.reject(new Error("not in this test")),
  } as unknown as QemuDriver;
}

const spec = (name: string): VmSpec => ({ name, tenant: "alpha", memoryMiB: 64, kernel: "/nonexistent", append: "", readyPattern: "READY" });

/** Resolves to the error message if `p` fails, or "ok". */
const outcome = (p: Promise<unknown>) => p.then(() => "ok", (e: Error) => e.message);

/** Subscribes and reports whether the server let the subscription stand. */
async function trySubscribe(nc: NatsConnection, subject: string): Promise<"refused" | "allowed"> {
  const sub = nc.subscribe(subject);
  await nc.flush();
  // A refused subscription is closed by the client when the server's -ERR arrives.
  const closed = await Promise.race([sub.closed.then(() => true, () => true), new Promise<false>((r) => setTimeout(() => r(false), 500))]);
  if (!closed) sub.unsubscribe();
  return closed ? "refused" : "allowed";
}

async function noMessageOn(s: SecureNats, subject: string): Promise<boolean> {
  const jsm = await jetstreamManager(await s.connectAs("functions"));
  return (await jsm.streams.getMessage("GANGWAY", { last_by_subj: subject }).catch(() => null)) === null;
}

describe("NATS identities (real nats-server, gangway auth's config)", () => {
  it("writes one seed per identity, readable only by its owner", async () => {
    await using s = await startSecureNats({ hosts: ["hostA", "hostB", "hostC"] });
    expect([...s.identities.keys()].sort()).toEqual(["agent-hostA", "agent-hostB", "agent-hostC", "functions", "operator"]);
    for (const id of s.identities.values()) expect((await stat(id.seedFile)).mode & 0o777).toBe(0o600);
    // The CLI prints names, roles and public keys only, never a seed.
    const out = execFileSync(process.execPath, ["bin/gangway.mjs", "auth", "hostA", "hostB", "hostC", "--out", join(s.dir, "auth"), "--json"], { encoding: "utf8" });
    expect(out).not.toMatch(/"SU[A-Z2-7]{50,}/);
    const listed = JSON.parse(out) as { identities: { name: string; publicKey: string }[] };
    // Seeds in place are kept: the keys did not change.
    for (const i of listed.identities) expect(i.publicKey).toBe(s.identities.get(i.name)!.publicKey);
  });

  it("refuses clients without credentials and keys it does not know", async () => {
    await using s = await startSecureNats();
    expect(await outcome(connectNats({ servers: s.url, reconnect: false }))).toMatch(/Authorization Violation/i);
    const stranger = join(s.dir, "stranger.nk");
    await writeFile(stranger, new TextDecoder().decode(createUser().getSeed()), { mode: 0o600 });
    expect(await outcome(connectNats({ servers: s.url, reconnect: false, nkeyFile: stranger }))).toMatch(/Authorization Violation/i);
    // A CLI process without --nkey is refused the same way.
    const r = spawnSync(process.execPath, ["bin/gangway.mjs", "vm", "list", "--json", "--nats", s.url], { encoding: "utf8" });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/Authorization Violation/i);
  });

  it("a host agent runs on its own identity: takes its commands, publishes its inventory, answers its pings; no violation", async () => {
    await using s = await startSecureNats();
    const log = createLogger({}, () => undefined);
    const agentA = await startAgent({ host: "hostA", nc: await s.connectAs("agent-hostA"), driver: memoryDriver(), log });
    const agentB = await startAgent({ host: "hostB", nc: await s.connectAs("agent-hostB"), driver: memoryDriver(), log });
    try {
      const op = await s.connectAs("operator");
      // The operator starts a VM on hostA; only hostA's agent receives it.
      await createPublisher(jetstream(op), "gangway/cli").publish(agentVmStart, { host: "hostA" }, { host: "hostA", spec: spec("v1") });
      const inv = await eventually(async () => (await latestInventories(op)).get("hostA")?.find((v) => v.vm === "v1"), 15_000, "v1 in hostA's inventory");
      expect(inv.state).toBe("running");
      expect((await latestInventories(op)).get("hostB")?.some((v) => v.vm === "v1")).toBe(false);
      // Liveness: the operator and the peer agent may ping it.
      const reply = JSON.parse(new TextDecoder().decode((await op.request("gwsvc.agent.hostA.status", "", { timeout: 5000 })).data)) as { host: string };
      expect(reply.host).toBe("hostA");
      const peer = await s.connectAs("agent-hostB");
      expect((await peer.request("gwsvc.agent.hostA.status", "", { timeout: 5000 })).data.byteLength).toBeGreaterThan(0);
      // The data plane: a pack put and read back by agents.
      const packsA = await openPackStore(await s.connectAs("agent-hostA"));
      await packsA.putObject("probe-object", new Uint8Array([1, 2, 3]));
      const packsB = await openPackStore(peer);
      expect(Array.from((await packsB.getObject("probe-object")) ?? [])).toEqual([1, 2, 3]);
      expect(violations(s.server)).toEqual([]);
    } finally {
      await agentA.stop();
      await agentB.stop();
    }
  }, 60_000);

  it("an agent is refused every other host's commands, services and consumers, the decisions, and the functions' state", async () => {
    await using s = await startSecureNats();
    const b = await s.connectAs("agent-hostB");
    // hostB's own command consumer exists (its agent created it), with a command waiting.
    await startAgent({ host: "hostB", nc: b, driver: memoryDriver(), log: createLogger({}, () => undefined) }).then((ag) => ag.stop());
    const a = await s.connectAs("agent-hostA");
    const js = jetstream(a);
    const jsm = await jetstreamManager(a);
    const pubA = createPublisher(js, "gangway/host/hostA");

    // Publishing another host's command, posing as another host, or publishing a decision.
    expect(await outcome(pubA.publish(agentVmStart, { host: "hostB" }, { host: "hostB", spec: spec("evil") }))).toMatch(/Permissions Violation for Publish to "gw.cmd.agent.hostB.vm-start"/);
    expect(await outcome(pubA.publish(hostInventory, { host: "hostB" }, { host: "hostB", memoryTotalBytes: 1, memoryFreeBytes: 1, vms: [] }))).toMatch(/Permissions Violation/);
    expect(await outcome(js.publish(migrationCommitted.subject({ migrationId: "m1" }), "{}"))).toMatch(/Permissions Violation/);
    expect(await noMessageOn(s, "gw.cmd.agent.hostB.vm-start")).toBe(true);
    // hostB's last inventory is its agent's own, not the forged one.
    const lastInv = await (await jetstreamManager(await s.connectAs("functions"))).streams.getMessage("GANGWAY", { last_by_subj: "gw.host.hostB.inventory" });
    expect((lastInv!.json() as { data: { memoryTotalBytes: number } }).data.memoryTotalBytes).toBeGreaterThan(1);

    // Reading another host's commands: subscription, durable, a new consumer, pulling.
    expect(await trySubscribe(a, "gw.cmd.agent.hostB.>")).toBe("refused");
    expect(await trySubscribe(a, "gw.>")).toBe("refused");
    expect(await outcome(jsm.consumers.add("GANGWAY", { durable_name: "agent-hostB", filter_subject: "gw.cmd.agent.hostB.>" }))).toMatch(/Permissions Violation/);
    expect(await outcome(jsm.consumers.add("GANGWAY", { name: "sneaky", filter_subject: "gw.cmd.agent.hostB.>" }))).toMatch(/Permissions Violation/);
    expect(await outcome(a.request("$JS.API.CONSUMER.MSG.NEXT.GANGWAY.agent-hostB", JSON.stringify({ batch: 1 }), { timeout: 2000 }))).toMatch(/Permissions Violation/);
    expect(await outcome(a.request("$JS.API.CONSUMER.DELETE.GANGWAY.agent-hostB", "", { timeout: 2000 }))).toMatch(/Permissions Violation/);
    expect(await outcome(a.request("$JS.API.CONSUMER.MSG.NEXT.GANGWAY.fn-commit-ready", JSON.stringify({ batch: 1 }), { timeout: 2000 }))).toMatch(/Permissions Violation/);

    // Another host's services, other identities' inboxes, the functions' KV state.
    expect(await trySubscribe(a, "gwsvc.agent.hostB.console")).toBe("refused");
    expect(await trySubscribe(a, "gwsvc.agent.hostB.status")).toBe("refused");
    expect(await outcome(a.request("gwsvc.agent.hostB.console", JSON.stringify({ vm: "x", send: "v", expect: "." }), { timeout: 2000 }))).toMatch(/Permissions Violation/);
    expect(await trySubscribe(a, "_INBOX.>")).toBe("refused");
    expect(await trySubscribe(a, `_INBOX.${s.identities.get("agent-hostB")!.publicKey}.>`)).toBe("refused");
    expect(await outcome(new Kvm(js).open("gw-state").then((kv) => kv.get("config.scan")))).toMatch(/Permissions Violation/);
    expect(await outcome(jsm.streams.delete("GANGWAY"))).toMatch(/Permissions Violation/);

    // And its own are allowed.
    expect(await trySubscribe(a, "gwsvc.agent.hostA.console")).toBe("allowed");
    expect(violations(s.server).length).toBeGreaterThanOrEqual(15);
    expect(violations(s.server).every((l) => l.includes(s.identities.get("agent-hostA")!.publicKey))).toBe(true);
  }, 60_000);

  it("the operator commands and reads, but cannot pose as a host or a function", async () => {
    await using s = await startSecureNats();
    const op = await s.connectAs("operator");
    const js = jetstream(op);
    expect(await outcome(js.publish("gw.host.hostA.inventory", "{}"))).toMatch(/Permissions Violation/);
    expect(await outcome(js.publish("gw.commit.m1.ready", "{}"))).toMatch(/Permissions Violation/);
    expect(await outcome(js.publish("gw.hash.m1.lookup.0", "{}"))).toMatch(/Permissions Violation/);
    expect(await outcome(op.request("$JS.API.CONSUMER.MSG.NEXT.GANGWAY.fn-plan", JSON.stringify({ batch: 1 }), { timeout: 2000 }))).toMatch(/Permissions Violation/);
    expect(await trySubscribe(op, "gw.cmd.>")).toBe("refused");
    // Reading the stream (watch, audit, vm list) is what it is for.
    expect(await latestInventories(op)).toBeInstanceOf(Map);
  }, 30_000);
});

describe("TLS (throwaway CA made with openssl)", () => {
  it("connects with the CA; plaintext and an unknown CA are refused; the CLI takes --tls-ca and --nkey", async () => {
    await using s = await startSecureNats({ tls: true });
    const op = await s.connectAs("operator");
    expect(op.info?.tls_required).toBe(true);
    const plain = { ...s.options("operator") };
    delete plain.tlsCaFile;
    expect(await outcome(connectNats(plain))).not.toBe("ok");
    // A CA the server's certificate does not chain to.
    const other = join(s.dir, "other");
    execFileSync("mkdir", ["-p", other]);
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(other, "ca.key"), "-out", join(other, "ca.pem"), "-days", "1", "-subj", "/CN=other CA"], { stdio: "ignore" });
    expect(await outcome(connectNats({ ...plain, tlsCaFile: join(other, "ca.pem") }))).not.toBe("ok");

    const cli = (extra: string[]) => spawnSync(process.execPath, ["bin/gangway.mjs", "vm", "list", "--json", "--nats", s.url, "--nkey", s.identities.get("operator")!.seedFile, ...extra], { encoding: "utf8" });
    const ok = cli(["--tls-ca", s.certs!.caFile]);
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toHaveProperty("vms");
    expect(cli([]).status).not.toBe(0);
  }, 60_000);
});
