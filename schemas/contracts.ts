/**
 * The published contracts of gangway's events, generated from the definitions (the single
 * source of truth): a JSON Schema per event type (its CloudEvents envelope with its data, or,
 * in binary mode, its `ce-` headers), and an AsyncAPI 3.0 document naming every subject, its
 * parameters and its message. docs/contracts/ holds them as checked in (npm run contracts);
 * a test requires the files to equal what the code generates.
 */
import { z } from "zod";
import { cloudEventAttributes, type AnyEventDefinition } from "./cloudevent.ts";
import { definitionsByType } from "./index.ts";

type JsonSchema = Record<string, unknown>;

/** Where the schemas are published (each event's `dataschema` may name its file). */
export const CONTRACTS_BASE = "https://gangway.dev/contracts/schemas/";

/** The key of a type in the document: io.gangway.migration.planned.v1 → migration.planned.v1 */
const keyOf = (type: string) => type.replace(/^io\.gangway\./, "");

/** The wire shape (input side: coerced header strings, defaults optional). */
const toSchema = (s: z.ZodType): JsonSchema => z.toJSONSchema(s, { io: "input", unrepresentable: "any", target: "draft-2020-12" }) as JsonSchema;

/** The JSON Schema of one event as it travels. */
export function eventSchema(def: AnyEventDefinition): JsonSchema {
  const id = `${CONTRACTS_BASE}${def.type}.json`;
  if (def.mode === "structured") {
    const envelope = toSchema(cloudEventAttributes.extend({ type: z.literal(def.type), data: def.data }));
    return { ...envelope, $id: id, title: def.type, description: `CloudEvents 1.0 structured mode (application/cloudevents+json) on ${def.template}` };
  }
  // Binary mode: the CloudEvents attributes and extensions are `ce-` headers; the body is bytes.
  const { $schema: _inner, ...headers } = toSchema(def.extensions);
  return {
    $schema: "https://json-schema.org/draft/2020-12/schema", $id: id, title: def.type,
    description: `CloudEvents 1.0 binary mode on ${def.template}: ce-specversion, ce-id, ce-source, ce-type, ce-time and ce-subject headers, and the extensions below as ce-<name> headers (URI-encoded text of the values shown); the body is application/octet-stream`,
    type: "object", properties: { headers }, required: ["headers"],
  };
}

/** Every event's schema, by type. */
export function eventSchemas(): Map<string, JsonSchema> {
  return new Map([...definitionsByType.values()].map((d) => [d.type, eventSchema(d)]));
}

/** The AsyncAPI 3.0 document of every subject gangway publishes or obeys. */
export function asyncApiDocument(version: string): JsonSchema {
  const channels: Record<string, unknown> = {};
  const operations: Record<string, unknown> = {};
  const messages: Record<string, unknown> = {};
  for (const def of [...definitionsByType.values()].sort((a, b) => a.type.localeCompare(b.type))) {
    const key = keyOf(def.type);
    const schema = eventSchema(def);
    const { $schema: _drop, ...payload } = schema;
    messages[key] = {
      name: def.type,
      title: def.type,
      ...(def.mode === "structured"
        ? { contentType: "application/cloudevents+json", payload }
        : { contentType: "application/octet-stream", headers: (payload.properties as { headers: JsonSchema }).headers, payload: { type: "string", format: "binary", description: String(payload.description) } }),
    };
    channels[key] = {
      address: def.template,
      ...(def.params.length ? { parameters: Object.fromEntries(def.params.map((p) => [p, { description: `subject token (${p})` }])) } : {}),
      messages: { [key]: { $ref: `#/components/messages/${key}` } },
    };
    // Commands (gw.cmd.…) are what gangway receives; everything else it sends.
    operations[key] = { action: def.template.startsWith("gw.cmd.") ? "receive" : "send", channel: { $ref: `#/channels/${key}` }, messages: [{ $ref: `#/channels/${key}/messages/${key}` }] };
  }
  return {
    asyncapi: "3.0.0",
    info: { title: "gangway events", version, description: "Every fact of a gangway migration, and every command its host agents obey: CloudEvents 1.0 on NATS JetStream subjects gw.>." },
    defaultContentType: "application/cloudevents+json",
    servers: { nats: { host: "localhost:4222", protocol: "nats", description: "any gangway cluster's NATS server (JetStream stream GANGWAY holds gw.>)" } },
    channels,
    operations,
    components: { messages },
  };
}
