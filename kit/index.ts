/**
 * The function contract, shared by what declares functions (functions/) and what hosts them
 * (infra/runtime): the definition and context types, and the two errors that steer retries.
 * The content-key table (keyTable.ts) is here too: a pure data structure that functions and
 * adapters both use on their per-key paths.
 * It holds no effects (no node:*, no NATS), so functions may import it.
 */
export * from "./function.ts";
export * from "./errors.ts";
