/**
 * What a VM in its switch-over waits for. Between the source QEMU stopping the guest and the
 * destination resuming it, no migration event is published until the commit, so a progress
 * view that only follows events stands still for the whole downtime. This asks the
 * destination agent how far its rebuild got (its `manifest` service: the manifest sequence
 * numbers read and handed to QEMU, and what it waits for), once a second per paused VM.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { agentManifest } from "../schemas/index.ts";
import { ask } from "../infra/nats/service.ts";

export interface SwitchoverWait {
  /** Since when the guest is paused (the switch-over event's time). */
  pausedSince: number;
  /** What the destination said it waits for, or why it said nothing. */
  waitingFor: string;
  /** Manifest messages read, and handed to QEMU (-1: none yet). */
  seqRead?: number;
  seqWritten?: number;
}

/** One question to the destination agent, bounded by `timeoutMs`. */
export async function askDestination(nc: NatsConnection, targetHost: string, migrationId: string, vm: string, timeoutMs = 1000): Promise<Omit<SwitchoverWait, "pausedSince">> {
  try {
    const r = await ask(nc, agentManifest, { host: targetHost }, { migrationId, vm }, { timeoutMs });
    if ("error" in r) return { waitingFor: `the destination (${r.error})` };
    return { waitingFor: `${targetHost}: ${r.waitingFor}`, seqRead: r.seqRead, seqWritten: r.seqWritten };
  } catch (err) {
    return { waitingFor: `${targetHost}, which did not answer within ${timeoutMs} ms (${(err as Error).message})` };
  }
}

/** The line a progress view shows for a paused VM. */
export function switchoverLine(w: SwitchoverWait, now: number): string {
  const seq = w.seqWritten !== undefined && w.seqRead !== undefined ? ` (manifest: read to seq ${w.seqRead}, handed to QEMU to seq ${w.seqWritten})` : "";
  return `switchover ${((now - w.pausedSince) / 1000).toFixed(1)}s: waiting for ${w.waitingFor}${seq}`;
}

/**
 * Polls the destination for every VM `paused()` lists, once per `intervalMs`, and reports each
 * answer, then the end of the round; one round of questions at a time. Stop with the returned function.
 */
export function watchSwitchovers(
  nc: NatsConnection,
  o: { migrationId: string; targetHost: () => string | undefined; paused: () => { vm: string; since: number }[]; onWait: (vm: string, w: SwitchoverWait) => void; onRound?: () => void; intervalMs?: number },
): () => void {
  let busy = false;
  const timer = setInterval(() => {
    const host = o.targetHost();
    const paused = o.paused();
    if (busy || !host || paused.length === 0) return;
    busy = true;
    void Promise.all(paused.map(async (p) => o.onWait(p.vm, { pausedSince: p.since, ...(await askDestination(nc, host, o.migrationId, p.vm)) })))
      .then(() => o.onRound?.())
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, o.intervalMs ?? 1000);
  timer.unref();
  return () => clearInterval(timer);
}
