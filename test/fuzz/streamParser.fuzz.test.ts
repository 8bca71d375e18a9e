/**
 * Fuzzing the QEMU migration-stream parser (adapters/qemu/stream) with fast-check.
 *
 * Rule: for any input, parseBuffer / parsePackaged / parseStream (any chunking) either
 * succeed or throw a MigrationStreamError subclass: never a TypeError, RangeError or
 * other error, never hang (each input is timed), never allocate absurd memory (every
 * Buffer allocation the parser asks for is recorded and bounded).
 *
 * Inputs: mostly valid streams built with the encoder (test/stream/helpers/synthetic.ts
 * shapes: header, config, ram setup, page rounds, device sections, commands, EOF,
 * VMDESC) then mutated: bytes flipped or set to interesting values, truncated, chunks
 * duplicated / removed / spliced from another stream, RAM flag bits set, be16/be32/be64
 * length fields overwritten with extreme values; plus fully random bytes.
 *
 * Runs:   npx vitest run test/fuzz/streamParser.fuzz.test.ts
 * Longer: FUZZ_RUNS=200000 npx vitest run test/fuzz/streamParser.fuzz.test.ts
 *         (FUZZ_RUNS is the run count of the main mutation property; the others scale
 *         from it. Raise the vitest timeout for long campaigns: FUZZ_TIMEOUT_MS, default
 *         scales with the runs.)
 * Replay: FUZZ_SEED=<seed printed by the test> (plus fast-check's printed path on failure).
 */
import { afterAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseBuffer, parsePackaged, parseStream } from "../../adapters/qemu/stream/stream.ts";
import { StreamEncoder, encodeRecords } from "../../adapters/qemu/stream/encoder.ts";
import { encodeConfig } from "../../adapters/qemu/stream/config.ts";
import { isMigrationStreamError } from "../../adapters/qemu/stream/errors.ts";
import { PageKind } from "../../adapters/qemu/stream/constants.ts";
import type { MigrationCommand, StreamRecord } from "../../adapters/qemu/stream/records.ts";
import { StreamParser, type ParseOptions } from "../../adapters/qemu/stream/parser.ts";
import { BLOCKS, batch, cmd, device, head, page, ramEnd, ramPart, ramStart } from "../stream/helpers/synthetic.ts";

const RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 6000));
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const TIMEOUT = Number(process.env.FUZZ_TIMEOUT_MS ?? Math.max(60_000, RUNS * 20));
/** Slowest acceptable parse of one (≤ ~1 MiB) input. */
const MAX_MS_PER_INPUT = 2_000;
/** Largest single allocation the parser may make for inputs of this size: a 4 MiB page slab (1024 pages), a ≤16 MiB PACKAGED blob only once present, else input-sized copies. */
const allocLimit = (inputBytes: number) => 8 * 1024 * 1024 + 2 * inputBytes;

const stats = { inputs: 0, accepted: 0, rejected: 0, crashes: 0, asyncDisagreements: 0, maxAlloc: 0, rejectedBy: new Map<string, number>() };

// --- allocation tracking ------------------------------------------------------------

type AllocFn = (size: number, ...rest: never[]) => Buffer;
const originals = { alloc: Buffer.alloc, allocUnsafe: Buffer.allocUnsafe, allocUnsafeSlow: Buffer.allocUnsafeSlow };
let tracked = 0;
function trackAllocations(): void {
  for (const name of ["alloc", "allocUnsafe", "allocUnsafeSlow"] as const) {
    const orig = originals[name] as unknown as AllocFn;
    (Buffer as unknown as Record<string, AllocFn>)[name] = function (this: unknown, size: number, ...rest: never[]) {
      if (typeof size === "number" && size > tracked) tracked = size;
      return orig.call(Buffer, size, ...rest);
    };
  }
}
function untrackAllocations(): void {
  Object.assign(Buffer, originals);
}

// --- valid streams ------------------------------------------------------------------

const blockArb = fc.constantFrom(...BLOCKS);
const pagesArb = fc
  .tuple(blockArb, fc.boolean(), fc.uniqueArray(fc.nat({ max: 63 }), { minLength: 0, maxLength: 12 }), fc.array(fc.oneof(fc.nat({ max: 255 }), fc.nat({ max: 1000 }).map((s) => -1 - s)), { minLength: 12, maxLength: 12 }))
  .map(([block, named, offs, contents]) => {
    const maxPage = block.usedLength / 4096;
    const sorted = [...new Set(offs.map((o) => o % maxPage))].sort((a, b) => a - b);
    return batch(
      block.id,
      sorted.map((o, i) => {
        const c = contents[i]!;
        return [o * 4096, c >= 0 ? c : page(-1 - c)] as [number, number | Buffer];
      }),
      1,
      named, // false: CONTINUE when the previous page record was of the same block
    );
  });
const commandArb: fc.Arbitrary<MigrationCommand> = fc.oneof(
  fc.constant<MigrationCommand>({ cmd: "openReturnPath" }),
  fc.nat().map((value): MigrationCommand => ({ cmd: "ping", value })),
  fc.constant<MigrationCommand>({ cmd: "postcopyAdvise" }),
  fc.constant<MigrationCommand>({ cmd: "postcopyAdvise", pageSizeSummary: 4096, targetPageSize: 4096 }),
  fc.constant<MigrationCommand>({ cmd: "postcopyListen" }),
  fc.constant<MigrationCommand>({ cmd: "postcopyRun" }),
  fc
    .array(fc.tuple(fc.nat({ max: 63 }), fc.integer({ min: 1, max: 8 })), { maxLength: 3 })
    .map((r): MigrationCommand => ({ cmd: "postcopyRamDiscard", version: 0, block: "m0", ranges: r.map(([s, l]) => ({ start: s * 4096, length: l * 4096 })) })),
  fc.constant<MigrationCommand>({ cmd: "recvBitmap", block: "m0" }),
  fc.constant<MigrationCommand>({ cmd: "enableColo" }),
);
const deviceArb = fc
  .tuple(fc.integer({ min: 3, max: 40 }), fc.constantFrom("timer", "cpu_common", "apic", "kvmclock", "0000:00:02.0/virtio-net"), fc.uint8Array({ maxLength: 300 }))
  .map(([sid, idstr, body]) => device(sid, idstr, Buffer.from(body.map((b) => (b === 0x7e ? 0x7d : b)))));
const packagedArb = fc
  .array(fc.oneof(deviceArb, commandArb.filter((c) => c.cmd !== "postcopyAdvise").map(cmd)), { maxLength: 4 })
  .map((recs) => cmd({ cmd: "packaged", data: encodeRecords(recs) }));

/** Other block lists a (mutated) stream may announce in a second RAM setup. */
const OTHER_BLOCKS = [[BLOCKS[1]!], [{ id: "m0", usedLength: 4096 }], [...BLOCKS, { id: "vga.vram", usedLength: 8 * 4096 }]];

/**
 * A valid stream as segments that each encode on their own (header + config, one whole
 * ram section, one device section, one command, EOF, VMDESC): record-level mutations
 * duplicate, drop, reorder or borrow whole segments.
 */
const validSegmentsArb: fc.Arbitrary<Buffer[]> = fc
  .record({
    config: fc.constantFrom("pc-i440fx-7.2", "q35", "x"),
    pre: fc.array(commandArb, { maxLength: 2 }),
    rounds: fc.array(fc.tuple(fc.array(pagesArb, { maxLength: 3 }), fc.array(fc.oneof(deviceArb, commandArb.map(cmd), packagedArb), { maxLength: 2 })), { maxLength: 4 }),
    last: fc.array(pagesArb, { maxLength: 2 }),
    devices: fc.array(deviceArb, { maxLength: 3 }),
    vmdesc: fc.option(fc.jsonValue({ maxDepth: 2 }).map((j) => Buffer.from(JSON.stringify({ devices: j })))),
  })
  .map((s) => {
    // One encoder for the whole stream, so page records use CONTINUE across sections as QEMU's do.
    const enc = new StreamEncoder();
    const seg = (recs: StreamRecord[]) => Buffer.concat(recs.flatMap((r) => enc.encode(r)));
    const out: Buffer[] = [];
    const top: StreamRecord[] = [{ type: "header", version: 3, offset: 0 }];
    if (s.config !== "x") top.push({ type: "config", config: { machine: s.config }, raw: encodeConfig(s.config), offset: 0 });
    else top.push(...head().slice(1));
    out.push(seg(top), ...s.pre.map((c) => seg([cmd(c)])), seg(ramStart()));
    for (const [batches, between] of s.rounds) out.push(seg(ramPart(...batches)), ...between.map((r) => seg([r])));
    out.push(seg(ramEnd(...s.last)), ...s.devices.map((d) => seg([d])), seg([{ type: "eof", offset: 0 }]));
    if (s.vmdesc) out.push(seg([{ type: "vmdesc", json: s.vmdesc, offset: 0 }]));
    return out;
  });
const validStreamArb: fc.Arbitrary<Buffer> = validSegmentsArb.map((segs) => Buffer.concat(segs));

/** Record-level mutations of a segment list. */
type SegMutation = (segs: Buffer[], other: Buffer[]) => Buffer[];
const segMutationArb: fc.Arbitrary<SegMutation> = fc.oneof(
  fc.tuple(fc.nat(), fc.nat({ max: 3 })).map(([i, n]) => (s: Buffer[]) => {
    const k = i % s.length;
    return [...s.slice(0, k + 1), ...Array<Buffer>(n + 1).fill(s[k]!), ...s.slice(k + 1)];
  }),
  fc.nat().map((i) => (s: Buffer[]) => s.filter((_, j) => j !== i % s.length)),
  fc.tuple(fc.nat(), fc.nat()).map(([i, j]) => (s: Buffer[]) => {
    const o = [...s];
    const a = i % o.length;
    const b = j % o.length;
    [o[a], o[b]] = [o[b]!, o[a]!];
    return o;
  }),
  fc.tuple(fc.nat(), fc.nat()).map(([i, j]) => (s: Buffer[], other: Buffer[]) => {
    const k = i % (s.length + 1);
    return [...s.slice(0, k), other[j % other.length]!, ...s.slice(k)];
  }),
  // a second RAM setup (another block list) in the middle of the stream
  fc.tuple(fc.nat(), fc.constantFrom(...OTHER_BLOCKS)).map(([i, blocks]) => (s: Buffer[]) => {
    const k = i % (s.length + 1);
    return [...s.slice(0, k), encodeRecords(ramStart(blocks)), ...s.slice(k)];
  }),
);

// --- mutations ----------------------------------------------------------------------

type Mutation = (b: Buffer) => Buffer;
const INTERESTING_8 = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x10, 0x20, 0x7e, 0x7f, 0x80, 0xff];
const INTERESTING_32 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x1000, 0xffff, 0x10000, 0x1000000, 0x1000001, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const RAM_FLAG_BITS = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800];
const at = (b: Buffer, frac: number) => Math.min(b.length, Math.floor(frac * (b.length + 1)));
/** A position as a fraction of the input, uniform (fast-check's default bias would keep hitting the first bytes). */
const frac = fc.noBias(fc.integer({ min: 0, max: 999_999 })).map((x) => x / 1_000_000);

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  // flip bits of one byte
  fc.tuple(frac, fc.integer({ min: 1, max: 255 })).map(([f, x]) => (b: Buffer) => {
    const o = Buffer.from(b);
    const i = at(o, f);
    if (i < o.length) o[i] ^= x;
    return o;
  }),
  // set one byte to an interesting value
  fc.tuple(frac, fc.constantFrom(...INTERESTING_8)).map(([f, v]) => (b: Buffer) => {
    const o = Buffer.from(b);
    const i = at(o, f);
    if (i < o.length) o[i] = v;
    return o;
  }),
  // OR a RAM flag bit into the low 12 bits of a be64 (bits land in the last two bytes)
  fc.tuple(frac, fc.constantFrom(...RAM_FLAG_BITS)).map(([f, bit]) => (b: Buffer) => {
    const o = Buffer.from(b);
    const i = at(o, f);
    if (i + 2 <= o.length) o.writeUInt16BE(o.readUInt16BE(i) | bit, i);
    return o;
  }),
  // overwrite a be16 / be32 / be64 length-like field with an extreme value
  fc.tuple(frac, fc.constantFrom(2, 4, 8), fc.constantFrom(...INTERESTING_32), fc.boolean()).map(([f, width, v, neg]) => (b: Buffer) => {
    const o = Buffer.from(b);
    const i = at(o, f);
    if (i + width > o.length) return o;
    const val = neg ? (0xffffffff - v) >>> 0 : v;
    if (width === 2) o.writeUInt16BE(val & 0xffff, i);
    else if (width === 4) o.writeUInt32BE(val, i);
    else {
      o.writeUInt32BE(val, i);
      o.writeUInt32BE(neg ? 0xffffffff : v, i + 4);
    }
    return o;
  }),
  // truncate
  frac.map((f) => (b: Buffer) => b.subarray(0, at(b, f))),
  // remove a chunk
  fc.tuple(frac, fc.integer({ min: 1, max: 5000 })).map(([f, n]) => (b: Buffer) => {
    const i = at(b, f);
    return Buffer.concat([b.subarray(0, i), b.subarray(i + n)]);
  }),
  // duplicate a chunk in place
  fc.tuple(frac, fc.integer({ min: 1, max: 5000 })).map(([f, n]) => (b: Buffer) => {
    const i = at(b, f);
    return Buffer.concat([b.subarray(0, i + n), b.subarray(i, i + n), b.subarray(i + n)]);
  }),
  // move a chunk elsewhere (reordering)
  fc.tuple(frac, frac, fc.integer({ min: 1, max: 5000 })).map(([f, g, n]) => (b: Buffer) => {
    const i = at(b, f);
    const chunk = b.subarray(i, i + n);
    const rest = Buffer.concat([b.subarray(0, i), b.subarray(i + n)]);
    const j = at(rest, g);
    return Buffer.concat([rest.subarray(0, j), chunk, rest.subarray(j)]);
  }),
  // insert random bytes
  fc.tuple(frac, fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([f, x]) => (b: Buffer) => {
    const i = at(b, f);
    return Buffer.concat([b.subarray(0, i), Buffer.from(x), b.subarray(i)]);
  }),
);

/** A valid stream, another to splice from, and record- and byte-level mutations to apply. */
const mutatedStreamArb: fc.Arbitrary<Buffer> = fc
  .tuple(validSegmentsArb, validSegmentsArb, fc.array(segMutationArb, { maxLength: 3 }), fc.array(mutationArb, { maxLength: 5 }), fc.option(fc.tuple(frac, frac, frac)))
  .map(([segs, otherSegs, segMuts, muts, splice]) => {
    for (const m of segMuts) segs = m(segs, otherSegs);
    let b: Buffer = Buffer.concat(segs);
    if (splice) {
      // splice: b's prefix, a slice of another valid stream, b's suffix
      const other = Buffer.concat(otherSegs);
      const [f, g, h] = splice;
      const i = at(b, f);
      const s = at(other, Math.min(g, h));
      const e = at(other, Math.max(g, h));
      b = Buffer.concat([b.subarray(0, i), other.subarray(s, e), b.subarray(i)]);
    }
    for (const m of muts) b = m(b);
    return b;
  });

const optionsArb: fc.Arbitrary<ParseOptions> = fc.record(
  { maxBatchPages: fc.integer({ min: 1, max: 2048 }), maxDeviceSectionBytes: fc.integer({ min: 16, max: 1 << 20 }) },
  { requiredKeys: [] },
);

// --- oracle -------------------------------------------------------------------------

type Outcome = { ok: true } | { ok: false; name: string };

/** Runs `fn`, asserting the rule; returns whether it accepted the input and, if not, the error class. */
function check(inputBytes: number, fn: () => unknown): Outcome {
  stats.inputs++;
  tracked = 0;
  const t0 = performance.now();
  let outcome: Outcome;
  try {
    fn();
    outcome = { ok: true };
  } catch (err) {
    if (!isMigrationStreamError(err)) {
      stats.crashes++;
      throw err;
    }
    outcome = { ok: false, name: err.name };
  }
  return finish(inputBytes, t0, outcome);
}

async function checkAsync(inputBytes: number, fn: () => Promise<unknown>): Promise<Outcome> {
  stats.inputs++;
  tracked = 0;
  const t0 = performance.now();
  let outcome: Outcome;
  try {
    await fn();
    outcome = { ok: true };
  } catch (err) {
    if (!isMigrationStreamError(err)) {
      stats.crashes++;
      throw err;
    }
    outcome = { ok: false, name: err.name };
  }
  return finish(inputBytes, t0, outcome);
}

function finish(inputBytes: number, t0: number, outcome: Outcome): Outcome {
  const ms = performance.now() - t0;
  if (tracked > stats.maxAlloc) stats.maxAlloc = tracked;
  if (outcome.ok) stats.accepted++;
  else {
    stats.rejected++;
    stats.rejectedBy.set(outcome.name, (stats.rejectedBy.get(outcome.name) ?? 0) + 1);
  }
  if (ms > MAX_MS_PER_INPUT) throw new Error(`parse of ${inputBytes} bytes took ${ms.toFixed(0)} ms (hang?)`);
  if (tracked > allocLimit(inputBytes)) throw new Error(`parser allocated ${tracked} bytes at once for ${inputBytes} bytes of input`);
  return outcome;
}

/**
 * Records with page batches split into single pages: how pages are grouped into batches
 * follows the chunks the parser was given (a batch ends with the bytes at hand), what the
 * pages are does not.
 */
function unbatched(records: StreamRecord[]): unknown[] {
  const out: unknown[] = [];
  for (const r of records) {
    if (r.type !== "pages") {
      out.push(r);
      continue;
    }
    let content = 0;
    for (let i = 0; i < r.count; i++) {
      const page = { type: "page", block: r.block, round: r.round, offset: r.offsets[i], kind: r.kinds[i], fill: r.fills[i], named: r.named[i], position: r.positions[i] };
      if (r.kinds[i] === PageKind.normal) {
        out.push({ ...page, content: r.data.subarray(content * 4096, (content + 1) * 4096).toString("hex") });
        content++;
      } else out.push(page);
    }
  }
  return out;
}

/** Cuts `data` at the given fractions; some pieces are grouped as arrays (a Readable's buffered chunks). */
function chunked(data: Buffer, cuts: number[], groups: boolean[]): (Uint8Array | Uint8Array[])[] {
  const points = [...new Set(cuts.map((c) => at(data, c)))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let prev = 0;
  for (const p of [...points, data.length]) {
    pieces.push(data.subarray(prev, p));
    prev = p;
  }
  const out: (Uint8Array | Uint8Array[])[] = [];
  for (let i = 0; i < pieces.length; i++) {
    if (groups[i % Math.max(1, groups.length)] && i + 1 < pieces.length) {
      out.push([pieces[i]!, pieces[i + 1]!]);
      i++;
    } else out.push(pieces[i]!);
  }
  return out;
}

async function drainStream(chunks: (Uint8Array | Uint8Array[])[], options: ParseOptions, yieldEvery: number, into: StreamRecord[] = []): Promise<StreamRecord[]> {
  async function* source() {
    let n = 0;
    for (const c of chunks) {
      if (++n % yieldEvery === 0) await Promise.resolve();
      yield c;
    }
  }
  for await (const r of parseStream(source(), options)) into.push(r);
  return into;
}

/**
 * fast-check parameters. On failure the (often large) counterexample is written to a file
 * instead of the log, and the report keeps the seed, path and error.
 */
const params = <T>(runs: number): fc.Parameters<T> => ({
  seed: SEED,
  numRuns: Math.max(1, Math.round(runs)),
  endOnFailure: true,
  reporter: (details) => {
    if (!details.failed) return;
    const file = join(tmpdir(), `gangway-fuzz-stream-${SEED}-${Date.now()}.bin`);
    const input = (details.counterexample as unknown[] | null)?.[0];
    if (Buffer.isBuffer(input)) writeFileSync(file, input);
    const err = details.errorInstance as Error | undefined;
    throw new Error(
      `fuzz failure after ${details.numRuns} runs: seed ${details.seed}, path "${details.counterexamplePath}"` +
        (Buffer.isBuffer(input) ? `, input (${input.length} bytes) in ${file}` : "") +
        `\n${err?.stack ?? String(err)}`,
    );
  },
});

// --- properties -----------------------------------------------------------------------

describe("fuzz: QEMU migration-stream parser", () => {
  console.log(`fuzz: stream parser: seed ${SEED} (replay with FUZZ_SEED=${SEED}), FUZZ_RUNS=${RUNS}`);
  trackAllocations();
  afterAll(() => {
    untrackAllocations();
    const by = [...stats.rejectedBy.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ");
    console.log(
      `fuzz: stream parser: ${stats.inputs} inputs, ${stats.rejected} rejected, ${stats.accepted} accepted, ${stats.crashes} crashes, ` +
        `${stats.asyncDisagreements} sync/async disagreements, largest allocation ${stats.maxAlloc} bytes (seed ${SEED})\n  rejected by: ${by}`,
    );
  });

  it("valid streams from the encoder parse, and re-encode to the same bytes", () => {
    fc.assert(
      fc.property(validStreamArb, (data) => {
        const out = check(data.length, () => {
          const recs = parseBuffer(data);
          expect(encodeRecords(recs).equals(data)).toBe(true);
        });
        expect(out.ok).toBe(true);
      }),
      params(RUNS / 10),
    );
  }, TIMEOUT);

  it("mutated streams: parseBuffer only throws MigrationStreamError", () => {
    fc.assert(
      fc.property(mutatedStreamArb, optionsArb, (data, options) => {
        check(data.length, () => parseBuffer(data, options));
      }),
      params(RUNS),
    );
  }, TIMEOUT);

  it("random bytes, with and without a valid header: parseBuffer only throws MigrationStreamError", () => {
    const header = Buffer.from("5145564d00000003", "hex");
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), fc.constantFrom(0, 1, 2), (bytes, prefix) => {
        const data = prefix === 0 ? Buffer.from(bytes) : Buffer.concat([header, prefix === 2 ? encodeConfig("pc") : Buffer.alloc(0), Buffer.from(bytes)]);
        check(data.length, () => parseBuffer(data));
      }),
      params(RUNS / 3),
    );
  }, TIMEOUT);

  it("mutated PACKAGED blobs: parsePackaged only throws MigrationStreamError", () => {
    const blobArb = fc
      .tuple(packagedArb, fc.array(pagesArb, { maxLength: 2 }), fc.array(mutationArb, { maxLength: 4 }), fc.boolean())
      .map(([pkg, batches, muts, withRam]) => {
        let b = (pkg.type === "command" && pkg.command.cmd === "packaged" ? pkg.command.data : Buffer.alloc(0)) as Buffer;
        if (withRam) b = Buffer.concat([b, encodeRecords([...ramStart(), ...ramPart(...batches)]).subarray(0)]);
        for (const m of muts) b = m(b);
        return b;
      });
    fc.assert(
      fc.property(blobArb, fc.boolean(), (data, withContext) => {
        check(data.length, () => parsePackaged(data, withContext ? { ramSectionId: 2, blocks: BLOCKS, startedSections: [3, 4] } : {}));
      }),
      params(RUNS / 5),
    );
  }, TIMEOUT);

  it("mutated streams in random chunkings: parseStream only throws MigrationStreamError, and agrees with parseBuffer", async () => {
    await fc.assert(
      fc.asyncProperty(
        mutatedStreamArb,
        fc.array(frac, { maxLength: 40 }),
        fc.array(fc.boolean(), { maxLength: 8 }),
        fc.integer({ min: 1, max: 8 }),
        optionsArb,
        async (data, cuts, groups, yieldEvery, options) => {
          let wholeRecords: StreamRecord[] = [];
          const streamedRecords: StreamRecord[] = [];
          const whole = check(data.length, () => (wholeRecords = parseBuffer(data, options)));
          const streamed = await checkAsync(data.length, () => drainStream(chunked(data, cuts, groups), options, yieldEvery, streamedRecords));
          if (whole.ok !== streamed.ok || (!whole.ok && !streamed.ok && whole.name !== streamed.name)) stats.asyncDisagreements++;
          // Chunking changes nothing: the same outcome (the same error class), and when the
          // input is accepted the same records.
          expect(streamed, `parseStream in ${cuts.length + 1} pieces vs parseBuffer, ${data.length} bytes`).toEqual(whole);
          if (whole.ok) expect(unbatched(streamedRecords), "the records parseStream yielded (pages one by one)").toEqual(unbatched(wholeRecords));
        },
      ),
      params(RUNS / 4),
    );
  }, TIMEOUT);

  it("regressions: crashes the fuzzer found", () => {
    // 1. A second RAM setup with fewer blocks, then a CONTINUE page (parser.ts setBlocks).
    const twoSetups = encodeRecords([
      ...head(),
      ...ramStart(),
      ...ramPart(batch("pc.bios", [[0, 1]])),
      ...ramStart([{ id: "m0", usedLength: 4096 }]),
      ...ramPart(batch("pc.bios", [[4096, page(1)]], 1, false)),
      ...ramEnd(),
      { type: "eof", offset: 0 },
    ]);
    expect(check(twoSetups.length, () => parseBuffer(twoSetups))).toEqual({ ok: false, name: "UnknownRamBlockError" });
    // 2. An empty-payload COMMAND whose header spans two chunks, the second ending with it (byteQueue.ts copyOut).
    const cmdAtEnd = Buffer.concat([encodeRecords(head()), Buffer.from([0x08, 0x00, 0x05, 0x00, 0x00])]);
    for (let a = 1; a < cmdAtEnd.length; a++) {
      const out = check(cmdAtEnd.length, () => {
        const p = new StreamParser();
        p.push(cmdAtEnd.subarray(0, a));
        p.push(cmdAtEnd.subarray(a));
        p.end();
      });
      expect(out).toEqual({ ok: false, name: "TruncatedStreamError" });
    }
  });

  it("regressions: whole and chunked parsing disagreed", async () => {
    // 1. A device section longer than maxDeviceSectionBytes was refused when it came in
    // pieces (the scan passed the limit) but accepted when its footer was in the same
    // buffer (parser.ts readDevice).
    const big = encodeRecords([...head(), device(3, "apic", Buffer.alloc(6000, 0x11)), { type: "eof", offset: 0 }]);
    const options = { maxDeviceSectionBytes: 4000 };
    expect(check(big.length, () => parseBuffer(big, options))).toEqual({ ok: false, name: "DeviceSectionTooLargeError" });
    for (const step of [1000, 4096, big.length]) {
      const pieces = Array.from({ length: Math.ceil(big.length / step) }, (_, i) => big.subarray(i * step, (i + 1) * step));
      expect(await checkAsync(big.length, () => drainStream(pieces, options, 1)), `in pieces of ${step}`).toEqual({ ok: false, name: "DeviceSectionTooLargeError" });
    }
    // Within the limit it parses, whole or in pieces.
    expect(check(big.length, () => parseBuffer(big, { maxDeviceSectionBytes: 8000 }))).toEqual({ ok: true });
    expect(await checkAsync(big.length, () => drainStream([big.subarray(0, 100), big.subarray(100)], { maxDeviceSectionBytes: 8000 }, 1))).toEqual({ ok: true });
  });

  it("a 4 GiB length field does not allocate 4 GiB", () => {
    const valid = encodeRecords([...head(), cmd({ cmd: "packaged", data: Buffer.alloc(8) }), { type: "eof", offset: 0 }]);
    const bigPackaged = Buffer.from(valid);
    const p = bigPackaged.indexOf(0x08, 8); // the command tag
    bigPackaged.writeUInt32BE(0xffffffff, p + 5);
    const bigVmdesc = Buffer.concat([encodeRecords([...head(), { type: "eof", offset: 0 }]), Buffer.from([0x06, 0xff, 0xff, 0xff, 0xff, 0x7b])]);
    const bigConfig = Buffer.from("5145564d0000000307ffffffff7063", "hex");
    const bigSetup = Buffer.from(encodeRecords([...head(), ...ramStart(), ...ramEnd(), { type: "eof", offset: 0 }]));
    const q = bigSetup.indexOf(Buffer.from("m0"));
    bigSetup.writeUInt32BE(0xffffffff, q + 2);
    for (const data of [bigPackaged, bigVmdesc, bigConfig, bigSetup]) {
      const out = check(data.length, () => parseBuffer(data));
      expect(out.ok).toBe(false);
    }
  });
});
