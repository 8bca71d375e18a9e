/**
 * switchover (source): executes the dirty log's switch-over decision on the source QEMU,
 * stop-and-copy or post-copy. Before either, gangway's own pipeline is drained while the
 * guest still runs.
 */
import { agentSwitchover } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { sessionKey, type HostState, type SourceSession } from "../hostState.ts";
import { destinationManifest } from "../peers.ts";

/** QEMU's stream while gangway drains its pipeline before a switch-over (bytes/s). */
const DRAIN_BYTES_PER_SECOND = 1_000_000;
/**
 * The longest a switch-over waits for the drain. Post-copy defers what the guest dirties
 * meanwhile until after the resume; stop-and-copy sends it in the downtime, so its drain is
 * bounded closer (a destination that far behind is not caught up by waiting longer).
 */
const DRAIN_MAX_MS = { "post-copy": 15_000, "stop-and-copy": 3_000 } as const;

export default defineAction({
  trigger: agentSwitchover,
  async handle(state, c) {
    // A force-complete can come before QEMU's migration is set up: wait for it a little.
    let s = state.sources.get(sessionKey(c.migrationId, c.vm));
    for (let i = 0; i < 50 && !s?.out; i++) {
      await new Promise((r) => setTimeout(r, 200));
      s = state.sources.get(sessionKey(c.migrationId, c.vm));
    }
    if (!s?.out || s.switchover) return;
    s.switchover = { mode: c.mode, reason: c.reason };
    // For stop-and-copy, what the guest dirties during the drain goes in the downtime, in
    // exchange for the destination's backlog (up to two manifest messages) that would: on the
    // soak the median downtime stayed the same and the worst fell (RELIABILITY.md, session 9).
    const started = performance.now();
    const drained = await drainBeforeSwitchover(state, s, DRAIN_MAX_MS[c.mode]);
    state.log.info("switching over", { migrationId: c.migrationId, vm: c.vm, mode: c.mode, reason: c.reason, drained, drainMs: Math.round(performance.now() - started) });
    if (c.mode === "post-copy") await s.out.startPostcopy();
    else {
      await s.out.forceComplete();
      // QEMU's last pass goes at the migration's own rate, not the trickle's.
      await s.out.throttle();
    }
  },
});

/**
 * Everything already in gangway's pipeline (proxy buffer, keying window, manifest, the
 * destination's rebuild) would sit between the guest stopping and the destination getting
 * its device state. So first: slow QEMU's stream to a trickle while the guest still runs,
 * and wait until the destination has handed QEMU all the source published (bounded).
 */
async function drainBeforeSwitchover(state: HostState, s: SourceSession, maxMs: number): Promise<boolean> {
  await s.out!.throttle(DRAIN_BYTES_PER_SECOND);
  const deadline = Date.now() + maxMs;
  let steady = 0;
  let last = s.published;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    const written = (await destinationManifest(state, s.targetHost, s.migrationId, s.vm))?.seqWritten;
    if (written === undefined) return false;
    // Caught up with what the source had published a poll ago (the trickle goes on).
    steady = written >= last ? steady + 1 : 0;
    last = s.published;
    if (steady >= 2) return true;
  }
  return false;
}
