/**
 * Where an agent's liveness runs: in a worker thread with its own NATS connection when the
 * agent can say how to connect (the `gangway agent` process), else on the agent's own
 * connection and thread (agents embedded in tests). Either way the agent asks the same: watch
 * a peer until a promise settles, hearing when it is suspected and when it is given up.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { Worker } from "node:worker_threads";
import type { ConnectOptions } from "../../infra/nats/connect.ts";
import type { Logger } from "../../infra/log.ts";
import { answerStatus, watchAgent, type AgentStatus, type LivenessThresholds, type Verdict } from "./liveness.ts";
import type { FromWorker, ToWorker } from "./livenessWorker.ts";

export interface HostLiveness {
  /**
   * Watches `peer` until `until` settles. Resolves with the reason it was given up, or
   * undefined once `until` settled first. `onSuspect` hears a peer slow to answer (and back).
   */
  watch(peer: string, until: Promise<unknown>, onChange?: (v: Verdict) => void): Promise<string | undefined>;
  close(): Promise<void>;
  /** "worker" or "main thread". */
  readonly where: string;
}

export interface HostLivenessOptions {
  host: string;
  nc: NatsConnection;
  /** How the worker connects (the agent's own options); without it liveness runs on `nc`. */
  connect?: ConnectOptions;
  thresholds?: LivenessThresholds;
  status: () => Omit<AgentStatus, "host">;
  log: Logger;
}

export async function startHostLiveness(o: HostLivenessOptions): Promise<HostLiveness> {
  if (o.connect) {
    try {
      return await inWorker(o, o.connect);
    } catch (err) {
      o.log.warn("liveness worker did not start; answering pings on the main thread", { error: err as Error });
    }
  }
  return onMainThread(o);
}

function onMainThread(o: HostLivenessOptions): HostLiveness {
  const sub: Subscription = answerStatus(o.nc, o.host, () => ({ ...o.status(), host: o.host }));
  return {
    where: "main thread",
    watch: (peer, until, onChange) =>
      new Promise((resolve) => {
        const w = watchAgent(o.nc, peer, o.thresholds ?? {}, (v) => {
          onChange?.(v);
          if (v.state === "dead") resolve(v.reason);
        });
        void until.finally(() => {
          w.stop();
          resolve(undefined);
        });
      }),
    close: async () => sub.unsubscribe(),
  };
}

async function inWorker(o: HostLivenessOptions, connect: ConnectOptions): Promise<HostLiveness> {
  const worker = new Worker(new URL("./livenessWorker.mjs", import.meta.url), { workerData: { host: o.host, connect, thresholds: o.thresholds ?? {} } });
  const send = (m: ToWorker) => worker.postMessage(m);
  const listeners = new Map<number, (v: Verdict) => void>();
  let nextId = 0;
  await new Promise<void>((resolve, reject) => {
    const first = (m: FromWorker) => {
      worker.off("message", first);
      if (m.type === "ready") resolve();
      else reject(new Error(m.type === "failed" ? m.message : `liveness worker said ${m.type}`));
    };
    worker.on("message", first);
    worker.once("error", reject);
  });
  worker.on("message", (m: FromWorker) => {
    if (m.type === "verdict") listeners.get(m.id)?.({ state: m.state, reason: m.reason });
  });
  worker.on("error", (err) => o.log.error("liveness worker failed", { error: err }));
  // The main thread shows it runs: a lag in these is what a busy agent looks like to its peers.
  const tick = setInterval(() => send({ type: "status", status: { ...o.status(), host: o.host } }), 250);
  send({ type: "status", status: { ...o.status(), host: o.host } });
  return {
    where: "worker",
    watch: (peer, until, onChange) =>
      new Promise((resolve) => {
        const id = nextId++;
        listeners.set(id, (v) => {
          onChange?.(v);
          if (v.state === "dead") {
            listeners.delete(id);
            resolve(v.reason);
          }
        });
        send({ type: "watch", id, peer });
        void until.finally(() => {
          listeners.delete(id);
          send({ type: "unwatch", id });
          resolve(undefined);
        });
      }),
    close: async () => {
      clearInterval(tick);
      const closed = new Promise<void>((r) => worker.on("message", (m: FromWorker) => m.type === "closed" && r()));
      send({ type: "close" });
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
      await worker.terminate();
    },
  };
}
