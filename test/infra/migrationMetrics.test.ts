/**
 * `gangway up --metrics-port`: a Prometheus scrape shows KubeVirt-style migration series per
 * migration and VM, with values that follow the migration's own events, and outcomes counted.
 * A real nats-server and a real `gangway up` process; the events are published as agents do.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServer } from "node:net";
import { jetstream } from "@nats-io/jetstream";
import { spawnGangway, type GangwayProcess } from "../../cli/localCluster.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { dirtyRound, MigrationMode, MigrationPhase, migrationProgress, migrationSucceeded } from "../../schemas/index.ts";
import { eventually, startTestNats, type TestNats } from "../helpers/nats.ts";

const freePort = () => new Promise<number>((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const port = (s.address() as { port: number }).port;
    s.close(() => resolve(port));
  });
});

let nats: TestNats;
let up: GangwayProcess;
let port: number;
beforeAll(async () => {
  nats = await startTestNats();
  port = await freePort();
  up = await spawnGangway("functions", ["up", "--nats", nats.url, "--metrics-port", String(port), "--json"], /"metrics"/);
}, 60_000);
afterAll(async () => {
  await up?.stop();
  await nats?.[Symbol.asyncDispose]();
});

const scrape = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
const value = (text: string, name: string, labels: string) => {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
};

describe("migration metrics", () => {
  it("gauges data processed, remaining, rates and rounds per migration and VM; counts outcomes", async () => {
    const agent = createPublisher(jetstream(nats.nc), "gangway/host/hostA");
    const progress = (processed: number, remaining: number, round: number) =>
      agent.publish(migrationProgress, { migrationId: "m1" }, { migrationId: "m1", vm: "vm1", phase: MigrationPhase.Running, mode: MigrationMode.PreCopy, stats: { time_elapsed: 1000, data_processed: processed, memory_total: 1 << 28, memory_remaining: remaining, memory_bps: 50_000_000, memory_iteration: round, bytes_on_link: processed / 3 } });
    const labels = 'gangway_migration="m1",gangway_vm="vm1"';
    await progress(100_000_000, 150_000_000, 1);
    await agent.publish(dirtyRound, { migrationId: "m1" }, { migrationId: "m1", vm: "vm1", sourceHost: "hostA", round: 1, pagesSent: 10, pagesDirtied: 5, durationMs: 100, dirtyRate: 1000, transferRate: 1, remainingBytes: 1, expectedDowntimeMs: 10 });
    const first = await eventually(async () => {
      const t = await scrape();
      return value(t, "gangway_migration_data_processed_bytes", labels) === 100_000_000 && value(t, "gangway_migration_dirty_memory_rate_bytes", labels) !== undefined ? t : undefined;
    }, 20_000, "the first progress in the scrape");
    expect(value(first, "gangway_migration_data_remaining_bytes", labels)).toBe(150_000_000);
    expect(value(first, "gangway_migration_memory_transfer_rate_bytes", labels)).toBe(50_000_000);
    expect(value(first, "gangway_migration_dirty_memory_rate_bytes", labels)).toBe(1000 * 4096);
    expect(value(first, "gangway_migrations_in_phase", 'gangway_phase="Running"')).toBe(1);
    // The values move with the migration.
    await progress(200_000_000, 40_000_000, 2);
    const second = await eventually(async () => {
      const t = await scrape();
      return value(t, "gangway_migration_data_processed_bytes", labels) === 200_000_000 ? t : undefined;
    }, 20_000, "the second progress in the scrape");
    expect(value(second, "gangway_migration_data_remaining_bytes", labels)).toBe(40_000_000);
    expect(value(second, "gangway_migration_round", labels)).toBe(2);
    await agent.publish(migrationSucceeded, { migrationId: "m1" }, { migrationId: "m1", vms: ["vm1"], stats: { time_elapsed: 2000, data_processed: 200_000_000 } });
    await eventually(async () => ((value(await scrape(), "gangway_migrations_total", 'gangway_outcome="succeeded"') ?? 0) >= 1 ? true : undefined), 20_000, "the outcome counted");
  }, 90_000);
});
