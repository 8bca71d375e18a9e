/**
 * Planning across QEMU versions (unit level): a gang is never planned onto a host whose QEMU
 * resolves the machine type differently — refused before any VM starts, the source untouched —
 * and the destination chosen for it runs the source's QEMU.
 */
import { describe, expect, it } from "vitest";
import plan, { qemuMismatch } from "../../functions/plan/index.ts";
import { inventoryKey } from "../../functions/inventory/index.ts";
import { migrationOptions } from "../../schemas/index.ts";
import { functionHarness } from "../helpers/functions.ts";

const GiB = 1024 ** 3;
const inventory = (host: string, qemuVersion: string | undefined, free = 8 * GiB, vms: string[] = []) => ({
  host, memoryTotalBytes: 16 * GiB, memoryFreeBytes: free, ...(qemuVersion ? { qemuVersion } : {}),
  vms: vms.map((vm) => ({ vm, tenant: "t", memoryBytes: GiB, state: "running" })), reportedAt: new Date(Date.now() + 60_000).toISOString(),
});

async function request(hosts: ReturnType<typeof inventory>[], targetHost?: string) {
  const h = functionHarness();
  for (const inv of hosts) await h.state.put(inventoryKey(inv.host), inv);
  const out = await h.run(plan, { migrationId: "m1", vms: ["v1"], sourceHost: "A", ...(targetHost ? { targetHost } : {}), requestedBy: "test", options: migrationOptions.parse({}) });
  return out.map((e) => ({ type: e.type.replace(/^io\.gangway\./, "").replace(/\.v1$/, ""), data: e.data }));
}

describe("plan across QEMU versions", () => {
  it("refuses a target host on another QEMU version, naming both, before any VM starts", async () => {
    const out = await request([inventory("A", "7.2.22", 8 * GiB, ["v1"]), inventory("B", "10.0.2")], "B");
    expect(out.map((e) => e.type)).toEqual(["migration.failed"]);
    expect(out[0]!.data.reason).toMatch(/QEMU on A is 7\.2\.22, on B 10\.0\.2: both ends of a migration must run the same QEMU version/);
  });

  it("plans onto a host with the same QEMU line (micro versions differ)", async () => {
    const out = await request([inventory("A", "10.0.2", 8 * GiB, ["v1"]), inventory("B", "10.0.5")], "B");
    expect(out.map((e) => e.type)).toContain("migration.planned");
  });

  it("chooses, of the hosts with room, one that runs the source's QEMU, even with less room", async () => {
    const out = await request([inventory("A", "10.0.2", 8 * GiB, ["v1"]), inventory("B", "7.2.22", 12 * GiB), inventory("C", "10.0.2", 4 * GiB)]);
    expect(out.find((e) => e.type === "migration.planned")?.data.targetHost).toBe("C");
    const none = await request([inventory("A", "10.0.2", 8 * GiB, ["v1"]), inventory("B", "7.2.22", 12 * GiB)]);
    expect(none.map((e) => e.type)).toEqual(["migration.failed"]);
    expect(none[0]!.data.reason).toMatch(/no host has \d+ bytes free for the gang and runs QEMU 10\.0 like A/);
  });

  it("does not refuse a host that does not say its version", () => {
    expect(qemuMismatch({ host: "A", qemuVersion: "7.2.22" }, { host: "B" })).toBeUndefined();
  });
});
