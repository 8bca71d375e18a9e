/**
 * scan: the preparation phase of gang migration (HPDC'11 §2.2). Long before any migration,
 * each VM's memory is scanned and keyed, and pages the destination side does not hold yet
 * are packed and stored; later scans re-key only what changed. When a migration comes, most
 * pages are already present and only what is new crosses the link.
 *
 * This function decides when: each inventory report of a host is a chance to ask it to
 * scan every running VM whose last scan is older than the interval. The host acts.
 */
import { hostInventory, scanCompleted, scanRequested } from "../../schemas/index.ts";
import { defineFunction } from "../../kit/index.ts";

/** Operators tune scanning in state: `config.scan` = { intervalSec, enabled }. */
export interface ScanConfig {
  /** @default 20 */
  intervalSec: number;
  /** @default true */
  enabled: boolean;
}
export const scanConfigKey = "config.scan";
const DEFAULTS: ScanConfig = { intervalSec: 20, enabled: true };
const lastScanKey = (host: string, vm: string) => `scan.${host}.${vm}.last`;

export default defineFunction({
  id: "scan",
  description: "ask hosts to scan their VMs' memory ahead of migrations (preparation phase)",
  trigger: hostInventory,
  retry: { maxAttempts: 3, backoffMs: 500 },
  async handler(event, ctx) {
    const cfg = { ...DEFAULTS, ...(await ctx.state.get<Partial<ScanConfig>>(scanConfigKey)) };
    if (!cfg.enabled) return;
    const now = ctx.now().getTime();
    for (const v of event.data.vms) {
      if (v.state !== "running") continue; // a migrating VM's stream is keyed as it goes
      const last = await ctx.state.get<number>(lastScanKey(event.data.host, v.vm));
      if (last !== undefined && now - last < cfg.intervalSec * 1000) continue;
      await ctx.state.put(lastScanKey(event.data.host, v.vm), now);
      ctx.emit(scanRequested, { host: event.data.host }, { host: event.data.host, vm: v.vm, full: last === undefined });
    }
  },
});

/** Where the last scan's key sample of a VM is kept, for placement (`sample.<host>.<vm>`). */
export const sampleKey = (host: string, vm: string) => `sample.${host}.${vm}`;

/** Keeps each VM's latest key sample, so evacuate can place VMs that share pages together. */
export const scanSampled = defineFunction({
  id: "scan-sampled",
  description: "remember each VM's key sample from its latest scan",
  trigger: scanCompleted,
  retry: { maxAttempts: 3, backoffMs: 500 },
  async handler(event, ctx) {
    if (event.data.sample.length) await ctx.state.put(sampleKey(event.data.host, event.data.vm), event.data.sample);
  },
});
