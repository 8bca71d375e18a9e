/**
 * One trace per migration: from the request through plan, the agents, the dedup index, page
 * packing, the destination's rebuild and commit, every span in one tree (in-memory exporter;
 * functions and agents in this process so the exporter sees them all; real QEMU and NATS).
 */
import { afterAll, describe, expect, it } from "vitest";
import { context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTelemetry } from "../../infra/telemetry.ts";
import { startTestNats } from "../helpers/nats.ts";
import { serveFunctions } from "../../infra/runtime/functionHost.ts";
import { createDedupIndex } from "../../infra/dedupIndex.ts";
import { kvStateStore } from "../../infra/runtime/stateStore.ts";
import { STATE_BUCKET } from "../../infra/nats/resources.ts";
import { allFunctions } from "../../functions/index.ts";
import { startAgent } from "../../adapters/host/agent.ts";
import { createQemuDriver } from "../../adapters/host/qemuDriverImpl.ts";
import { createLogger } from "../../infra/log.ts";
import { startVms, testGuestSpec } from "../../cli/localCluster.ts";
import { migrateGang } from "../../cli/gangMigration.ts";

const exporter = new InMemorySpanExporter();
const telemetry = startTelemetry({ serviceName: "gangway-trace-test", spanProcessors: [new SimpleSpanProcessor(exporter)] });
afterAll(() => telemetry.shutdown());

describe("tracing a gang migration", () => {
  it("shows scan, hash, page packing, destination rebuild and commit as one tree", async () => {
    await using nats = await startTestNats();
    const work = await mkdtemp(join(tmpdir(), "gangway-trace-"));
    const log = createLogger();
    const fnConn = await nats.connect("functions");
    const dedupIndex = createDedupIndex(fnConn);
    const functions = await serveFunctions(allFunctions({ dedupIndex }), fnConn);
    await kvStateStore(await new Kvm(jetstream(nats.nc)).open(STATE_BUCKET)).put("config.scan", { enabled: false });
    const agents = await Promise.all(
      ["trA", "trB"].map(async (host) => startAgent({ host, nc: await nats.connect(host), driver: createQemuDriver({ host, runDir: join(work, host), log }), log })),
    );
    try {
      await startVms(nats.nc, "trA", [testGuestSpec("x1", { memoryMiB: 64, seed: 1, rate: 100 }), testGuestSpec("x2", { memoryMiB: 64, seed: 2, rate: 100 })]);
      const root = trace.getTracer("test").startSpan("operator: migrate x1 x2");
      const summary = await context.with(trace.setSpan(context.active(), root), () => migrateGang({ nc: nats.nc, vms: ["x1", "x2"], sourceHost: "trA", targetHost: "trB" }));
      root.end();
      expect(summary.outcome, summary.reason).toBe("succeeded");
      await new Promise((r) => setTimeout(r, 500)); // the last spans end after the events they sent

      const traceId = root.spanContext().traceId;
      const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
      const names = new Set(spans.map((s) => s.name));
      for (const name of [
        "process gw.migration.*.requested", // plan
        "process gw.cmd.agent.trA.start-source",
        "scan stream", // keying the pages QEMU's stream carries
        "pack pages",
        "destination rebuild",
        "destination proof",
        "process gw.commit.*.ready", // commit decides
        "process gw.cmd.agent.trB.resume-target",
      ]) expect(names, name).toContain(name);
      expect([...names].some((n) => /^process gw\.hash\.\*\.lookup\.\d$/.test(n)), "a hash shard's span").toBe(true);
      // One tree: every span's parent is a span of this trace, up to the operator's root.
      const ids = new Set(spans.map((s) => s.spanContext().spanId));
      const orphans = spans.filter((s) => s !== spans.find((r) => r.spanContext().spanId === root.spanContext().spanId) && !ids.has(s.parentSpanContext?.spanId ?? ""));
      expect(orphans.map((s) => s.name)).toEqual([]);
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
      await functions.stop();
      await dedupIndex.close();
      await rm(work, { recursive: true, force: true });
    }
  }, 240_000);
});
