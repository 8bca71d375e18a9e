/**
 * The destination side of a pipeline-benchmark run, wired as the host agent wires a
 * destination (adapters/host/actions/prepareTarget.ts): one page source for the host,
 * prefetching each VM's preparation packs and the migration's as they are announced, and per VM
 * the manifest rebuilt into stream records (targetRecords) and written by the destination
 * proxy into the (synthetic) destination QEMU's socket. It answers the source's "how far did
 * you get" as the agent's manifest service does, so the source's pacing is the real one.
 *
 * Not here (no QEMU): QMP, the RAM proof after the load, the commit. Keep it wired as the
 * agent is: it is the agent's data path that this measures.
 * Run: node --import tsx bench/pipelineDestination.ts '<DestinationConfig JSON>' (forked by bench/pipeline.ts).
 */
import { createPageKeyer, PAGE_SIZE } from "../adapters/dataplane/contentKey.ts";
import { openPackStore } from "../adapters/dataplane/packStore.ts";
import { openPageSource } from "../adapters/host/packLocator.ts";
import { targetRecords, type TargetState } from "../adapters/host/targetMigration.ts";
import { writeToDestination } from "../adapters/qemu/destinationProxy.ts";
import type { StreamRecord } from "../adapters/qemu/stream/records.ts";
import { createLogger } from "../infra/log.ts";
import { connectNats } from "../infra/nats/connect.ts";
import { answer } from "../infra/nats/service.ts";
import { agentManifest } from "../schemas/index.ts";
import { startTelemetry } from "../infra/telemetry.ts";
import { runChild } from "./pipelineChild.ts";
import { testFault } from "../adapters/host/testFaults.ts";
import { destinationConfig, type DestinationDone } from "./pipelineProtocol.ts";

/**
 * Faults a test injects (GANGWAY_TEST_FAULTS, as for the agent; never set otherwise), to show
 * that the sink catches them: pipeline-alter-page:VM flips a byte of the first content page
 * handed to VM's QEMU, pipeline-drop-page:VM leaves out the last page of that batch.
 */
type Fault = "alter-page" | "drop-page";
function faultFor(vm: string): Fault | undefined {
  if (testFault("pipeline-alter-page", vm)) return "alter-page";
  if (testFault("pipeline-drop-page", vm)) return "drop-page";
  return undefined;
}

/** The records with the fault applied once: a byte of the first content page flipped, or the last page of a batch dropped. */
async function* withFault(records: AsyncIterable<StreamRecord>, fault: Fault): AsyncGenerator<StreamRecord> {
  let pending = true;
  for await (const r of records) {
    if (pending && r.type === "pages" && r.kinds.includes(1)) {
      pending = false;
      // The destination hands its encoder either the pages themselves or views of them in their packs.
      if (fault === "alter-page") {
        const first = Buffer.from(r.views ? r.views[0]! : r.data.subarray(0, PAGE_SIZE)); // a copy: the page may be a cached pack's
        first[17]! ^= 0x5a;
        if (r.views) yield { ...r, views: [first, ...r.views.slice(1)] };
        else yield { ...r, data: Buffer.concat([first, r.data.subarray(PAGE_SIZE)]) };
      } else {
        const last = r.count - 1;
        const normals = r.kinds.subarray(0, r.count).reduce((n, k) => n + (k === 1 ? 1 : 0), 0);
        const dropsPage = r.kinds[last] === 1;
        if (r.views) yield { ...r, count: last, views: dropsPage ? r.views.slice(0, normals - 1) : r.views };
        else yield { ...r, count: last, data: dropsPage ? r.data.subarray(0, (normals - 1) * PAGE_SIZE) : r.data };
      }
      continue;
    }
    yield r;
  }
}

await runChild(destinationConfig, async (c, ctx) => {
  const telemetry = startTelemetry({ serviceName: "gangway-agent" });
  const log = createLogger({ component: "bench-destination", host: c.host });
  const nc = await connectNats({ servers: c.natsUrl, name: `gangway-agent-${c.host}`, reconnect: false });
  const packs = await openPackStore(nc);
  const keyer = createPageKeyer(c.tenant);
  const source = await openPageSource(nc, packs, { host: c.host, onCorrupt: (p) => log.error("page pack damaged", { pack: p.pack, reason: p.reason }) });
  const states = new Map<string, TargetState>(c.vms.map((v) => [v.vm, { pagesWritten: 0 }]));
  // The agent's manifest service, as the agent answers it: the source paces itself by it.
  const service = answer(nc, agentManifest, { host: c.host }, {
    handle: (req) => {
      const t = req.migrationId === c.migrationId ? states.get(req.vm) : undefined;
      return t ? { seqWritten: t.seqWritten ?? -1, seqRead: t.seqRead ?? -1, waitingFor: t.waitingFor ?? "nothing" } : { error: `no destination of ${req.vm} in ${req.migrationId} on ${c.host}` };
    },
    failed: (error) => ({ error }),
  });
  ctx.ready();
  await ctx.go;

  // As the agent: of the source host's preparation packs, each VM's own; then what the migration stores.
  for (const v of c.vms) source.prefetch(`prep-${c.sourceHost}`, c.tenant, keyer, v.vm);
  source.prefetch(c.migrationId, c.tenant, keyer);
  const vms = await Promise.all(c.vms.map(async (v) => {
    const state = states.get(v.vm)!;
    const rebuilt = targetRecords({ nc, migrationId: c.migrationId, vm: v.vm, tenant: c.tenant, sourceHost: c.sourceHost, host: c.host, keyer, pages: source, packs, progressTimeoutMs: c.progressTimeoutMs }, state);
    const fault = faultFor(v.vm);
    const records = fault ? withFault(rebuilt, fault) : rebuilt;
    const written = await writeToDestination(records, { socketPath: v.sinkSocket, logger: log });
    return { vm: v.vm, bytesWritten: written.bytes, pagesWritten: state.pagesWritten };
  }));
  source.stopPrefetch(c.migrationId);
  source.stopPrefetch(`prep-${c.sourceHost}`);
  const result: DestinationDone = { vms, ...source.stats };
  return {
    result,
    cleanup: async () => {
      service.unsubscribe();
      await source.close();
      await nc.drain().catch(() => nc.close());
      await telemetry.shutdown();
    },
  };
});
