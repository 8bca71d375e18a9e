/** Names of gangway's JetStream resources, in one place. */

/** The retained stream of every gw.> event and command: work queue for functions, and the audit log. */
export const EVENTS_STREAM = "GANGWAY";
export const EVENTS_SUBJECTS = ["gw.>"];

/** KV: which function has finished which event (idempotency by event id). */
export const RUNS_BUCKET = "gw-runs";
/** KV: small state that handlers keep between events, namespaced by function. */
export const STATE_BUCKET = "gw-state";
/** KV: the dedup index — content keys the destination side holds, sharded by key prefix. */
export const DEDUP_BUCKET = "gw-dedup";
/** Object store: content-addressed page packs. */
export const PACK_STORE = "gw-packs";
