/**
 * switchover (source): executes the dirty log's switch-over decision on the source QEMU,
 * stop-and-copy or post-copy. Before post-copy, gangway's own pipeline is drained first.
 */
import { agentSwitchover } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { sessionKey, type HostState, type SourceSession } from "../hostState.ts";
import { destinationManifest } from "../peers.ts";

/** QEMU's stream while gangway drains its pipeline before a switch-over (bytes/s). */
const DRAIN_BYTES_PER_SECOND = 1_000_000;
/** The longest a switch-over waits for the drain. */
const DRAIN_MAX_MS = 15_000;

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
    // Post-copy only: for stop-and-copy, what the guest dirties during a drain would all be
    // sent with it stopped; post-copy defers those pages until after the resume.
    const drained = c.mode === "post-copy" ? await drainBeforeSwitchover(state, s) : false;
    state.log.info("switching over", { migrationId: c.migrationId, vm: c.vm, mode: c.mode, reason: c.reason, drained });
    if (c.mode === "post-copy") await s.out.startPostcopy();
    else await s.out.forceComplete();
  },
});

/**
 * Everything already in gangway's pipeline (proxy buffer, keying window, manifest, the
 * destination's rebuild) would sit between the guest stopping and the destination getting
 * its device state. So first: slow QEMU's stream to a trickle while the guest still runs,
 * and wait until the destination has handed QEMU all the source published (bounded).
 */
async function drainBeforeSwitchover(state: HostState, s: SourceSession): Promise<boolean> {
  await s.out!.throttle(DRAIN_BYTES_PER_SECOND);
  const deadline = Date.now() + DRAIN_MAX_MS;
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
