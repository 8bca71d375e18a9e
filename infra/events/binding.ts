/**
 * A small CloudEvents binding for NATS (the npm SDK has none). Structured mode: the JSON
 * event is the payload with `Content-Type: application/cloudevents+json` (the released
 * NATS binding). Binary mode: attributes in percent-encoded `ce-` headers, body as payload
 * (the binding's next draft), for bulk data.
 */
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import { randomUUID } from "node:crypto";
import {
  SPECVERSION,
  cloudEventAttributes,
  describeIssues,
  definitionsByType,
  type AnyEventDefinition,
  type CloudEventAttributes,
} from "../../schemas/index.ts";

export const STRUCTURED_CONTENT_TYPE = "application/cloudevents+json";
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** A decoded, validated event: structured (`data`) or binary (`ext` + raw `data`). */
export type DecodedEvent =
  | (CloudEventAttributes & { mode: "structured"; data: unknown })
  | (CloudEventAttributes & { mode: "binary"; ext: Record<string, unknown>; data: Uint8Array });

export type DecodeResult =
  | { ok: true; event: DecodedEvent; definition: AnyEventDefinition }
  | { ok: false; reason: string; family: string; id?: string };

export interface EncodedMessage {
  subject: string;
  payload: Uint8Array;
  headers: MsgHdrs;
  id: string;
}

export interface EncodeOptions {
  /** Event id (the idempotency key); a random UUID when unset. */
  id?: string;
  /** CloudEvents source: the host or function that emits. */
  source: string;
  time?: Date;
}

/** Encodes a structured event after validating its data against the definition. */
export function encodeStructured(def: AnyEventDefinition & { mode: "structured" }, params: Record<string, string>, data: unknown, opts: EncodeOptions): EncodedMessage {
  const parsed = def.data.safeParse(data);
  if (!parsed.success) throw new TypeError(`${def.type}: ${describeIssues(parsed.error)}`);
  const id = opts.id ?? randomUUID();
  const event = {
    specversion: SPECVERSION,
    id,
    source: opts.source,
    type: def.type,
    time: (opts.time ?? new Date()).toISOString(),
    subject: def.about(params),
    datacontenttype: "application/json",
    data: parsed.data,
  };
  const h = natsHeaders();
  h.set("Content-Type", STRUCTURED_CONTENT_TYPE);
  return { subject: def.subject(params), payload: enc.encode(JSON.stringify(event)), headers: h, id };
}

/** Encodes a binary-mode event: extensions become `ce-` headers, the body is the payload. */
export function encodeBinary(def: AnyEventDefinition & { mode: "binary" }, params: Record<string, string>, ext: Record<string, string | number | boolean>, body: Uint8Array, opts: EncodeOptions): EncodedMessage {
  const parsed = def.extensions.safeParse(ext);
  if (!parsed.success) throw new TypeError(`${def.type}: ${describeIssues(parsed.error)}`);
  const bad = def.checkBody(body, parsed.data);
  if (bad) throw new TypeError(`${def.type}: ${bad}`);
  const id = opts.id ?? randomUUID();
  const h = natsHeaders();
  h.set("ce-specversion", SPECVERSION);
  h.set("ce-id", encodeURIComponent(id));
  h.set("ce-source", encodeURIComponent(opts.source));
  h.set("ce-type", def.type);
  h.set("ce-time", (opts.time ?? new Date()).toISOString());
  h.set("ce-subject", encodeURIComponent(def.about(params)));
  h.set("Content-Type", "application/octet-stream");
  for (const [k, v] of Object.entries(ext)) h.set(`ce-${k.toLowerCase()}`, encodeURIComponent(String(v)));
  return { subject: def.subject(params), payload: body, headers: h, id };
}

/** The family a subject belongs to (gw.<family>… or gw.cmd.<family>…), for dead letters. */
export function familyOfSubject(subject: string): string {
  const parts = subject.split(".");
  const fam = parts[1] === "cmd" ? parts[2] : parts[1];
  return fam && /^[A-Za-z0-9_-]{1,64}$/.test(fam) ? fam : "unknown";
}

function headerValue(h: MsgHdrs | undefined, key: string): string | undefined {
  if (!h || !h.has(key)) return undefined;
  return h.get(key);
}

/** Extension names as declared by a binary definition (CloudEvents lowercases them on the wire). */
function extensionNames(def: AnyEventDefinition & { mode: "binary" }): string[] {
  const shape = (def.extensions as unknown as { shape?: Record<string, unknown> }).shape;
  return shape ? Object.keys(shape) : [];
}

/**
 * Decodes and validates a message: envelope, known type (unknown types and versions are
 * rejected), subject matching the definition, and data (or extensions and body).
 * Never throws: a failure is a reason for the dead-letter subject.
 */
export function decodeMessage(subject: string, payload: Uint8Array, h: MsgHdrs | undefined): DecodeResult {
  const family = familyOfSubject(subject);
  const fail = (reason: string, id?: string): DecodeResult => ({ ok: false, reason, family, ...(id ? { id } : {}) });
  const binary = headerValue(h, "ce-specversion") !== undefined;

  let attrs: Record<string, unknown>;
  let data: unknown;
  if (binary) {
    attrs = {};
    for (const k of ["specversion", "id", "source", "type", "time", "subject", "datacontenttype"]) {
      const v = headerValue(h, `ce-${k}`);
      if (v !== undefined) {
        try {
          attrs[k] = decodeURIComponent(v);
        } catch {
          return fail(`header ce-${k} is not valid percent-encoding`);
        }
      }
    }
  } else {
    let text: string;
    try {
      text = dec.decode(payload);
    } catch {
      return fail("payload is not UTF-8 (and no ce- headers: not a binary-mode CloudEvent)");
    }
    let parsedJson: unknown;
    try {
      parsedJson = JSON.parse(text);
    } catch (err) {
      return fail(`payload is not JSON: ${(err as Error).message}`);
    }
    if (typeof parsedJson !== "object" || parsedJson === null || Array.isArray(parsedJson)) return fail("payload is not a JSON object");
    attrs = parsedJson as Record<string, unknown>;
    data = attrs.data;
  }

  const env = cloudEventAttributes.safeParse(attrs);
  const id = typeof attrs.id === "string" ? attrs.id : undefined;
  if (!env.success) return fail(`not a CloudEvent: ${describeIssues(env.error)}`, id);
  const def = definitionsByType.get(env.data.type);
  if (!def) return fail(`unknown event type ${env.data.type} (unknown name or version)`, id);
  if (!subjectMatches(def.filter, subject)) return fail(`event type ${def.type} does not travel on ${subject} (expected ${def.filter})`, id);

  if (def.mode === "structured") {
    if (binary) return fail(`${def.type} must be sent in structured mode`, id);
    const d = def.data.safeParse(data);
    if (!d.success) return fail(`${def.type} data: ${describeIssues(d.error)}`, id);
    const foreign = namesOtherThanSubject(def, subject, d.data);
    if (foreign) return fail(foreign, id);
    return { ok: true, definition: def, event: { ...env.data, mode: "structured", data: d.data } };
  }
  if (!binary) return fail(`${def.type} must be sent in binary mode (ce- headers)`, id);
  const rawExt: Record<string, string> = {};
  for (const name of extensionNames(def)) {
    const v = headerValue(h, `ce-${name.toLowerCase()}`);
    if (v !== undefined) {
      try {
        rawExt[name] = decodeURIComponent(v);
      } catch {
        return fail(`header ce-${name.toLowerCase()} is not valid percent-encoding`, id);
      }
    }
  }
  const ext = def.extensions.safeParse(rawExt);
  if (!ext.success) return fail(`${def.type} extensions: ${describeIssues(ext.error)}`, id);
  const bad = def.checkBody(payload, ext.data);
  if (bad) return fail(`${def.type} body: ${bad}`, id);
  const foreign = namesOtherThanSubject(def, subject, ext.data);
  if (foreign) return fail(foreign, id);
  return { ok: true, definition: def, event: { ...env.data, mode: "binary", ext: ext.data, data: payload } };
}

/**
 * An event whose data names another migration, VM or host than the subject it travels on
 * (gw.commit.A.abort carrying migrationId B): a consumer filtering on the subject would act
 * on something it does not follow. Returns why, or undefined when every subject parameter
 * that is also a field agrees with its token.
 */
function namesOtherThanSubject(def: AnyEventDefinition, subject: string, fields: unknown): string | undefined {
  if (typeof fields !== "object" || fields === null) return undefined;
  const record = fields as Record<string, unknown>;
  const tokens = subject.split(".");
  let n = 0;
  const f = def.filter.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] !== "*") continue;
    const name = def.params[n++];
    if (name === undefined) break;
    const v = record[name];
    if ((typeof v === "string" || typeof v === "number") && String(v) !== tokens[i]) return `${def.type} names ${name} ${String(v).slice(0, 64)} but travels on ${subject}`;
  }
  return undefined;
}

/** NATS subject matching of a filter with `*` and `>` wildcards. */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (f[i] !== "*" && f[i] !== s[i]) return false;
  }
  return f.length === s.length;
}
