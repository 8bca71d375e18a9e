/**
 * scan (preparation phase): reads a running VM's memory, keys its pages and preseeds what
 * the destination side lacks, so that a later migration sends only what changed since.
 */
import { scanRequested } from "../../../schemas/index.ts";
import { inSpan } from "../../../infra/spans.ts";
import { KeyTable } from "../../../kit/keyTable.ts";
import { defineAction } from "../hostAction.ts";
import { createKeyResolver } from "../keyResolver.ts";
import { scanMemory } from "../memoryScanner.ts";

export default defineAction({
  trigger: scanRequested,
  async handle(state, c) {
    const v = state.owned.get(c.vm);
    if (!v || v.state !== "running" || v.scanning) return;
    v.scanning = true;
    try {
      const prep = state.preparation;
      const resolver = (prep.resolver ??= createKeyResolver(state.nc, state.publisher, { migrationId: `prep-${state.host}`, targetHost: state.host }));
      const known = prep.knownByTenant.get(v.spec.tenant) ?? prep.knownByTenant.set(v.spec.tenant, new KeyTable(65536)).get(v.spec.tenant)!;
      const pass = v.scan && !c.full ? v.scan.pass + 1 : 0;
      const r = await inSpan("scan memory", { "gangway.vm": c.vm, "gangway.host": state.host, "gangway.scan.pass": pass }, () => scanMemory({
        host: state.host, vm: c.vm, tenant: v.spec.tenant, ramPath: v.vm.ramPath, sizeBytes: v.spec.memoryMiB * 1024 * 1024, keyer: state.keyerFor(v.spec.tenant),
        resolver, publisher: state.publisher, packs: state.packs, pass, known, shouldStop: () => v.state !== "running", ...(v.scan && !c.full ? { previous: v.scan.table } : {}),
      }));
      v.scan = { table: r.table, pass };
      state.log.info("scanned", { vm: c.vm, pass, changed: r.changedPages, preseeded: r.pagesPreseeded, bytes: r.bytesSent });
    } finally {
      v.scanning = false;
    }
  },
});
