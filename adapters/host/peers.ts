/**
 * The peer host of a migration, as this host sees it: is it alive (liveness, see
 * liveness.ts), and how far did its rebuild get (its manifest service).
 */
import { agentManifest, MigrationMode, MigrationPhase, migrationProgress } from "../../schemas/index.ts";
import { ask } from "../../infra/nats/service.ts";
import type { HostState } from "./hostState.ts";
import { pingAgent } from "./liveness.ts";

/** Does `peer` answer a status ping now? */
export const peerAlive = async (state: HostState, peer: string) => (await pingAgent(state.nc, peer, state.pingTimeoutMs)).kind === "ok";

/**
 * Resolves with a reason when the peer is given up (gone, or silent for long). A peer slow
 * to answer is reported first (progress with `peer`), and never acted on until then.
 */
export const watchPeer = (state: HostState, peer: string, until: Promise<unknown>, migrationId: string, vm: string) =>
  state.liveness.watch(peer, until, (v) => {
    if (v.state === "dead") return;
    (v.state === "suspect" ? state.log.warn : state.log.info)(v.state === "suspect" ? "peer suspected" : "peer answers again", { migrationId, vm, peer, reason: v.reason });
    void state.publisher.publish(migrationProgress, { migrationId }, {
      migrationId, vm, phase: MigrationPhase.Running, mode: MigrationMode.PreCopy, stats: { time_elapsed: 0, data_processed: 0 },
      peer: { host: peer, state: v.state === "suspect" ? "suspected" : "answering", reason: v.reason.slice(0, 2000) },
    }).catch(() => undefined);
  });

/**
 * How far a destination got with its manifest (sequence numbers read and handed to QEMU), or
 * undefined if it did not answer or has no such session.
 */
export async function destinationManifest(state: HostState, host: string, migrationId: string, vm: string): Promise<{ seqWritten?: number; seqRead?: number; waitingFor?: string } | undefined> {
  try {
    const r = await ask(state.nc, agentManifest, { host }, { migrationId, vm }, { timeoutMs: 1000 });
    return "error" in r ? undefined : r;
  } catch {
    return undefined;
  }
}
