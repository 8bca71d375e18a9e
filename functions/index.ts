/** Every gangway function, for hosts to serve. */
import inventory from "./inventory/index.ts";
import plan from "./plan/index.ts";
import scan, { scanSampled } from "./scan/index.ts";
import { evacuateFunctions } from "./evacuate/index.ts";
import { commitFunctions } from "./commit/index.ts";
import { dirtyLogFunctions } from "./dirtyLog/index.ts";
import pageRequest from "./pageRequest/index.ts";
import { createHashFunctions, type DedupIndexView } from "./hash/index.ts";
import type { FunctionDefinition } from "../kit/index.ts";

/** The functions that need nothing but their context. */
export const functions: readonly FunctionDefinition[] = [inventory, plan, scan, scanSampled, ...commitFunctions, ...dirtyLogFunctions, pageRequest, ...evacuateFunctions] as unknown as readonly FunctionDefinition[];

/** All functions, given the services some of them are built with (the dedup index). */
export function allFunctions(services: { dedupIndex: DedupIndexView }): readonly FunctionDefinition[] {
  return [...functions, ...(createHashFunctions(services.dedupIndex) as unknown as FunctionDefinition[])];
}

export { inventory, plan, scan, commitFunctions, createHashFunctions };
