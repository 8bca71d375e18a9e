/**
 * Fault case 12, second half: the parallel limit of an evacuation. Four VMs of four
 * different images (nothing to group them by) leave a host with `gangway evacuate HOST
 * --parallel 2`; read back in stream order, the gangs' requests and outcomes never have more
 * than two of the host's VMs migrating at once — and the limit is reached (it is a limit, not
 * a queue of one). Every VM ends once, on the destination, verified, its proof holding (the
 * commit's three digests equal, both ends' RAM dumps identical); nothing is left.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { resolve } from "node:path";
import { readEvents } from "../../infra/events/reader.ts";
import { compareRamDumps } from "../helpers/ramDumps.ts";
import { checkLeaks, checkPlacement, guest, removeDumps, runCase, startCluster, startVms, type Cluster } from "./harness.ts";

const run = promisify(execFile);
const BIN = resolve(import.meta.dirname, "../../bin/gangway.mjs");
let c: Cluster;
const vms = ["v1", "v2", "v3", "v4"];
const PARALLEL = 2;

beforeAll(async () => {
  c = await startCluster();
  // Four images: no two VMs share pages, so each is a gang of its own.
  await startVms(c.nats.nc, "hostA", vms.map((v, i) => ({ ...guest(v, 20 + i), append: guest(v, 20 + i).append!.replace(/image=\d+/, `image=${30 + i}`) })));
}, 180_000);
afterAll(async () => c?.stop(), 60_000);

describe("fault: parallel limits under an evacuation", () => {
  it(`12: evacuate --parallel ${PARALLEL}: never more than ${PARALLEL} of the host's VMs migrating at once; all arrive and verify`, () =>
    runCase("12-evacuation", `a host of 4 VMs evacuated with --parallel ${PARALLEL}: the per-host limit read back from the events`, async (r) => {
      const { stdout } = await run(process.execPath, [BIN, "evacuate", "hostA", "--to", "hostB", "--parallel", String(PARALLEL), "--json", "--nats", c.nats.url], { timeout: 240_000 });
      const summary = JSON.parse(stdout.trim().split("\n").at(-1)!) as { drained: boolean; moved: { vm: string; to: string; migrationId: string }[]; failed: unknown[] };
      expect(summary).toMatchObject({ drained: true, failed: [] });
      expect(summary.moved.map((m) => m.vm).sort()).toEqual(vms);

      // In stream order: a gang's VMs migrate from its request to its outcome.
      const gangs = new Map<string, string[]>();
      let busy = 0;
      let peak = 0;
      const timeline: string[] = [];
      for await (const e of readEvents(c.nats.nc, { filter: "gw.migration.>" })) {
        if (!e.result.ok || e.result.event.mode !== "structured") continue;
        const type = e.result.event.type;
        const d = e.result.event.data as { migrationId: string; vms?: string[]; sourceHost?: string; vm?: string };
        if (type === "io.gangway.migration.requested.v1" && d.sourceHost === "hostA") {
          gangs.set(d.migrationId, d.vms ?? []);
          busy += d.vms?.length ?? 0;
          timeline.push(`+${d.vms?.join("+")}`);
        } else if ((type === "io.gangway.migration.succeeded.v1" || (type === "io.gangway.migration.failed.v1" && !d.vm)) && gangs.has(d.migrationId)) {
          busy -= gangs.get(d.migrationId)!.length;
          gangs.delete(d.migrationId);
          timeline.push(`-${type.split(".")[3]}`);
        }
        peak = Math.max(peak, busy);
      }
      r.f.notes = `peak ${peak} VMs migrating at once (limit ${PARALLEL}); stream order: ${timeline.join(" ")}`;
      r.f.migrations += timeline.filter((t) => t.startsWith("+")).length;
      r.f.completed += timeline.filter((t) => t === "-succeeded").length;
      r.f.rolledBack += timeline.filter((t) => t === "-failed").length;
      expect(gangs.size, "every gang has an outcome").toBe(0);
      expect(peak, timeline.join(" ")).toBeLessThanOrEqual(PARALLEL);
      expect(peak, "the limit was reached").toBe(PARALLEL);

      r.add(await checkPlacement(c, vms, "hostB", "hostA"));
      for (const m of new Set(summary.moved.map((x) => x.migrationId))) {
        r.add({ lost: 0, twice: 0, leaks: await checkLeaks(c, m, "hostB") });
      }
      // Each VM's proof: the commit's three digests equal, both ends' RAM identical byte for byte.
      for (const { vm, migrationId } of summary.moved) {
        let proof: { source_ram_digest: string; sent_digest: string; destination_digest: string } | undefined;
        for await (const e of readEvents(c.nats.nc, { filter: `gw.migration.${migrationId}.committed` })) {
          const d = e.result.ok && e.result.event.mode === "structured" ? (e.result.event.data as { vm: string; proof?: typeof proof }) : undefined;
          if (d?.vm === vm) proof = d.proof;
        }
        expect(proof, `${vm}: the commit's proof`).toBeDefined();
        expect([proof!.sent_digest, proof!.destination_digest], vm).toEqual([proof!.source_ram_digest, proof!.source_ram_digest]);
        expect(await compareRamDumps(c.dumps, migrationId, [vm]), `${vm}: RAM dumps of both ends`).toEqual({ [vm]: "identical" });
        await removeDumps(c, migrationId);
      }
    }), 300_000);
});
