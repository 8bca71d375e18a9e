/**
 * Fuzzing the return-path decoder (what a destination QEMU writes back; hostile if that QEMU
 * or the wire is): for any bytes in any chunking it yields messages or throws a
 * ReturnPathError, never anything else; valid message sequences round-trip whatever the cut.
 * FUZZ_RUNS / FUZZ_SEED as in the other fuzz tests.
 */
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { ReturnPathDecoder, ReturnPathError, encodeReqPages, encodeShut } from "../../adapters/qemu/returnPath.ts";

const RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 6000));
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

const cuts = (bytes: Uint8Array, at: number[]) => {
  const points = [...new Set(at.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    out.push(Buffer.from(bytes.subarray(from, p)));
    from = p;
  }
  return out;
};

const framed = fc
  .array(fc.record({ type: fc.integer({ min: 0, max: 10 }), payload: fc.uint8Array({ maxLength: 40 }) }), { minLength: 1, maxLength: 12 })
  .map((msgs) => {
    const parts = msgs.map(({ type, payload }) => {
      const b = Buffer.alloc(4 + payload.length);
      b.writeUInt16BE(type, 0);
      b.writeUInt16BE(payload.length, 2);
      b.set(payload, 4);
      return b;
    });
    return new Uint8Array(Buffer.concat(parts));
  });

describe(`return-path decoder fuzz (seed ${SEED})`, () => {
  it("random bytes in random chunks: messages or a ReturnPathError, nothing else", () => {
    let rejected = 0;
    fc.assert(
      // Half fully random bytes, half well-framed messages of any type with any payload.
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 2048 }), framed), fc.array(fc.nat(), { maxLength: 8 }), (bytes, at) => {
        const d = new ReturnPathDecoder();
        try {
          for (const c of cuts(bytes, at)) d.push(c);
        } catch (err) {
          if (!(err instanceof ReturnPathError)) throw err;
          rejected++;
        }
      }),
      { numRuns: RUNS, seed: SEED },
    );
    console.log(`return-path fuzz: ${RUNS} inputs, ${rejected} rejected with a ReturnPathError, 0 other errors`);
    expect(rejected).toBeGreaterThan(0);
  });

  it("valid REQ_PAGES_ID / SHUT sequences decode to what was encoded, however they are cut", () => {
    const msg = fc.oneof(
      fc.record({ type: fc.constant("reqPages" as const), block: fc.stringMatching(/^[a-z0-9./@]{1,40}$/), start: fc.nat({ max: 2 ** 40 }).map((n) => n * 4096), pages: fc.integer({ min: 1, max: 64 }) }),
      fc.record({ type: fc.constant("shut" as const), value: fc.nat({ max: 2 ** 31 }) }),
    );
    fc.assert(
      fc.property(fc.array(msg, { minLength: 1, maxLength: 20 }), fc.array(fc.nat(), { maxLength: 10 }), (msgs, at) => {
        const bytes = Buffer.concat(msgs.map((m) => (m.type === "shut" ? encodeShut(m.value) : encodeReqPages(m.block, m.start, m.pages * 4096))));
        const d = new ReturnPathDecoder();
        const out = cuts(bytes, at).flatMap((c) => d.push(c));
        expect(out).toEqual(msgs.map((m) => (m.type === "shut" ? { type: "shut", value: m.value } : { type: "reqPages", block: m.block, start: m.start, length: m.pages * 4096 })));
      }),
      { numRuns: Math.max(1, Math.floor(RUNS / 6)), seed: SEED },
    );
  });
});
