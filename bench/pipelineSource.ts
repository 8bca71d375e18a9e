/**
 * The source side of a pipeline-benchmark run, wired as the host agent wires a source
 * (adapters/host/actions/startSource.ts): per VM a source proxy socket the (synthetic) QEMU
 * migrates into, its records paced to the destination, through runSourceMigration, with one
 * key resolver and one gang key table shared by the gang's VMs, and the keys the host's scans
 * stored referenced without a look-up. Before "ready" it runs the preparation phase where
 * the mix has one, as actions/scan.ts does: the real memory scan of each VM's RAM file
 * (preseeding what the destination side lacks), not measured.
 *
 * Not here (no QEMU): QMP, progress and dirty-round events, the source's RAM proof.
 * Keep it wired as the agent is: it is the agent's data path that this measures.
 * Run: node --import tsx bench/pipelineSource.ts '<SourceConfig JSON>' (forked by bench/pipeline.ts).
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPageKeyer, KEY_BYTES } from "../adapters/dataplane/contentKey.ts";
import { openPackStore } from "../adapters/dataplane/packStore.ts";
import { paceToDestination } from "../adapters/host/destinationPace.ts";
import { createKeyResolver } from "../adapters/host/keyResolver.ts";
import { scanMemory } from "../adapters/host/memoryScanner.ts";
import { runSourceMigration } from "../adapters/host/sourceMigration.ts";
import { createSourceProxy } from "../adapters/qemu/sourceProxy.ts";
import { createPublisher, type EventPublisher } from "../infra/events/publisher.ts";
import { ask } from "../infra/nats/service.ts";
import { KeyTable } from "../kit/keyTable.ts";
import { agentManifest, HASH_SHARDS, KeyStatus } from "../schemas/index.ts";
import { EVENTS_STREAM } from "../infra/nats/resources.ts";
import { durableName } from "../infra/runtime/functionHost.ts";
import { createLogger } from "../infra/log.ts";
import { connectNats } from "../infra/nats/connect.ts";
import { startTelemetry } from "../infra/telemetry.ts";
import { runChild } from "./pipelineChild.ts";
import { sourceConfig, type SourceDone } from "./pipelineProtocol.ts";

/** As agent.ts: manifest messages a source may run ahead of its destination, and the longest hold. */
const PACE_WINDOW = 2;
const PACE_MAX_WAIT_MS = 10_000;

/**
 * Waits for the hash function's consumers: this side starts beside the functions process,
 * and a look-up published before they exist would never be delivered (they take new events only).
 */
async function untilHashServed(nc: NatsConnection): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const until = Date.now() + 60_000;
  for (let shard = 0; shard < HASH_SHARDS; shard++) {
    for (;;) {
      try {
        await jsm.consumers.info(EVENTS_STREAM, durableName(`hash-${shard}`));
        break;
      } catch (err) {
        if (Date.now() > until) throw new Error("the hash function did not come up within 60 s", { cause: err });
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

/** A scan table's entry: marker (0: keyed) and the key (memoryScanner.ts). */
const ENTRY = 1 + KEY_BYTES;

/**
 * Waits until the dedup index answers "present" for the last keyed pages each scan stored:
 * it learns that from the pack announcements, which it reads apart from the look-ups, so
 * the migration could otherwise meet the last packs' keys unknown and send them again.
 * Asking by a probe migration claims nothing that matters (a stored key stays present).
 */
async function untilPresent(nc: NatsConnection, pub: EventPublisher, host: string, tenant: string, tables: Uint8Array[]): Promise<void> {
  const probe = createKeyResolver(nc, pub, { migrationId: `probe-${host}-${Date.now()}`, targetHost: host });
  try {
    const keys: Uint8Array[] = [];
    for (const t of tables) {
      let taken = 0;
      for (let at = t.byteLength - ENTRY; at >= 0 && taken < 256; at -= ENTRY) {
        if (t[at] !== 0) continue;
        keys.push(t.subarray(at + 1, at + ENTRY));
        taken++;
      }
    }
    if (keys.length === 0) return;
    const all = new Uint8Array(keys.length * KEY_BYTES);
    keys.forEach((k, i) => all.set(k, i * KEY_BYTES));
    const until = Date.now() + 30_000;
    for (;;) {
      const statuses = await probe.resolve("probe", tenant, all);
      if (statuses.every((s) => s === KeyStatus.present)) return;
      if (Date.now() > until) throw new Error("the dedup index did not count the preparation's packs as present within 30 s");
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    probe.close();
  }
}

await runChild(sourceConfig, async (c, ctx) => {
  const telemetry = startTelemetry({ serviceName: "gangway-agent" });
  const log = createLogger({ component: "bench-source", host: c.host });
  const nc = await connectNats({ servers: c.natsUrl, name: `gangway-agent-${c.host}`, reconnect: false });
  const pub = createPublisher(jetstream(nc), `gangway/host/${c.host}`);
  const packs = await openPackStore(nc);
  const keyer = createPageKeyer(c.tenant);

  let prep: SourceDone["prep"];
  const scanned = c.vms.filter((v) => v.scanPath);
  /** The keys this host's scans stored (the agent's per-tenant known keys): sources reference them without asking. */
  let storedKeys: KeyTable | undefined;
  if (scanned.length) {
    await untilHashServed(nc);
    // As the agent's scan command: one resolver for the host's preparation, one known-key set per tenant.
    const t0 = Date.now();
    const resolver = createKeyResolver(nc, pub, { migrationId: `prep-${c.host}`, targetHost: c.host });
    const known = (storedKeys = new KeyTable(65536));
    const results = await Promise.all(scanned.map((v) => scanMemory({ host: c.host, vm: v.vm, tenant: c.tenant, ramPath: v.scanPath!, sizeBytes: v.ramBytes, keyer, resolver, publisher: pub, packs, pass: 0, known })));
    resolver.close();
    await untilPresent(nc, pub, c.host, c.tenant, results.map((r) => r.table));
    prep = { ms: Date.now() - t0, pagesPreseeded: results.reduce((n, r) => n + r.pagesPreseeded, 0) };
  }
  const proxies = await Promise.all(c.vms.map((v) => createSourceProxy({ socketPath: v.socketPath })));
  ctx.ready();
  await ctx.go;

  const resolver = createKeyResolver(nc, pub, { migrationId: c.migrationId, targetHost: c.targetHost });
  const gangKeys = new KeyTable(65536);
  /** How far the destination handed its QEMU this VM's manifest (the agent's manifest service), as the agent asks. */
  const destinationWritten = async (vm: string): Promise<number | undefined> => {
    try {
      const r = await ask(nc, agentManifest, { host: c.targetHost }, { migrationId: c.migrationId, vm }, { timeoutMs: 1000 });
      return "seqWritten" in r ? r.seqWritten : undefined;
    } catch {
      return undefined;
    }
  };
  const results = await Promise.all(c.vms.map(async (v, i) => {
    const proxy = proxies[i]!;
    let published = -1;
    const pacer = paceToDestination(proxy.records(), {
      published: () => published, destinationWritten: () => destinationWritten(v.vm), window: PACE_WINDOW, maxWaitMs: PACE_MAX_WAIT_MS, log, what: `${v.vm} of ${c.migrationId}`,
    });
    const r = await runSourceMigration({
      migrationId: c.migrationId, vm: v.vm, tenant: c.tenant, sourceHost: c.host, records: pacer.records, publisher: pub, packs, keyer, resolver, gangKeys, ...(storedKeys ? { storedKeys } : {}),
      nativeBytes: () => proxy.nativeBytes(), onPublished: (seq) => (published = seq), lowLatency: () => pacer.holding,
    });
    await proxy.close();
    const p = r.progress;
    return { vm: v.vm, pages: p.pages, memory_constant: p.memory_constant, pages_deduplicated: p.pages_deduplicated, pages_sent: p.pages_sent, native_bytes: p.native_bytes, bytes_on_link: p.bytes_on_link, packed_raw_bytes: p.packed_raw_bytes, packed_bytes: p.packed_bytes };
  }));
  const result: SourceDone = { vms: results, ...(prep ? { prep } : {}) };
  return {
    result,
    cleanup: async () => {
      resolver.close();
      await nc.drain().catch(() => nc.close());
      await telemetry.shutdown();
    },
  };
});
