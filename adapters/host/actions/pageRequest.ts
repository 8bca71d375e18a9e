/** page-request (post-copy, source): the destination needs these pages first; QEMU sends what it has not sent yet. */
import { agentPageRequest, PAGE_SIZE } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { sessionKey } from "../hostState.ts";

export default defineAction({
  trigger: agentPageRequest,
  async handle(state, c) {
    const s = state.sources.get(sessionKey(c.migrationId, c.vm));
    if (!s?.out) return;
    for (const r of c.ranges) {
      // QEMU already sent everything (the pages are on their way): nothing to ask for.
      if (!s.out.requestPages(c.block, r.offset, r.length)) return void state.log.debug("page request after the source's stream ended", { migrationId: c.migrationId, vm: c.vm });
      for (let at = r.offset; at < r.offset + r.length; at += PAGE_SIZE) s.requested.add(`${c.block}:${at}`);
    }
  },
});
