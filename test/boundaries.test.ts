/**
 * Functions decide, adapters act, infra hosts: nothing under functions/, schemas/ or kit/ (the
 * function contract) may import Node built-ins, NATS clients, adapters or infra (types from
 * schemas are fine); and the function host knows functions only through the kit.
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
  for (const dir of ["functions", "schemas", "kit"]) {
    it(`${dir}/ imports no Node built-ins, NATS, adapters or infra`, () => {
      const offenders: string[] = [];
      for (const file of sources(dir)) {
        const text = readFileSync(file, "utf8");
        for (const re of forbidden) if (re.test(text)) offenders.push(`${file}: ${re}`);
      }
      expect(offenders).toEqual([]);
    });
  }

  /** The functions/ modules a file imports, and whether only as types. */
  const functionImports = (file: string) =>
    [...readFileSync(file, "utf8").matchAll(/^import\s+(type\s+)?[^;]*?from\s+["']([./]*\/functions\/[^"']+)["']/gm)].map((m) => ({ from: m[2], typeOnly: !!m[1] }));

  it("infra/runtime/ imports nothing from functions/ (it knows them through the kit)", () => {
    const offenders = sources("infra/runtime").flatMap((file) => functionImports(file).map((i) => `${file}: ${i.from}`));
    expect(offenders).toEqual([]);
  });

  it("the rest of infra/ imports from functions/ only types (the services a function declares it needs)", () => {
    const offenders = sources("infra").flatMap((file) => functionImports(file).filter((i) => !i.typeOnly).map((i) => `${file}: ${i.from}`));
    expect(offenders).toEqual([]);
  });

  it("host actions import no other action: they share only the host's state (adapters/host/hostState.ts)", () => {
    const offenders = sources("adapters/host/actions")
      .filter((file) => !file.endsWith("index.ts"))
      .flatMap((file) => [...readFileSync(file, "utf8").matchAll(/from\s+["'](\.\/[^"']+|\.\.\/agent\.ts)["']/g)].map((m) => `${file}: ${m[1]}`));
    expect(offenders).toEqual([]);
  });
});
