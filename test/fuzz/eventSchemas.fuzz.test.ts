/**
 * Fuzzing every event schema through the CloudEvents binding (infra/events/binding.ts)
 * with fast-check.
 *
 * Rules: decodeMessage(subject, payload, headers) never throws, whatever the subject,
 * payload and headers: it returns {ok:false, reason} (a non-empty string for the dead
 * letter). Whenever it returns ok, re-encoding the decoded event (encodeStructured /
 * encodeBinary, params read back from the subject) and decoding again gives the same
 * data (and extensions and body for binary mode). An input the test itself knows to be
 * invalid (CloudEvents attributes missing or wrong, a type no definition has, a subject the
 * type does not travel on, data or extensions its schema refuses) must be rejected: not
 * merely survive. Subjects are mostly the ones the event's own names give, so valid
 * events of every definition are reached.
 *
 * Inputs: for every definition in schemas/index.ts `definitionsByType`, data generated
 * from its zod schema (via z.toJSONSchema), then fields removed, retyped or replaced;
 * envelopes with attributes missing or wrong; random subjects; random ce- headers; binary
 * bodies of random sizes; plus raw random payloads.
 *
 * Runs:   npx vitest run test/fuzz/eventSchemas.fuzz.test.ts
 * Longer: FUZZ_RUNS=200000 npx vitest run test/fuzz/eventSchemas.fuzz.test.ts
 *         (FUZZ_TIMEOUT_MS raises the vitest time-out; by default it scales with the runs)
 * Replay: FUZZ_SEED=<seed printed by the test>.
 */
import { afterAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { z } from "zod";
import { headers, type MsgHdrs } from "@nats-io/transport-node";
import { decodeMessage, encodeBinary, encodeStructured, type DecodeResult } from "../../infra/events/binding.ts";
import { definitionsByType, type AnyEventDefinition } from "../../schemas/index.ts";

const RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 8000));
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const TIMEOUT = Number(process.env.FUZZ_TIMEOUT_MS ?? Math.max(60_000, RUNS * 20));

const stats = { inputs: 0, ok: 0, okBinary: 0, rejected: 0, crashes: 0, roundTrips: 0 };
const enc = new TextEncoder();
const dec = new TextDecoder();
const defs = [...definitionsByType.values()];

// --- JSON Schema (from zod) to fast-check ----------------------------------------------

type JS = {
  type?: string | string[];
  properties?: Record<string, JS>;
  required?: string[];
  items?: JS;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  multipleOf?: number;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JS[];
  oneOf?: JS[];
  format?: string;
  additionalProperties?: JS | boolean;
};

function arbOf(s: JS, depth = 0): fc.Arbitrary<unknown> {
  if (s.const !== undefined) return fc.constant(s.const);
  if (s.enum) return fc.constantFrom(...s.enum);
  const alts = s.anyOf ?? s.oneOf;
  if (alts) return fc.oneof(...alts.map((a) => arbOf(a, depth)));
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  switch (type) {
    case "object": {
      const props = s.properties ?? {};
      const req = new Set(s.required ?? []);
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, v] of Object.entries(props)) model[k] = arbOf(v, depth + 1);
      const rec = fc.record(model, { requiredKeys: Object.keys(props).filter((k) => req.has(k)) });
      if (Object.keys(props).length > 0 || depth > 2) return rec;
      return fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), { maxKeys: 3 });
    }
    case "array":
      return fc.array(s.items ? arbOf(s.items, depth + 1) : fc.jsonValue({ maxDepth: 1 }), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 4, Math.max(4, s.minItems ?? 0)) });
    case "string": {
      if (s.format === "date-time") return fc.date({ noInvalidDate: true, min: new Date(0), max: new Date(4e12) }).map((d) => d.toISOString());
      const min = s.minLength ?? 0;
      const max = Math.min(s.maxLength ?? 40, Math.max(min, 40));
      if (s.pattern) return fc.stringMatching(new RegExp(s.pattern)).filter((x) => x.length >= min && x.length <= (s.maxLength ?? Infinity));
      return fc.string({ minLength: min, maxLength: max, unit: fc.constantFrom("a", "Z", "0", "-", "_", "/", " ", "é", "\u{1F600}", "%", ".") });
    }
    case "integer":
    case "number": {
      const min = s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + (type === "integer" ? 1 : 1e-9) : -1e6);
      const max = Math.min(s.maximum ?? 1e12, s.exclusiveMaximum ?? Infinity);
      if (s.multipleOf) return fc.integer({ min: Math.ceil(min / s.multipleOf), max: Math.floor(Math.min(max, 1e9) / s.multipleOf) }).map((n) => n * s.multipleOf!);
      if (type === "integer") return fc.integer({ min: Math.max(min, Number.MIN_SAFE_INTEGER), max: Math.min(max, Number.MAX_SAFE_INTEGER) });
      return fc.double({ min, max, noNaN: true, noDefaultInfinity: true });
    }
    case "boolean":
      return fc.boolean();
    case "null":
      return fc.constant(null);
    default:
      return fc.jsonValue({ maxDepth: 1 });
  }
}

const schemaArbs = new Map<AnyEventDefinition, fc.Arbitrary<Record<string, unknown>>>();
function validishData(def: AnyEventDefinition): fc.Arbitrary<Record<string, unknown>> {
  let a = schemaArbs.get(def);
  if (!a) {
    const js = z.toJSONSchema(def.mode === "structured" ? def.data : def.extensions, { io: "input", unrepresentable: "any" }) as JS;
    a = arbOf(js) as fc.Arbitrary<Record<string, unknown>>;
    schemaArbs.set(def, a);
  }
  return a;
}

// --- mutations --------------------------------------------------------------------------

const weird = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom<unknown>(null, "", -1, 0, -0, 1.5, 1e308, -1e308, 2 ** 53, "NaN", "1e999", [], {}, true, "\u0000", "\ud800", "%", "%zz", "a".repeat(3000)),
);
/** Paths of every value inside x. */
function paths(x: unknown, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (x && typeof x === "object") for (const [k, v] of Object.entries(x)) paths(v, [...prefix, Array.isArray(x) ? Number(k) : k], out);
  return out;
}
function setAt(x: unknown, path: (string | number)[], f: (old: unknown) => unknown | typeof REMOVE): unknown {
  if (path.length === 0) {
    const r = f(x);
    return r === REMOVE ? undefined : r;
  }
  const copy: Record<string | number, unknown> | unknown[] = Array.isArray(x) ? [...x] : { ...(x as Record<string, unknown>) };
  const [k, ...rest] = path;
  const child = setAt((copy as Record<string | number, unknown>)[k!], rest, f);
  if (rest.length === 0 && f === removeFn) {
    if (Array.isArray(copy)) copy.splice(k as number, 1);
    else delete (copy as Record<string, unknown>)[k!];
  } else (copy as Record<string | number, unknown>)[k!] = child;
  return copy;
}
const REMOVE = Symbol("remove");
const removeFn = () => REMOVE;
const retype = (v: unknown): unknown =>
  typeof v === "number" ? String(v) : typeof v === "string" ? (Number.isFinite(Number(v)) ? Number(v) : v.length) : typeof v === "boolean" ? String(v) : Array.isArray(v) ? v[0] : v === null ? 0 : [v];
const mutArb: fc.Arbitrary<{ pick: number; how: number; value: unknown }> = fc.record({ pick: fc.nat(), how: fc.nat({ max: 3 }), value: weird });
function mutate(x: unknown, m: { pick: number; how: number; value: unknown }): unknown {
  const ps = paths(x);
  const p = ps[m.pick % ps.length]!;
  switch (m.how) {
    case 0:
      return p.length ? setAt(x, p, removeFn) : x;
    case 1:
      return setAt(x, p, retype);
    case 2:
      return setAt(x, p, () => m.value);
    default: {
      // an extra field
      if (x && typeof x === "object" && !Array.isArray(x)) return { ...(x as object), [`x${m.pick % 7}`]: m.value };
      return m.value;
    }
  }
}

// --- subjects, envelopes, headers ----------------------------------------------------------

const tokenArb = fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/);
/** The definition's subject with random tokens, or a random / broken subject. */
const subjectFor = (def: AnyEventDefinition) =>
  fc.oneof(
    { weight: 6, arbitrary: fc.array(tokenArb, { minLength: def.params.length, maxLength: def.params.length }).map((ts) => def.filter.split(".").map((t) => (t === "*" ? ts.shift()! : t)).join(".")) },
    { weight: 1, arbitrary: fc.constantFrom(...defs).chain((d) => fc.array(tokenArb, { minLength: d.params.length, maxLength: d.params.length }).map((ts) => d.filter.split(".").map((t) => (t === "*" ? ts.shift()! : t)).join("."))) },
    { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 1, arbitrary: fc.array(fc.oneof(tokenArb, fc.constantFrom("gw", "cmd", "*", ">", "", " ")), { maxLength: 7 }).map((a) => a.join(".")) },
  );

/**
 * The subject with each wildcard token replaced by the field of the same name in `fields`
 * (an event must travel on the subject its own names give: migrationId, vm, host…), where
 * that field is a usable token; others stay as they are. Subjects that do not match the
 * definition's filter are returned unchanged.
 */
function alignSubject(def: AnyEventDefinition, subject: string, fields: unknown): string {
  if (!fields || typeof fields !== "object" || !travelsOn(def.filter, subject)) return subject;
  const f = def.filter.split(".");
  const s = subject.split(".");
  let n = 0;
  for (let i = 0; i < f.length; i++) {
    if (f[i] !== "*") continue;
    const v = (fields as Record<string, unknown>)[def.params[n++] ?? ""];
    if ((typeof v === "string" || typeof v === "number") && /^[^.\s*>]+$/.test(String(v))) s[i] = String(v);
  }
  return s.join(".");
}

/** Params of a definition read back from a subject that matches its filter. */
function paramsOf(def: AnyEventDefinition, subject: string): Record<string, string> {
  const f = def.filter.split(".");
  const s = subject.split(".");
  const values = f.flatMap((t, i) => (t === "*" ? [s[i]!] : []));
  return Object.fromEntries(def.params.map((n, i) => [n, values[i]!]));
}

/** A valid envelope most of the time, else one with attributes missing or wrong. */
const envelopeArb = (def: AnyEventDefinition) =>
  fc.oneof(
    {
      weight: 3,
      arbitrary: fc.record({
        specversion: fc.constant<unknown>("1.0"),
        id: fc.oneof(fc.uuid(), fc.string({ minLength: 1, maxLength: 20 })),
        source: fc.string({ minLength: 1, maxLength: 20 }),
        type: fc.constant<unknown>(def.type),
        time: fc.date({ noInvalidDate: true, min: new Date(0), max: new Date(4e12) }).map((d) => d.toISOString()),
        subject: fc.option(fc.string({ minLength: 1, maxLength: 20 }), { nil: undefined }),
        datacontenttype: fc.option(fc.constant("application/json"), { nil: undefined }),
      }),
    },
    { weight: 1, arbitrary: badEnvelopeArb(def) },
  );
const badEnvelopeArb = (def: AnyEventDefinition) =>
  fc.record({
    specversion: fc.constantFrom<unknown>("1.0", "1.0", "1.0", "0.3", 1, undefined),
    id: fc.oneof(fc.uuid(), fc.string({ maxLength: 20 }), fc.constantFrom<unknown>(undefined, "", 5, "x".repeat(300))),
    source: fc.oneof(fc.constantFrom("host/a", "fn/x y"), fc.string({ maxLength: 20 }), fc.constantFrom<unknown>(undefined, "")),
    type: fc.oneof({ weight: 8, arbitrary: fc.constant<unknown>(def.type) }, fc.constantFrom(...defs.map((d) => d.type)), fc.constantFrom<unknown>("io.gangway.migration.planned.v9", "io.gangway.x", undefined, 3)),
    time: fc.oneof({ weight: 6, arbitrary: fc.date({ noInvalidDate: true, min: new Date(0), max: new Date(4e12) }).map((d) => d.toISOString()) }, fc.constantFrom<unknown>("yesterday", "2024-01-01T00:00:00+02:00", undefined, 0)),
    subject: fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
    datacontenttype: fc.option(fc.constantFrom("application/json", "text/plain"), { nil: undefined }),
  });

function natsHeaders(entries: [string, string][]): MsgHdrs {
  const h = headers();
  for (const [k, v] of entries) {
    try {
      h.set(k, v);
    } catch {
      // invalid header names/values cannot be on the wire; skip them
    }
  }
  return h;
}

const headerValueArb = fc.oneof(fc.string({ maxLength: 24 }), fc.constantFrom("%", "%E0%A4%A", "%FF", "%ED%A0%80", "-1", "1e3", "0x10", "true", "false", "", " 2 ", "NaN", "Infinity", "1.5", "9007199254740993"));

/** Body bytes: lengths near count × record sizes, bytes favouring valid kinds/status/shards. */
const bodyArb = (count: number) =>
  fc.oneof(
    fc.constantFrom(16, 17, 24, 26).chain((size) => fc.uint8Array({ minLength: count * size, maxLength: count * size })).map((b) => b.map((x) => (x & 0x80 ? x : x & 1))),
    fc.constantFrom(16, 17, 24, 26).chain((size) => fc.array(fc.constantFrom(0, 1, 2, 0x40, 0x80, 0xc0, 0xff), { minLength: count * size, maxLength: count * size })).map((a) => Uint8Array.from(a)),
    fc.uint8Array({ maxLength: 600 }),
  );

// --- the oracle --------------------------------------------------------------------------

function decode(subject: string, payload: Uint8Array, h: MsgHdrs | undefined): DecodeResult {
  stats.inputs++;
  let r: DecodeResult;
  try {
    r = decodeMessage(subject, payload, h);
  } catch (err) {
    stats.crashes++;
    throw new Error(`decodeMessage threw for subject ${JSON.stringify(subject)}: ${(err as Error).stack}`);
  }
  if (r.ok) {
    stats.ok++;
    if (r.event.mode === "binary") stats.okBinary++;
  }
  else {
    stats.rejected++;
    expect(typeof r.reason).toBe("string");
    expect(r.reason.length).toBeGreaterThan(0);
    expect(typeof r.family).toBe("string");
  }
  return r;
}

/** When decode said ok: encode the decoded event again, decode it, and compare. */
function roundTrip(subject: string, r: DecodeResult & { ok: true }): void {
  const def = r.definition;
  const ev = r.event;
  const params = paramsOf(def, subject);
  const opts = { id: ev.id, source: ev.source, time: new Date(ev.time) };
  let again: DecodeResult;
  if (def.mode === "structured" && ev.mode === "structured") {
    const msg = encodeStructured(def, params, ev.data, opts);
    expect(msg.subject).toBe(subject);
    again = decode(msg.subject, msg.payload, msg.headers);
    if (!again.ok) throw new Error(`round trip of ${def.type} rejected: ${again.reason}`);
    // JSON carries no -0: compare as JSON
    expect(again.event.mode === "structured" && JSON.stringify(again.event.data)).toBe(JSON.stringify(ev.data));
  } else if (def.mode === "binary" && ev.mode === "binary") {
    const msg = encodeBinary(def, params, ev.ext as Record<string, string | number | boolean>, ev.data, opts);
    expect(msg.subject).toBe(subject);
    again = decode(msg.subject, msg.payload, msg.headers);
    if (!again.ok) throw new Error(`round trip of ${def.type} rejected: ${again.reason}`);
    if (again.event.mode !== "binary") throw new Error("binary event came back structured");
    expect(again.event.ext).toEqual(ev.ext);
    expect(Buffer.from(again.event.data).equals(Buffer.from(ev.data))).toBe(true);
  } else throw new Error(`${def.type}: mode ${ev.mode} does not match the definition's ${def.mode}`);
  expect(again.event.id).toBe(ev.id);
  expect(again.event.type).toBe(ev.type);
  expect(again.event.source).toBe(ev.source);
  stats.roundTrips++;
}

// --- what must be rejected -----------------------------------------------------------------
// The test's own reading of an input, independent of the binding's code path: reasons an
// event is certainly invalid (the CloudEvents attributes every event needs, a type no
// definition has, a subject its type does not travel on, data or extensions that fail the
// type's own schema). Any of them and decode must say not ok.

const definedType = (t: unknown) => (typeof t === "string" ? definitionsByType.get(t) : undefined);
function travelsOn(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  if (f.at(-1) === ">") return s.length >= f.length && f.slice(0, -1).every((t, i) => t === "*" ? s[i] !== "" : t === s[i]);
  return f.length === s.length && f.every((t, i) => (t === "*" ? s[i] !== "" : t === s[i]));
}
/** Why these attributes cannot be a valid event (undefined: maybe valid); and its definition. */
function attributesInvalid(subject: string, a: Record<string, unknown>): string | undefined {
  if (a.specversion !== "1.0") return `specversion ${JSON.stringify(a.specversion)}`;
  if (typeof a.id !== "string" || a.id.length === 0 || a.id.length > 256) return `id ${JSON.stringify(a.id)}`;
  if (typeof a.source !== "string" || a.source.length === 0 || a.source.length > 512) return `source ${JSON.stringify(a.source)}`;
  if (typeof a.time !== "string" || Number.isNaN(Date.parse(a.time))) return `time ${JSON.stringify(a.time)}`;
  const def = definedType(a.type);
  if (!def) return `type ${JSON.stringify(a.type)} of no definition`;
  if (!travelsOn(def.filter, subject)) return `${def.type} does not travel on ${JSON.stringify(subject)}`;
  return undefined;
}
/** Why a structured message (JSON text on a subject, no ce- headers) must be rejected. */
function structuredInvalid(subject: string, text: string): string | undefined {
  let e: unknown;
  try {
    e = JSON.parse(text);
  } catch {
    return "not JSON";
  }
  if (typeof e !== "object" || e === null || Array.isArray(e)) return "not a JSON object";
  const a = e as Record<string, unknown>;
  const bad = attributesInvalid(subject, a);
  if (bad) return bad;
  const def = definedType(a.type)!;
  if (def.mode !== "structured") return `${def.type} is binary-mode, sent structured`;
  const d = def.data.safeParse(a.data);
  if (!d.success) return `data fails the ${def.type} schema: ${d.error.issues[0]?.message}`;
  return undefined;
}

/** Inputs the oracle said must be rejected, and were. */
const mustReject = { structured: 0, binary: 0 };
function expectRejected(r: DecodeResult, why: string | undefined, kind: keyof typeof mustReject): void {
  if (why === undefined) return;
  expect(r.ok, `accepted although ${why}`).toBe(false);
  mustReject[kind]++;
}

const params = <T>(runs: number): fc.Parameters<T> => ({ seed: SEED, numRuns: Math.max(1, Math.round(runs)), endOnFailure: true });

/** A structured message: envelope + data (maybe mutated), as JSON, on a subject. */
const structuredMsgArb = fc.constantFrom(...defs).chain((def) =>
  fc.record({
    def: fc.constant(def),
    subject: subjectFor(def),
    aligned: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    env: envelopeArb(def),
    data: validishData(def),
    muts: fc.oneof({ weight: 1, arbitrary: fc.constant([]) }, { weight: 2, arbitrary: fc.array(mutArb, { minLength: 1, maxLength: 3 }) }),
    envMuts: fc.oneof({ weight: 4, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(mutArb, { minLength: 1, maxLength: 2 }) }),
    withHeader: fc.boolean(),
    tail: fc.oneof({ weight: 8, arbitrary: fc.constant("") }, { weight: 1, arbitrary: fc.constantFrom(" ", "x", "}", "\u0000") }),
  }),
);

/** A binary-mode message: ce- headers from envelope + extensions, and a body. */
const binaryDefs = defs.filter((d) => d.mode === "binary");
const binaryMsgArb = fc.constantFrom(...binaryDefs).chain((def) =>
  fc.tuple(validishData(def), fc.integer({ min: 0, max: 8 }), fc.nat({ max: 3 })).map(([e, count, shard]) => ({ ...e, count, ...("shard" in e ? { shard } : {}) })).chain((ext) =>
    fc.record({
      def: fc.constant(def),
      subject: subjectFor(def),
      aligned: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      env: envelopeArb(def),
      ext: fc.oneof({ weight: 2, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(mutArb, { minLength: 1, maxLength: 2 }) }).map((ms) => ms.reduce<unknown>((x, m) => mutate(x, m), ext)),
      body: bodyArb(ext.count).map((b) => (typeof ext.shard === "number" && b.length % 16 === 0 ? b.map((x, i) => (i % 16 === 0 ? (ext.shard as number) << 6 : x)) : b)),
      extra: fc.oneof({ weight: 2, arbitrary: fc.constant<[string, string][]>([]) }, fc.array(fc.tuple(fc.oneof(fc.constantFrom("ce-specversion", "ce-id", "ce-type", "ce-time", "ce-count", "ce-final", "ce-shard", "Content-Type"), fc.string({ maxLength: 12 }).map((s) => `ce-${s}`)), headerValueArb), { minLength: 1, maxLength: 3 })),
      dropMutated: fc.boolean(),
    }),
  ),
);

/**
 * Why a binary-mode message must be rejected, read from the headers as they are on the
 * wire (a header the generator could not set is simply absent): its attributes, or its
 * extensions against the definition's schema (when the ext headers are exactly the
 * generated values, percent-encoded, and none was added or overridden).
 */
function binaryInvalid(subject: string, h: MsgHdrs, def: AnyEventDefinition, ext: unknown): string | undefined {
  if (!h.has("ce-specversion")) return undefined; // not read as binary-mode at all
  const a: Record<string, unknown> = {};
  for (const k of ["specversion", "id", "source", "type", "time"]) {
    if (!h.has(`ce-${k}`)) continue;
    try {
      a[k] = decodeURIComponent(h.get(`ce-${k}`));
    } catch {
      return `ce-${k} is not percent-encoding`;
    }
  }
  const bad = attributesInvalid(subject, a);
  if (bad) return bad;
  const d = definedType(a.type)!;
  if (d.mode !== "binary") return `${d.type} is structured, sent in binary mode`;
  if (d !== def || !ext || typeof ext !== "object") return undefined;
  const raw: Record<string, string> = {};
  for (const name of Object.keys((d.extensions as unknown as { shape: Record<string, unknown> }).shape)) {
    const v = (ext as Record<string, unknown>)[name];
    const onWire = h.has(`ce-${name.toLowerCase()}`) ? h.get(`ce-${name.toLowerCase()}`) : undefined;
    if (v === undefined) {
      if (onWire !== undefined) return undefined; // an extra header supplied it
      continue;
    }
    if (onWire !== encodeURIComponentSafe(str(v))) return undefined; // sent raw, or overridden
    raw[name] = str(v);
  }
  const e = d.extensions.safeParse(raw);
  if (!e.success) return `extensions fail the ${d.type} schema: ${e.error.issues[0]?.message}`;
  return undefined;
}

describe("fuzz: event schemas and the CloudEvents binding", () => {
  console.log(`fuzz: event schemas: seed ${SEED} (replay with FUZZ_SEED=${SEED}), FUZZ_RUNS=${RUNS}, ${defs.length} definitions`);
  afterAll(() => {
    console.log(`fuzz: event schemas: ${stats.inputs} inputs, ${stats.rejected} rejected (${mustReject.structured} structured and ${mustReject.binary} binary-mode ones known invalid by the test), ${stats.ok} ok (${stats.okBinary} binary-mode; ${stats.roundTrips} round trips checked), ${stats.crashes} crashes (seed ${SEED})`);
  });

  it("structured events from every schema, mutated: decode never throws; invalid ones are rejected; ok events round-trip", () => {
    fc.assert(
      fc.property(structuredMsgArb, (m) => {
        let data: unknown = m.data;
        for (const mu of m.muts) data = mutate(data, mu);
        let event: unknown = { ...m.env, data };
        for (const mu of m.envMuts) event = mutate(event, mu);
        const text = JSON.stringify(event) ?? "null";
        const h = m.withHeader ? natsHeaders([["Content-Type", "application/cloudevents+json"]]) : undefined;
        // Mostly on the subject the (unmutated) data names, so valid events get through.
        const subject = m.aligned ? alignSubject(m.def, m.subject, m.data) : m.subject;
        const r = decode(subject, enc.encode(text + m.tail), h);
        expectRejected(r, structuredInvalid(subject, text + m.tail), "structured");
        if (r.ok) roundTrip(subject, r);
      }),
      params(RUNS),
    );
    // The oracle is not idle: most mutations make an event its schema refuses.
    expect(mustReject.structured, "structured inputs known invalid (each rejected)").toBeGreaterThan(0.2 * RUNS);
  }, TIMEOUT);

  it("binary-mode events with random ce- headers and bodies: decode never throws; invalid ones are rejected; ok events round-trip", () => {
    fc.assert(
      fc.property(binaryMsgArb, (m) => {
        const entries: [string, string][] = [];
        for (const [k, v] of Object.entries(m.env)) if (v !== undefined) entries.push([`ce-${k}`, encodeURIComponentSafe(str(v))]);
        if (m.ext && typeof m.ext === "object") for (const [k, v] of Object.entries(m.ext)) if (v !== undefined) entries.push([`ce-${k.toLowerCase()}`, typeof v === "string" && !m.dropMutated ? v : encodeURIComponentSafe(str(v))]);
        entries.push(...m.extra);
        const h = natsHeaders(entries);
        const subject = m.aligned ? alignSubject(m.def, m.subject, m.ext) : m.subject;
        const r = decode(subject, m.body, h);
        expectRejected(r, binaryInvalid(subject, h, m.def, m.ext), "binary");
        if (r.ok) roundTrip(subject, r);
      }),
      params(RUNS / 2),
    );
    expect(mustReject.binary, "binary-mode inputs known invalid (each rejected)").toBeGreaterThan(0.1 * RUNS);
  }, TIMEOUT);

  it("random subjects, payloads and headers: decode never throws", () => {
    const headerEntries = fc.array(fc.tuple(fc.oneof(fc.constantFrom("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "Content-Type"), fc.string({ maxLength: 10 })), headerValueArb), { maxLength: 6 });
    fc.assert(
      fc.property(
        fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom(...defs).map((d) => d.filter.replaceAll("*", "x"))),
        fc.oneof(fc.uint8Array({ maxLength: 512 }), fc.jsonValue({ maxDepth: 4 }).map((j) => enc.encode(JSON.stringify(j) ?? "")), fc.constant(enc.encode("[".repeat(20000)))),
        fc.option(headerEntries, { nil: undefined }),
        (subject, payload, entries) => {
          const r = decode(subject, payload, entries ? natsHeaders(entries) : undefined);
          if (r.ok) roundTrip(subject, r);
        },
      ),
      params(RUNS / 2),
    );
  }, TIMEOUT);

  it("the generators reach valid events of most definitions", () => {
    // A fuzzer whose inputs never pass validation tests only the first check: make sure
    // unmutated data from the schemas decodes for most definitions.
    let okDefs = 0;
    for (const def of defs.filter((d) => d.mode === "structured")) {
      const samples = fc.sample(fc.tuple(validishData(def), fc.array(tokenArb, { minLength: def.params.length, maxLength: def.params.length })), { seed: SEED, numRuns: 20 });
      const ok = samples.some(([data, ts]) => {
        const subject = alignSubject(def, def.filter.split(".").map((t) => (t === "*" ? ts.shift()! : t)).join("."), data);
        const ev = { specversion: "1.0", id: "e1", source: "s", type: def.type, time: new Date().toISOString(), data };
        const r = decode(subject, enc.encode(JSON.stringify(ev)), undefined);
        if (r.ok) roundTrip(subject, r);
        return r.ok;
      });
      if (ok) okDefs++;
    }
    console.log(`fuzz: event schemas: ${okDefs}/${defs.filter((d) => d.mode === "structured").length} structured definitions reached with valid data`);
    expect(okDefs).toBeGreaterThan(defs.filter((d) => d.mode === "structured").length * 0.7);
  });
});

/** String(v) for any JSON-ish value (fast-check builds objects without a prototype). */
function str(v: unknown): string {
  return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
}

function encodeURIComponentSafe(s: string): string {
  try {
    return encodeURIComponent(s);
  } catch {
    return s;
  }
}

void dec;
