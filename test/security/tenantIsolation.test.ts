/**
 * Per-tenant key isolation, probed through the real path: tenant A's page is claimed
 * through the hash function (the dedup index), stored in a real page pack and announced;
 * then tenant B, computing keys for the same bytes, asks. B must get exactly the answer it
 * would get for a page nobody holds ("claimed": send it yourself), never "present" or "in
 * flight", and must not be able to compute A's keys without the cluster secret.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPageKeyer, keyHex, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { openPackStore } from "../../adapters/dataplane/packStore.ts";
import { createKeyResolver, type KeyResolver } from "../../adapters/host/keyResolver.ts";
import { PackWriter } from "../../adapters/host/packWriter.ts";
import { createHashFunctions } from "../../functions/hash/index.ts";
import { createDedupIndex, type DedupIndex } from "../../infra/dedupIndex.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { createLogger } from "../../infra/log.ts";
import { serveFunctions } from "../../infra/runtime/functionHost.ts";
import { KeyStatus } from "../../schemas/index.ts";
import { eventually } from "../helpers/nats.ts";
import { startSecureNats, violations, type SecureNats } from "./helpers.ts";

let s: SecureNats;
let index: DedupIndex;
let served: { stop(): Promise<void> };
let agentA: NatsConnection;
let agentB: NatsConnection;
const resolvers: KeyResolver[] = [];

beforeAll(async () => {
  s = await startSecureNats();
  const fn = await s.connectAs("functions");
  index = createDedupIndex(fn);
  served = await serveFunctions(createHashFunctions(index), fn, { log: createLogger({}, () => undefined) });
  // Tenant A's VMs live on hostA, tenant B's on hostB: each host on its own identity.
  agentA = await s.connectAs("agent-hostA");
  agentB = await s.connectAs("agent-hostB");
}, 30_000);

afterAll(async () => {
  for (const r of resolvers) r.close();
  await served.stop();
  await index.close();
  await s[Symbol.asyncDispose]();
});

const resolverOn = (nc: NatsConnection, host: string, migrationId: string) => {
  const r = createKeyResolver(nc, createPublisher(jetstream(nc), `gangway/host/${host}`), { migrationId, targetHost: "hostC", timeoutMs: 20_000 });
  resolvers.push(r);
  return r;
};

/** A page whose key falls in shard 0 for both tenants (a look-up carries one shard's keys). */
function pageInShardZero(): Uint8Array {
  for (;;) {
    const p = new Uint8Array(randomBytes(PAGE_SIZE));
    if (createPageKeyer("alpha").key(p)[0]! < 64 && createPageKeyer("beta").key(p)[0]! < 64) return p;
  }
}

describe("per-tenant key isolation (real hash function, real dedup index, real page packs)", () => {
  it("a tenant cannot learn whether another tenant holds a page", async () => {
    const alpha = createPageKeyer("alpha");
    const beta = createPageKeyer("beta");
    const held = pageInShardZero(); // A will hold this one
    const nobodys = pageInShardZero(); // nobody holds this one

    // Same bytes, different tenants: unrelated keys.
    expect(keyHex(alpha.key(held))).not.toBe(keyHex(beta.key(held)));
    // Knowing A's tenant name is not enough to compute A's keys: it takes the cluster secret.
    expect(keyHex(createPageKeyer("alpha", "a guessed secret").key(held))).not.toBe(keyHex(alpha.key(held)));
    expect(keyHex(createPageKeyer("alpha", "").key(held))).not.toBe(keyHex(alpha.key(held)));

    // 1. Tenant A's VM asks for its page: nobody had it, A claims it, stores it in a pack.
    const a1 = resolverOn(agentA, "hostA", "mig-alpha-1");
    expect(Array.from(await a1.resolve("vmA", "alpha", alpha.key(held)))).toEqual([KeyStatus.claimed]);
    const writer = new PackWriter({ migrationId: "mig-alpha-1", sourceHost: "hostA", vm: "vmA", tenant: "alpha", publisher: createPublisher(jetstream(agentA), "gangway/host/hostA"), packs: await openPackStore(agentA) });
    writer.add(alpha.key(held), 0, held);
    writer.flush();
    await writer.drain();
    // The index learns of the pack: a later look-up of A's finds the page present.
    await eventually(async () => {
      const r = resolverOn(agentA, "hostA", `mig-alpha-${randomBytes(4).toString("hex")}`);
      return (await r.resolve("vmA", "alpha", alpha.key(held)))[0] === KeyStatus.present || undefined;
    }, 20_000, "tenant A's page present in the index");

    // 2. Tenant B asks about the same bytes (its own key), a page nobody holds, and even A's
    // exact key bytes (as if leaked): in a migration of its own, and inside A's migration.
    const probe = new Uint8Array([...beta.key(held), ...beta.key(nobodys), ...alpha.key(held)]);
    for (const migrationId of ["mig-beta-1", "mig-alpha-1"]) {
      const answer = Array.from(await resolverOn(agentB, "hostB", migrationId).resolve("vmB", "beta", probe));
      // Every key: "claimed", the very answer for a page nobody holds. Never present/in flight.
      expect(answer).toEqual([KeyStatus.claimed, KeyStatus.claimed, KeyStatus.claimed]);
    }
    // Asked again in a new migration, B's answers still do not depend on what A holds.
    const again = Array.from(await resolverOn(agentB, "hostB", "mig-beta-2").resolve("vmB", "beta", probe));
    expect(new Set(again).size).toBe(1);

    // Meanwhile A still finds its page present: isolation did not cost A its dedup.
    expect(Array.from(await resolverOn(agentA, "hostA", "mig-alpha-3").resolve("vmA", "alpha", alpha.key(held)))).toEqual([KeyStatus.present]);
    expect(violations(s.server)).toEqual([]);
  }, 60_000);
});
