/**
 * Functions decide, adapters act: nothing under functions/ or schemas/ may import Node
 * built-ins, NATS clients, adapters or infra (types from schemas are fine).
 */
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return sources(p);
    return p.endsWith(".ts") && !p.endsWith(".test.ts") ? [p] : [];
  });
}

const forbidden = [/from\s+["']node:/, /from\s+["'](fs|path|os|child_process|net|crypto)["']/, /from\s+["']@nats-io\//, /from\s+["'][./]*\/(adapters|infra)\//, /import\(\s*["']node:/];

describe("module boundaries", () => {
  for (const dir of ["functions", "schemas"]) {
    it(`${dir}/ imports no Node built-ins, NATS, adapters or infra`, () => {
      const offenders: string[] = [];
      for (const file of sources(dir)) {
        const text = readFileSync(file, "utf8");
        for (const re of forbidden) if (re.test(text)) offenders.push(`${file}: ${re}`);
      }
      expect(offenders).toEqual([]);
    });
  }
});
