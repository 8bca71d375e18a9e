/**
 * The services this host answers besides liveness (schemas/agentService.ts): a VM's serial
 * console, for operators and the demo's self-checks; and how far a destination's rebuild
 * got, which the source drains its pipeline against before it switches over.
 */
import type { Subscription } from "@nats-io/transport-node";
import { agentConsole, agentManifest } from "../../schemas/index.ts";
import { answer } from "../../infra/nats/service.ts";
import { sessionKey, type HostState } from "./hostState.ts";

export function answerHostServices(state: HostState): Subscription[] {
  const { host } = state;
  const consoleSub = answer(state.nc, agentConsole, { host }, {
    handle: async (req) => {
      const v = state.owned.get(req.vm);
      if (!v) throw new Error(`no VM ${req.vm} on ${host}`);
      return { ok: true, line: await v.vm.console(req.send, new RegExp(req.expect), Math.min(req.timeoutMs ?? 30_000, 120_000)) };
    },
    failed: (error) => ({ ok: false, error }),
  });
  const manifestSub = answer(state.nc, agentManifest, { host }, {
    handle: (req) => {
      const t = state.targets.get(sessionKey(req.migrationId, req.vm));
      return t ? { seqWritten: t.state.seqWritten ?? -1, seqRead: t.state.seqRead ?? -1, waitingFor: t.waitingFor ?? t.state.waitingFor ?? "nothing" } : { error: `no destination of ${req.vm} in ${req.migrationId} on ${host}` };
    },
    failed: (error) => ({ error }),
  });
  return [consoleSub, manifestSub];
}
