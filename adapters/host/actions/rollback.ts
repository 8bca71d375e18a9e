/**
 * rollback (either side): a destination quits its VM (or one still starting is marked, and
 * quit once it is up); a source stops its outgoing migration and resumes its VM wherever
 * the migration left it: the source is authoritative.
 */
import { agentRollback } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { publishInventory } from "../hostFacts.ts";
import { endTarget, releaseGang, sessionKey } from "../hostState.ts";

export default defineAction({
  trigger: agentRollback,
  async handle(state, c) {
    const key = sessionKey(c.migrationId, c.vm);
    const pending = state.preparing.get(key);
    if (pending) pending.rolledBack = true;
    const t = state.targets.get(key);
    if (t) {
      state.log.info("rolled back: destination quit", { migrationId: c.migrationId, vm: c.vm, waitingFor: t.waitingFor ?? t.state.waitingFor, seqRead: t.state.seqRead, seqWritten: t.state.seqWritten, reason: c.reason });
      endTarget(state, t);
      // For diagnosis (GANGWAY_KEEP_SUSPECT=1): a destination the proof refused stays paused,
      // never resumed, its RAM file there to compare; the operator quits it.
      if (process.env.GANGWAY_KEEP_SUSPECT === "1" && /does not match the source's RAM|other device state/.test(c.reason)) {
        state.log.warn("rolled back: the suspect destination is kept paused for inspection", { migrationId: c.migrationId, vm: c.vm, ramPath: t.vm.ramPath, reason: c.reason });
      } else await t.vm.quit().catch(() => undefined);
    }
    const s = state.sources.get(key);
    if (s) {
      state.sources.delete(key);
      s.end();
      await s.cancel().catch(() => undefined);
      await s.done.catch(() => undefined);
      releaseGang(state, c.migrationId);
    }
    const v = state.owned.get(c.vm);
    if (v && v.state === "migrating" && v.migrationId === c.migrationId) {
      // The source is authoritative: resume it wherever the migration left it.
      const status = await v.vm.status().catch(() => "gone");
      if (status === "postmigrate" || status === "paused" || status === "finish-migrate") await v.vm.cont();
      v.state = "running";
      delete v.migrationId;
      state.log.warn("rolled back: source resumed", { migrationId: c.migrationId, vm: c.vm, was: status, reason: c.reason });
      await publishInventory(state);
    }
  },
});
