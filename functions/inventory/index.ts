/**
 * inventory: keeps each host's last reported inventory in state (`inventory.<host>`), so
 * plan and evacuate can place VMs without asking the hosts.
 */
import { hostInventory } from "../../schemas/index.ts";
import { defineFunction } from "../../kit/index.ts";
import type { z } from "zod";

export type HostInventory = z.infer<typeof hostInventory.data> & { reportedAt: string };

export const inventoryKey = (host: string) => `inventory.${host}`;

export default defineFunction({
  id: "inventory",
  description: "remember each host's inventory for placement",
  trigger: hostInventory,
  retry: { maxAttempts: 5, backoffMs: 200 },
  async handler(event, ctx) {
    const prev = await ctx.state.get<HostInventory>(inventoryKey(event.data.host));
    // Redeliveries can arrive out of order: never let an older report win.
    if (prev && prev.reportedAt > event.time) return;
    await ctx.state.put<HostInventory>(inventoryKey(event.data.host), { ...event.data, reportedAt: event.time });
  },
});
