/** Every event and command definition, for hosts, the audit reader and the CLI. */
import type { AnyEventDefinition } from "./cloudevent.ts";
import * as migration from "./migration.ts";
import * as scan from "./scan.ts";
import * as hash from "./hash.ts";
import * as manifest from "./manifest.ts";
import * as dirty from "./dirty.ts";
import * as page from "./page.ts";
import * as commit from "./commit.ts";
import * as host from "./host.ts";
import * as agent from "./agent.ts";
import * as dlq from "./dlq.ts";

export * from "./cloudevent.ts";
export * from "./common.ts";
export * from "./migration.ts";
export * from "./scan.ts";
export * from "./hash.ts";
export * from "./manifest.ts";
export * from "./dirty.ts";
export * from "./page.ts";
export * from "./commit.ts";
export * from "./host.ts";
export * from "./agent.ts";
export * from "./service.ts";
export * from "./agentService.ts";
export * from "./dlq.ts";

function definitionsOf(mod: Record<string, unknown>): AnyEventDefinition[] {
  return Object.values(mod).filter(
    (v): v is AnyEventDefinition => typeof v === "object" && v !== null && "type" in v && "mode" in v && "filter" in v,
  );
}

/** All definitions, keyed by CloudEvents type. */
export const definitionsByType: ReadonlyMap<string, AnyEventDefinition> = new Map(
  [migration, scan, hash, manifest, dirty, page, commit, host, agent, dlq].flatMap((m) => definitionsOf(m)).map((d) => [d.type, d]),
);
