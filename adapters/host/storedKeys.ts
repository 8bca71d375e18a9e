/**
 * The keys a host knows are stored (its preparation scans', per tenant) are only as good as
 * the packs holding them. A pack found damaged anywhere is announced on gw.pack.*.corrupt;
 * the host does not keep which of its keys that pack held, so it forgets the tenant's known
 * keys whole: the next migration asks the dedup index again, which forgot that pack's keys
 * and has the source send those pages anew. (Damage is rare; a forgotten key costs a
 * look-up, a wrongly remembered one a failed migration.)
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { z } from "zod";
import { packCorrupt } from "../../schemas/index.ts";
import { decodeMessage } from "../../infra/events/binding.ts";
import type { Logger } from "../../infra/log.ts";
import type { KeyTable } from "../../kit/keyTable.ts";

export function forgetStoredKeysOnDamage(nc: NatsConnection, knownByTenant: Map<string, KeyTable>, log: Logger): Subscription {
  return nc.subscribe("gw.pack.*.corrupt", {
    callback: (err, m) => {
      if (err) return;
      const d = decodeMessage(m.subject, m.data, m.headers);
      if (!d.ok || d.definition !== packCorrupt || d.event.mode !== "structured") return;
      const c = d.event.data as z.infer<typeof packCorrupt.data>;
      const known = knownByTenant.get(c.tenant);
      if (!known) return;
      log.info("a page pack was found damaged: this host's known-stored keys of the tenant are forgotten", { tenant: c.tenant, pack: c.pack, keys: known.size });
      // A new table, not a cleared one: a scan under way merges what it learned (perhaps from
      // answers given before the index heard of the damage) into the old table, which no
      // later migration or scan is handed.
      knownByTenant.delete(c.tenant);
    },
  });
}
