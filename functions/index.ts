/** Every gangway function, for hosts to serve. */
import inventory from "./inventory/index.ts";
import plan from "./plan/index.ts";
import type { FunctionDefinition } from "./types.ts";

export const functions: readonly FunctionDefinition[] = [inventory, plan] as unknown as readonly FunctionDefinition[];
export { inventory, plan };
