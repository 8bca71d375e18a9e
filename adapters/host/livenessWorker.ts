/**
 * The liveness worker: a thread with its own NATS connection that answers this agent's
 * status pings and watches the peers of its migrations, so that a main thread busy with
 * pages (or a GC) never makes this host look dead, nor a peer look dead to it. The main
 * thread posts its status every 250 ms; the answer says how long ago it last did.
 */
import { parentPort, workerData } from "node:worker_threads";
import { connectNats, type ConnectOptions } from "../../infra/nats/connect.ts";
import { answerStatus, watchAgent, type AgentStatus, type LivenessThresholds } from "./liveness.ts";

export type ToWorker =
  | { type: "status"; status: AgentStatus }
  | { type: "watch"; id: number; peer: string }
  | { type: "unwatch"; id: number }
  | { type: "close" };

export type FromWorker =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | { type: "verdict"; id: number; state: "suspect" | "dead" | "alive"; reason: string }
  | { type: "closed" };

const port = parentPort!;
const { host, connect, thresholds } = workerData as { host: string; connect: ConnectOptions; thresholds: LivenessThresholds };
const post = (m: FromWorker) => port.postMessage(m);

try {
  const nc = await connectNats({ ...connect, name: `${connect.name ?? "gangway"}-liveness`, reconnect: true });
  let status: AgentStatus = { host, uptimeSec: 0, vms: 0, migrations: 0 };
  let lastSign = Date.now();
  const sub = answerStatus(nc, host, () => ({ ...status, mainLoopLagMs: Date.now() - lastSign }));
  const watches = new Map<number, { stop(): void }>();
  port.on("message", (m: ToWorker) => {
    if (m.type === "status") {
      status = m.status;
      lastSign = Date.now();
    } else if (m.type === "watch") {
      watches.set(m.id, watchAgent(nc, m.peer, thresholds, (v) => post({ type: "verdict", id: m.id, ...v })));
    } else if (m.type === "unwatch") {
      watches.get(m.id)?.stop();
      watches.delete(m.id);
    } else if (m.type === "close") {
      for (const w of watches.values()) w.stop();
      sub.unsubscribe();
      void nc.close().finally(() => {
        post({ type: "closed" });
        port.close();
      });
    }
  });
  await nc.flush();
  post({ type: "ready" });
} catch (err) {
  post({ type: "failed", message: (err as Error).message });
  port.close();
}
