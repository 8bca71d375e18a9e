/**
 * Keeps a source at the destination's pace. Without it the source takes QEMU's stream as fast
 * as it can key and pack it, the destination (which fetches, checks and writes every page
 * into its QEMU) falls behind, and when QEMU stops the guest for the final pass everything the
 * destination has not handed to its QEMU yet is downtime: measured on the 4-VM demo, the
 * destination had handed QEMU manifest seq 6 of ~25 when the guests stopped, and the guests
 * stayed paused 24–61 s instead of 3–7 s.
 *
 * `paceToDestination` wraps the records parsed from QEMU's stream. Before it takes the next
 * pages from QEMU it checks that the destination has handed its QEMU everything the source
 * published up to `window` manifest messages ago; if not, it says it holds (the source
 * flushes what it parsed) and waits (QEMU's stream backs up
 * into its socket, so QEMU's own bandwidth estimate, and with it its switch-over decision,
 * reflect what gets through to the destination). Every wait is bounded (`maxWaitMs`; then it
 * goes on and says so) and logged with what it waits for. While `active()` is false (a
 * switch-over is draining, post-copy) nothing is held back.
 */
import type { Logger } from "../../infra/log.ts";
import type { StreamRecord } from "../qemu/stream/records.ts";

export interface PaceOptions {
  /** The last manifest sequence number the source published (-1: none). */
  published: () => number;
  /** The last one the destination handed its QEMU, or undefined when it cannot say (then nothing waits). */
  destinationWritten: () => Promise<number | undefined>;
  /** How many published manifest messages the destination may have still to hand to QEMU. @default 1 */
  window?: number;
  /** Pace only while this holds. @default always */
  active?: () => boolean;
  /**
   * Hold QEMU's stream while this holds, however far the destination got: another VM of the
   * gang is in its downtime, and the CPU of both agents is its (bounded by `maxWaitMs`).
   */
  yieldTo?: () => string | undefined;
  /** Longest single wait; then the source goes on (and logs that it did). @default 10000 */
  maxWaitMs?: number;
  /** Between two questions to the destination. @default 100 */
  pollMs?: number;
  log?: Logger;
  /** Named in the logs ("vm1 of mig-…"). */
  what?: string;
  /** Total time held back so far, for whoever reports it. */
  onHeld?: (totalMs: number) => void;
}

export interface Pacer {
  /** QEMU's records, held back while the destination is behind. */
  readonly records: AsyncGenerator<StreamRecord>;
  /**
   * True while the pacer holds QEMU's stream back. The source must then flush everything it
   * parsed (look-ups, packs, manifest): the destination may be waiting for exactly those pages
   * (a pack is written once it is full), and this VM's or another VM's destination would
   * wait for them until the pacer gave up.
   */
  readonly holding: boolean;
}

export function paceToDestination(input: AsyncIterable<StreamRecord>, o: PaceOptions): Pacer {
  const window = o.window ?? 1;
  const maxWaitMs = o.maxWaitMs ?? 10_000;
  const pollMs = o.pollMs ?? 100;
  const active = () => o.active?.() ?? true;
  let held = 0;
  let holding = false;
  // The destination is asked at most once per poll: a record of QEMU's stream holds a few
  // hundred pages at most, a question per record would be thousands a second.
  let lastWritten: number | undefined;
  let askedAt = -Infinity;
  const written = async (): Promise<number | undefined> => {
    if (Date.now() - askedAt >= pollMs) {
      lastWritten = await o.destinationWritten();
      askedAt = Date.now();
    }
    return lastWritten;
  };
  const behind = async (): Promise<{ published: number; written: number; yielding?: string } | undefined> => {
    const published = o.published();
    const yielding = active() ? o.yieldTo?.() : undefined;
    if (yielding) return { published, written: lastWritten ?? -1, yielding };
    const w = await written();
    return w !== undefined && published - w > window && active() ? { published, written: w } : undefined;
  };
  async function* records(): AsyncGenerator<StreamRecord> {
    for await (const r of input) {
      if (r.type !== "pages" || !active() || !(await behind())) {
        yield r;
        continue;
      }
      // Hand this record on with `holding` set, so the source flushes it and all before it;
      // then wait (when the source asks for the next record) until the destination caught up.
      holding = true;
      try {
        yield r;
        const start = Date.now();
        o.log?.debug("pacing: waiting for the destination to hand its QEMU what was published", { what: o.what, window });
        for (let b = await behind(); b; b = await behind()) {
          const waited = Date.now() - start;
          if (waited >= maxWaitMs) {
            o.log?.warn(b.yielding ? "pacing: held for another VM's switch-over as long as allowed; sending on" : "pacing: the destination did not catch up in time; sending on", { what: o.what, published: b.published, written: b.written, waitedMs: waited, ...(b.yielding ? { yieldingTo: b.yielding } : {}) });
            break;
          }
          await new Promise((resolve) => setTimeout(resolve, Math.max(1, pollMs - (Date.now() - askedAt))));
        }
        const waited = Date.now() - start;
        held += waited;
        o.onHeld?.(held);
        o.log?.debug("pacing: destination caught up", { what: o.what, waitedMs: waited, heldMs: held });
      } finally {
        holding = false;
      }
    }
  }
  return {
    records: records(),
    get holding() {
      return holding;
    },
  };
}
