/**
 * The host agent: owns this host's VMs, publishes its inventory, answers liveness pings
 * and its services, and acts on the commands addressed to it (gw.cmd.agent.<host>.>), one
 * action each (actions/): start and stop VMs, play source or destination of a migration,
 * resume, quit or roll back, scan. It decides nothing about a migration's outcome: it
 * reports facts, and the functions decide. This module only wires: it opens the resources,
 * builds the host's state, takes back what an earlier agent left, serves, dispatches each
 * command to its action, and closes.
 */
import { availableParallelism } from "node:os";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { SpanKind, context, trace } from "@opentelemetry/api";
import { commitAbort, packCorrupt } from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import { createPublisher, type EventPublisher } from "../../infra/events/publisher.ts";
import { createLogger, type Logger } from "../../infra/log.ts";
import type { ConnectOptions } from "../../infra/nats/connect.ts";
import { EVENTS_STREAM } from "../../infra/nats/resources.ts";
import { extractTraceContext, tracer } from "../../infra/telemetry.ts";
import { openPackStore, type PackStore } from "../dataplane/packStore.ts";
import { hostActions } from "./actions/index.ts";
import { settleAdopted, settleGone, takeBack } from "./adoption.ts";
import type { AnyHostAction } from "./hostAction.ts";
import { publishInventory, syncRecords } from "./hostFacts.ts";
import { answerHostServices } from "./hostServices.ts";
import { startHostLiveness, type HostLiveness } from "./hostLiveness.ts";
import { createHostState, emptySessions } from "./hostState.ts";
import { DEFAULT_LIVENESS, type LivenessThresholds } from "./liveness.ts";
import { openPageSource, type CorruptPack } from "./packLocator.ts";
import { followScanContent } from "./scanContent.ts";
import { forgetStoredKeysOnDamage } from "./storedKeys.ts";
import type { AdoptedVm, GoneVm, QemuDriver } from "./qemuDriver.ts";

export interface AgentOptions {
  host: string;
  nc: NatsConnection;
  driver: QemuDriver;
  log?: Logger;
  /** Seconds between inventory reports. @default 10 */
  inventoryIntervalSec?: number;
  /**
   * Liveness of the peer host during a migration (see liveness.ts): thresholds, and how a
   * worker thread connects to answer and watch beside the data path (without: on `nc`).
   */
  liveness?: LivenessThresholds & { connect?: ConnectOptions };
  /**
   * Worker threads for the proofs' RAM reads (the guest is stopped while they run); 0 reads
   * on the main thread. @default GANGWAY_PROOF_THREADS, else min(4, the host's cores)
   */
  proofThreads?: number;
}

function defaultProofThreads(): number {
  const env = Number(process.env.GANGWAY_PROOF_THREADS);
  return Number.isInteger(env) && env >= 0 ? env : Math.min(4, availableParallelism());
}

export interface Agent {
  readonly host: string;
  /**
   * Stops serving. Its VMs are quit, unless `keepVms`: then they keep running (outgoing
   * migrations are cancelled and aborted; incoming destinations are quit) and the next
   * agent of this host adopts them (needs a driver whose VMs outlive the agent).
   */
  stop(opts?: { keepVms?: boolean }): Promise<void>;
}

const actionsByType: ReadonlyMap<string, AnyHostAction> = new Map(hostActions.map((a) => [a.trigger.type, a]));
/** Command ids remembered against redelivery (each one acts once). */
const SEEN_COMMANDS = 10_000;

export async function startAgent(o: AgentOptions): Promise<Agent> {
  const log = (o.log ?? createLogger()).child({ component: "agent", host: o.host });
  const js = jetstream(o.nc);
  const jsm = await jetstreamManager(o.nc);
  const pub: EventPublisher = createPublisher(js, `gangway/host/${o.host}`);
  const packs: PackStore = await openPackStore(o.nc);
  /**
   * A damaged pack is removed from the store and announced: the dedup index forgets its keys,
   * so the next migration needing those pages sends them again (before, every later
   * migration of them failed on the same pack). This migration fails on it regardless.
   */
  const onCorrupt = (c: CorruptPack): Promise<void> => {
    log.warn("page pack damaged; removing it", { pack: c.pack, storedBy: c.migrationId, reason: c.reason });
    return (async () => {
      await packs.remove(c.pack);
      await pub.publish(packCorrupt, { migrationId: c.migrationId }, { migrationId: c.migrationId, tenant: c.tenant, pack: c.pack, reportedBy: o.host, reason: c.reason.slice(0, 2000) }, { id: `corrupt-${c.pack}-${o.host}` });
    })().catch((e: Error) => log.error("damaged pack not removed or not announced", { pack: c.pack, error: e }));
  };
  const sessions = emptySessions();
  const started = Date.now();
  // VMs an earlier agent of this host left running are taken back first; reclaim then
  // removes only what no live QEMU uses.
  const found: { adopted: AdoptedVm[]; gone: GoneVm[] } = o.driver.adopt ? await o.driver.adopt() : { adopted: [], gone: [] };
  const reclaimed = await o.driver.reclaim();
  if (reclaimed.length) log.warn("removed what an earlier agent of this host left behind", { files: reclaimed });
  const leftOver = takeBack(sessions, found, log);

  // Liveness: request-reply outside the retained stream (pings are not facts).
  const { connect: livenessConnect, ...thresholds } = o.liveness ?? {};
  const liveness: HostLiveness = await startHostLiveness({
    host: o.host, nc: o.nc, thresholds, log, ...(livenessConnect ? { connect: livenessConnect } : {}),
    status: () => ({ uptimeSec: (Date.now() - started) / 1000, vms: sessions.owned.size, migrations: sessions.sources.size + sessions.targets.size }),
  });
  const state = createHostState({
    sessions, host: o.host, nc: o.nc, driver: o.driver, log, publisher: pub, packs, liveness,
    pingTimeoutMs: thresholds.pingTimeoutMs ?? DEFAULT_LIVENESS.pingTimeoutMs,
    openPages: () => openPageSource(o.nc, packs, { onCorrupt, host: o.host }),
    openScanContent: () => followScanContent(o.nc, { host: o.host }),
    proofThreads: o.proofThreads ?? defaultProofThreads(),
  });
  // Followed from the start, so that a first migration here finds the VMs' content read.
  void state.scanContent().catch((e: Error) => log.warn("scan content not followed (destinations prefetch by pass instead)", { error: e }));
  const inventoryTimer = setInterval(() => void publishInventory(state).catch((e: Error) => log.warn("inventory not published", { error: e })), (o.inventoryIntervalSec ?? 10) * 1000);
  const services = [...answerHostServices(state), forgetStoredKeysOnDamage(o.nc, state.preparation.knownByTenant, log)];

  const durable = `agent-${o.host}`;
  try {
    await jsm.consumers.info(EVENTS_STREAM, durable);
  } catch {
    await jsm.consumers.add(EVENTS_STREAM, { durable_name: durable, filter_subject: `gw.cmd.agent.${o.host}.>`, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New, ack_wait: 30_000_000_000 });
  }
  const consumer = await js.consumers.get(EVENTS_STREAM, durable);
  // Heartbeats every second: a pull left with a consumer leader that died (a cluster node)
  // is noticed after 2 s, not after two missed 15 s heartbeats (a rollback waited 30 s).
  const messages: ConsumerMessages = await consumer.consume({ max_messages: 64, idle_heartbeat: 1000 });
  const inFlight = new Set<Promise<void>>();
  const seen = new Set<string>(); // insertion-ordered: the oldest id goes first
  const loop = (async () => {
    for await (const m of messages) {
      const d = decodeMessage(m.subject, m.data, m.headers);
      // Commands start long work (a migration) whose failure is reported as an event, not
      // retried: accept each once, ack at once.
      m.ack();
      if (!d.ok) {
        log.warn("bad command", { subject: m.subject, reason: d.reason });
        continue;
      }
      if (seen.has(d.event.id)) continue;
      seen.add(d.event.id);
      // A redelivery comes soon after its first delivery: the newest ids are enough, and a
      // long-lived agent does not keep every command it ever obeyed.
      if (seen.size > SEEN_COMMANDS) seen.delete(seen.values().next().value!);
      const action = actionsByType.get(d.event.type);
      if (!action || d.event.mode !== "structured") continue;
      const span = tracer().startSpan(`process ${m.subject}`, { kind: SpanKind.CONSUMER, attributes: { "messaging.system": "nats", "messaging.operation.type": "process", "messaging.destination.name": m.subject, "messaging.message.id": d.event.id, "gangway.host": o.host } }, extractTraceContext(m.headers));
      // The data was checked against this type's schema when it was decoded.
      const p = context.with(trace.setSpan(extractTraceContext(m.headers), span), () => action.handle(state, d.event.data as never, { streamSeq: m.seq }))
        .catch((err: Error) => {
          span.recordException(err);
          log.error("command failed", { type: d.event.type, error: err });
        })
        .finally(() => span.end());
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
    }
  })();

  await publishInventory(state);
  log.info("agent up", { durable, adopted: found.adopted.length });
  for (const a of leftOver) void settleAdopted(state, a).catch((e: Error) => log.error("an adopted VM was not settled", { vm: a.vm.name, error: e }));
  for (const g of found.gone) void settleGone(state, g);

  return {
    host: o.host,
    async stop(opts: { keepVms?: boolean } = {}) {
      clearInterval(inventoryTimer);
      const { sources, targets, owned } = state;
      if (opts.keepVms) {
        // The VMs stay; their outgoing migrations cannot go on without this agent.
        await Promise.allSettled([...sources.values()].map(async (s) => {
          await s.cancel();
          await Promise.race([
            pub.publish(commitAbort, { migrationId: s.migrationId }, { migrationId: s.migrationId, vm: s.vm, reason: `the agent of ${o.host} stopped; the VM stays here`, reportedBy: `host ${o.host}`, destinationStopped: false }, { id: `abort-${s.migrationId}-${s.vm}-${o.host}` }),
            new Promise((r) => setTimeout(r, 3000)),
          ]);
        }));
        await syncRecords(state).catch(() => undefined);
      }
      for (const x of [...sources.values(), ...targets.values()]) x.end();
      messages.stop();
      await loop.catch(() => undefined);
      await Promise.allSettled([...inFlight]);
      await liveness.close();
      for (const s of services) s.unsubscribe();
      for (const g of state.gangs.values()) g.resolver.close();
      state.preparation.resolver?.close();
      await state.openedPages()?.close();
      await state.openedScanContent()?.close();
      await state.closeRamChecker();
      await Promise.allSettled([...targets.values()].map((t) => t.vm.quit()));
      await Promise.allSettled([...owned.values()].filter((v) => ![...targets.values()].some((t) => t.vm === v.vm)).map((v) => (opts.keepVms && v.vm.detach ? v.vm.detach() : v.vm.quit())));
    },
  };
}
