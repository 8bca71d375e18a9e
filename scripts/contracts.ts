/**
 * Writes the published event contracts (schemas/contracts.ts) into docs/contracts/:
 * asyncapi.json and one JSON Schema per event type. `npm run contracts` after a schema change.
 */
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { asyncApiDocument, eventSchemas } from "../schemas/contracts.ts";

const dir = new URL("../docs/contracts/", import.meta.url).pathname;
const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
await mkdir(join(dir, "schemas"), { recursive: true });
for (const f of await readdir(join(dir, "schemas"))) await rm(join(dir, "schemas", f));
await writeFile(join(dir, "asyncapi.json"), JSON.stringify(asyncApiDocument(pkg.version), null, 2) + "\n");
const schemas = eventSchemas();
for (const [type, schema] of schemas) await writeFile(join(dir, "schemas", `${type}.json`), JSON.stringify(schema, null, 2) + "\n");
process.stdout.write(`wrote docs/contracts/asyncapi.json and ${schemas.size} schemas\n`);
