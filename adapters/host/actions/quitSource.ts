/** quit-source: after the commit, the copy that left is quit; its gang lets go of it. */
import { agentQuitSource } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { publishInventory } from "../hostFacts.ts";
import { releaseGang, sessionKey } from "../hostState.ts";

export default defineAction({
  trigger: agentQuitSource,
  async handle(state, c) {
    const key = sessionKey(c.migrationId, c.vm);
    const s = state.sources.get(key);
    state.sources.delete(key);
    s?.end();
    await s?.done.catch(() => undefined);
    const v = state.owned.get(c.vm);
    // Only the copy that left in this migration (never a VM of the same name in another).
    if (v && v.state === "migrating" && v.migrationId === c.migrationId) {
      state.owned.delete(c.vm);
      await v.vm.quit();
    }
    // Only a session of this host held the gang (a repeated command must not close it under
    // the gang's other VMs).
    if (s) releaseGang(state, c.migrationId);
    await publishInventory(state);
  },
});
