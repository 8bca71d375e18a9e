/**
 * Liveness that tells busy from dead. A host agent answers status pings on
 * gwsvc.agent.<host>.status and pings the peer of each migration it is in. Two kinds of
 * silence mean different things:
 * - gone: NATS says nobody subscribes (no responders) — the agent's process or its link
 *   died and the server dropped its subscriptions. That is dead within seconds.
 * - silent: the ping timed out — the agent is there but slow (CPU starved, GC, a long
 *   synchronous step), or frozen. That is suspected first and reported; only a silence past
 *   `silentAfterMs` (KubeVirt's progressTimeout is 150 s) is taken for death.
 * The responder and the watcher run in a worker thread with a connection of their own where
 * the agent can give one (see livenessWorker.ts), so that neither waits behind a busy event
 * loop: the main thread's own lag is reported in the answer, and a main thread stuck past
 * the silence limit counts as silent.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { agentStatus } from "../../schemas/agentService.ts";
import type { ReplyOf } from "../../schemas/service.ts";

export interface LivenessThresholds {
  /** Between pings. @default 1000 */
  intervalMs?: number;
  /** One ping's time-out. @default 2000 */
  pingTimeoutMs?: number;
  /** A peer with no responder (its agent's connection gone) for this long is dead. @default 5000 */
  goneAfterMs?: number;
  /** A peer that does not answer (busy or frozen) for this long is dead; suspected before. @default 60000 */
  silentAfterMs?: number;
}

export const DEFAULT_LIVENESS: Required<LivenessThresholds> = { intervalMs: 1000, pingTimeoutMs: 2000, goneAfterMs: 5000, silentAfterMs: 60_000 };

/** What an agent's status answer says (its service, schemas/agentService.ts). */
export type AgentStatus = ReplyOf<typeof agentStatus>;

export type PingResult = { kind: "ok"; status?: AgentStatus } | { kind: "gone" } | { kind: "silent"; why: string };

/** One status ping of `peer`. */
export async function pingAgent(nc: NatsConnection, peer: string, timeoutMs: number): Promise<PingResult> {
  try {
    const reply = await nc.request(agentStatus.subject({ host: peer }), "", { timeout: timeoutMs });
    // An answer is the sign of life; what it says is only detail.
    try {
      const status = agentStatus.reply.safeParse(JSON.parse(new TextDecoder().decode(reply.data)));
      return status.success ? { kind: "ok", status: status.data } : { kind: "ok" };
    } catch {
      return { kind: "ok" };
    }
  } catch (err) {
    const e = err as Error & { isNoResponders?: () => boolean; cause?: unknown };
    if (e.isNoResponders?.() || (e.cause as Error | undefined)?.name === "NoResponders" || e.name === "NoResponders") return { kind: "gone" };
    return { kind: "silent", why: e.message || e.name };
  }
}

/** Answers status pings for `host` on `nc`. */
export function answerStatus(nc: NatsConnection, host: string, status: () => AgentStatus): Subscription {
  // Not through infra's `answer`: the answer goes out at once, whatever the request holds.
  return nc.subscribe(agentStatus.subject({ host }), {
    callback: (_err, msg) => void msg.respond(JSON.stringify({ ...status(), host } satisfies AgentStatus)),
  });
}

export type Verdict = { state: "suspect" | "dead" | "alive"; reason: string };

/**
 * Pings `peer` until stopped, saying each change of mind: suspect (slow to answer), alive
 * again, dead (then it stops).
 */
export function watchAgent(nc: NatsConnection, peer: string, t: LivenessThresholds, onVerdict: (v: Verdict) => void): { stop(): void } {
  const th = { ...DEFAULT_LIVENESS, ...t };
  let stopped = false;
  void (async () => {
    let goneSince: number | undefined;
    let silentSince: number | undefined;
    let suspected = false;
    while (!stopped) {
      await new Promise((r) => setTimeout(r, th.intervalMs));
      if (stopped) return;
      const sent = Date.now();
      const r = await pingAgent(nc, peer, th.pingTimeoutMs);
      if (stopped) return;
      const now = Date.now();
      // This thread itself was starved (the answer may have come and waited): no evidence either way.
      if (r.kind === "silent" && now - sent > th.pingTimeoutMs * 2 + 1000) continue;
      const lag = r.kind === "ok" ? (r.status?.mainLoopLagMs ?? 0) : 0;
      if (r.kind === "ok" && lag < th.silentAfterMs) {
        goneSince = silentSince = undefined;
        if (suspected) onVerdict({ state: "alive", reason: `host ${peer} answers again` });
        suspected = false;
        continue;
      }
      if (r.kind === "gone") {
        silentSince = undefined;
        goneSince ??= sent;
        if (now - goneSince >= th.goneAfterMs) {
          onVerdict({ state: "dead", reason: `host ${peer} stopped answering (no agent subscribed for ${Math.round((now - goneSince) / 1000)} s: its process or its link to NATS is gone)` });
          return;
        }
        continue;
      }
      goneSince = undefined;
      silentSince ??= sent;
      const why = r.kind === "ok" ? `its agent's main thread has not run for ${Math.round(lag / 1000)} s` : `no answer within ${th.pingTimeoutMs} ms: ${r.why}`;
      if (!suspected) {
        suspected = true;
        onVerdict({ state: "suspect", reason: `host ${peer} is slow to answer (${why}); suspected, given up after ${Math.round(th.silentAfterMs / 1000)} s of silence` });
      }
      if (now - silentSince >= th.silentAfterMs) {
        onVerdict({ state: "dead", reason: `host ${peer} stopped answering (silent for ${Math.round((now - silentSince) / 1000)} s; ${why})` });
        return;
      }
    }
  })();
  return { stop: () => void (stopped = true) };
}
