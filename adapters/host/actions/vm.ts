/** vm-start, vm-stop: run a VM on this host, or quit one. */
import { agentVmStart, agentVmStop } from "../../../schemas/index.ts";
import { defineAction } from "../hostAction.ts";
import { publishInventory } from "../hostFacts.ts";

export const vmStart = defineAction({
  trigger: agentVmStart,
  async handle(state, c) {
    if (state.owned.has(c.spec.name)) throw new Error(`VM ${c.spec.name} already runs on ${state.host}`);
    const vm = await state.driver.startVm(c.spec, "source", "vm");
    state.owned.set(c.spec.name, { spec: c.spec, vm, state: "running" });
    await publishInventory(state);
  },
});

export const vmStop = defineAction({
  trigger: agentVmStop,
  async handle(state, c) {
    const v = state.owned.get(c.vm);
    if (!v) return;
    state.owned.delete(c.vm);
    await v.vm.quit();
    await publishInventory(state);
  },
});
