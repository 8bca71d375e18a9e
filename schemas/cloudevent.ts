/**
 * CloudEvents 1.0 envelopes for gangway. Every message on `gw.>` is one of the event
 * definitions made here: a CloudEvents `type` (versioned, `io.gangway.<family>.<name>.vN`),
 * the subject it travels on, and the zod schema of its data. Structured mode (JSON with
 * `Content-Type: application/cloudevents+json`) for facts and commands; binary mode
 * (attributes in `ce-` headers, raw body) for bulk data such as key batches and manifests.
 *
 * No transforms: the type a handler sees is the type on the wire.
 */
import { z } from "zod";

export const SPECVERSION = "1.0";

/** A token safe inside a NATS subject: no dots, spaces or wildcards. */
export const token = z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, "must be 1-128 of A-Z a-z 0-9 _ -");

/** The attributes every gangway event carries (CloudEvents 1.0 required + optional). */
export const cloudEventAttributes = z.object({
  specversion: z.literal(SPECVERSION),
  id: z.string().min(1).max(256),
  source: z.string().min(1).max(512),
  type: z.string().regex(/^io\.gangway\.[a-z0-9-]+(\.[a-z0-9-]+)*\.v[0-9]+$/, "must be io.gangway.<family>.<name>.v<N>"),
  time: z.iso.datetime({ offset: true }),
  subject: z.string().min(1).max(512).optional(),
  datacontenttype: z.string().optional(),
  dataschema: z.string().optional(),
});
export type CloudEventAttributes = z.infer<typeof cloudEventAttributes>;

export const EventMode = { structured: "structured", binary: "binary" } as const;
export type EventMode = (typeof EventMode)[keyof typeof EventMode];

interface DefinitionBase<Type extends string, Params extends Record<string, string>> {
  /** CloudEvents type, e.g. io.gangway.migration.planned.v1 */
  readonly type: Type;
  /** Family: the dead-letter subject is gw.dlq.<family>. */
  readonly family: string;
  /** Subject for one event; every param is a subject token. */
  subject(params: Params): string;
  /** The subject's template, e.g. "gw.migration.{migrationId}.planned" (for published contracts). */
  readonly template: string;
  /** Subject filter matching every event of this definition (for consumers). */
  readonly filter: string;
  /** The CloudEvents `subject` attribute: what the event is about (migration/VM/host). */
  about(params: Params): string;
  /** The subject tokens the subject is built from, in order (for parsing a subject back). */
  readonly params: readonly string[];
}

export interface StructuredEventDefinition<Type extends string, Data extends z.ZodType, Params extends Record<string, string>>
  extends DefinitionBase<Type, Params> {
  readonly mode: "structured";
  readonly data: Data;
}

/**
 * Binary-mode event: small typed extension attributes travel as `ce-` headers, the body is
 * raw bytes whose layout the definition checks (e.g. count × 24 bytes).
 */
export interface BinaryEventDefinition<Type extends string, Ext extends z.ZodType<Record<string, string | number | boolean>>, Params extends Record<string, string>>
  extends DefinitionBase<Type, Params> {
  readonly mode: "binary";
  readonly extensions: Ext;
  /** Returns a reason when the body does not fit the extensions, else undefined. */
  checkBody(body: Uint8Array, ext: z.infer<Ext>): string | undefined;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a registry holds definitions of every shape
export type AnyEventDefinition = StructuredEventDefinition<string, z.ZodType, any> | BinaryEventDefinition<string, z.ZodType<Record<string, string | number | boolean>>, any>;

/** A structured event as a handler sees it. */
export type StructuredEvent<D extends StructuredEventDefinition<string, z.ZodType, Record<string, string>>> = CloudEventAttributes & {
  type: D["type"];
  data: z.infer<D["data"]>;
};

/** A binary event as a handler sees it. */
export type BinaryEvent<D extends BinaryEventDefinition<string, z.ZodType<Record<string, string | number | boolean>>, Record<string, string>>> = CloudEventAttributes & {
  type: D["type"];
  ext: z.infer<D["extensions"]>;
  data: Uint8Array;
};

export type EventOf<D> = D extends StructuredEventDefinition<string, z.ZodType, Record<string, string>>
  ? StructuredEvent<D>
  : D extends BinaryEventDefinition<string, z.ZodType<Record<string, string | number | boolean>>, Record<string, string>>
    ? BinaryEvent<D>
    : never;

/** Builds the subject from a template like "gw.migration.{migrationId}.planned" (events and services alike). */
export function subjectTemplate<Params extends Record<string, string>>(template: string) {
  const names = [...template.matchAll(/\{([a-zA-Z]+)\}/g)].map((m) => m[1] as string);
  const filter = template.replace(/\{[a-zA-Z]+\}/g, "*");
  const subject = (params: Params) =>
    template.replace(/\{([a-zA-Z]+)\}/g, (_, name: string) => {
      const value = params[name];
      const ok = token.safeParse(value);
      if (!ok.success) throw new TypeError(`subject parameter ${name}=${JSON.stringify(value)}: ${ok.error.issues[0]?.message}`);
      return value as string;
    });
  return { names, filter, subject };
}

export function defineEvent<Type extends string, Data extends z.ZodType, Params extends Record<string, string>>(def: {
  type: Type;
  family: string;
  subject: string;
  data: Data;
  about: (params: Params) => string;
}): StructuredEventDefinition<Type, Data, Params> {
  const t = subjectTemplate<Params>(def.subject);
  return { mode: "structured", type: def.type, family: def.family, data: def.data, subject: t.subject, template: def.subject, filter: t.filter, about: def.about, params: t.names };
}

export function defineBinaryEvent<Type extends string, Ext extends z.ZodType<Record<string, string | number | boolean>>, Params extends Record<string, string>>(def: {
  type: Type;
  family: string;
  subject: string;
  extensions: Ext;
  checkBody: (body: Uint8Array, ext: z.infer<Ext>) => string | undefined;
  about: (params: Params) => string;
}): BinaryEventDefinition<Type, Ext, Params> {
  const t = subjectTemplate<Params>(def.subject);
  return { mode: "binary", type: def.type, family: def.family, extensions: def.extensions, checkBody: def.checkBody, subject: t.subject, template: def.subject, filter: t.filter, about: def.about, params: t.names };
}

/** zod issues as `path: message` lines, the way a reader wants them in a dead letter. */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`).join("; ");
}
