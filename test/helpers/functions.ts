/** Runs a function's handler against a small in-memory state, collecting what it emits (unit level). */
import type { FunctionContext, FunctionDefinition, StateStore } from "../../kit/index.ts";

export interface Emitted {
  type: string;
  data: Record<string, unknown>;
}

/** A StateStore in a Map; values are copied in and out, as a real store would. */
export function memoryState(): StateStore & { map: Map<string, unknown> } {
  const map = new Map<string, unknown>();
  return {
    map,
    get: async <T,>(k: string) => structuredClone(map.get(k)) as T | undefined,
    put: async (k, v) => void map.set(k, structuredClone(v)),
    create: async (k, v) => (map.has(k) ? false : (map.set(k, structuredClone(v)), true)),
    delete: async (k) => void map.delete(k),
    keys: async (prefix) => [...map.keys()].filter((k) => k.startsWith(prefix)),
  };
}

/** One state shared by the functions run through it; `run` delivers one event and returns what was emitted. */
export function functionHarness(state = memoryState()) {
  let emitted: Emitted[] = [];
  const ctx: FunctionContext = {
    emit: (def, _p, data) => void emitted.push({ type: def.type, data: data as Record<string, unknown> }),
    emitBinary: () => undefined,
    state,
    log: { debug() {}, info() {}, warn() {}, error() {} },
    now: () => new Date(),
    attempt: 1,
  };
  const run = async (fn: FunctionDefinition, data: Record<string, unknown>, id = `e-${Math.random()}`, time = new Date().toISOString(), source = "t"): Promise<Emitted[]> => {
    emitted = [];
    // A binary event's attributes arrive as `ext` (its body is not used by the deciding functions).
    const event = fn.trigger.mode === "binary" ? { mode: "binary", ext: data, data: new Uint8Array(0) } : { mode: "structured", data };
    await fn.handler({ specversion: "1.0", id, source, type: fn.trigger.type, time, ...event } as never, ctx);
    return emitted;
  };
  return { state, run };
}
