/**
 * The published event contracts match the code: docs/contracts/ is what schemas/contracts.ts
 * generates (run `npm run contracts` after a schema change), the AsyncAPI document validates
 * with the AsyncAPI parser, and real encoded events validate against their JSON Schemas.
 */
import { describe, expect, it } from "vitest";
import { readdir, readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { asyncApiDocument, eventSchema, eventSchemas } from "../../schemas/contracts.ts";
import { encodeStructured } from "../../infra/events/binding.ts";
import { definitionsByType, migrationRequested } from "../../schemas/index.ts";

const dir = "docs/contracts";
const version = (JSON.parse(await readFile("package.json", "utf8")) as { version: string }).version;

describe("published event contracts", () => {
  it("docs/contracts holds exactly what the code generates (npm run contracts)", async () => {
    expect(JSON.parse(await readFile(`${dir}/asyncapi.json`, "utf8"))).toEqual(asyncApiDocument(version));
    const generated = eventSchemas();
    expect((await readdir(`${dir}/schemas`)).sort()).toEqual([...generated.keys()].map((t) => `${t}.json`).sort());
    for (const [type, schema] of generated) expect(JSON.parse(await readFile(`${dir}/schemas/${type}.json`, "utf8")), type).toEqual(schema);
    // Every definition has its channel.
    expect(Object.keys((asyncApiDocument(version).channels as object)).length).toBe(definitionsByType.size);
  });

  it("the AsyncAPI document validates with the AsyncAPI parser", async () => {
    const diagnostics = await new Parser().validate(await readFile(`${dir}/asyncapi.json`, "utf8"));
    expect(diagnostics.filter((d) => d.severity === 0).map((d) => `${d.message} at ${d.path.join(".")}`)).toEqual([]);
  }, 60_000);

  it("an encoded event validates against its schema; one with bad data does not", () => {
    const ajv = new Ajv2020({ strict: false });
    (addFormats as unknown as (a: Ajv2020) => void)(ajv);
    const validate = ajv.compile(eventSchema(migrationRequested));
    const msg = encodeStructured(migrationRequested, { migrationId: "m1" }, { migrationId: "m1", vms: ["vm1"], sourceHost: "hostA", requestedBy: "test" }, { source: "gangway/cli" });
    const event = JSON.parse(new TextDecoder().decode(msg.payload)) as Record<string, unknown>;
    expect(validate(event), JSON.stringify(validate.errors)).toBe(true);
    expect(validate({ ...event, data: { ...(event.data as object), vms: [] } })).toBe(false);
    expect(validate({ ...event, type: "io.gangway.migration.planned.v1" })).toBe(false);
  });
});
