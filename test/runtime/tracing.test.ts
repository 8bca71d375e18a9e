/**
 * Traces across the bus: the publisher's trace context travels in NATS headers, the
 * function's span is its child, and what the function emits stays in the same trace.
 */
import { afterAll, describe, expect, it } from "vitest";
import { SpanKind, context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { jetstream } from "@nats-io/jetstream";
import { startTelemetry } from "../../infra/telemetry.ts";
import { startTestNats, eventually } from "../helpers/nats.ts";
import { serveFunction } from "../../infra/runtime/functionHost.ts";
import { createPublisher } from "../../infra/events/publisher.ts";
import { plan, inventory } from "../../functions/index.ts";
import { hostInventory, migrationRequested } from "../../schemas/index.ts";
import type { FunctionDefinition } from "../../kit/index.ts";

const exporter = new InMemorySpanExporter();
const telemetry = startTelemetry({ serviceName: "gangway-test", spanProcessors: [new SimpleSpanProcessor(exporter)] });
afterAll(() => telemetry.shutdown());

describe("tracing (real nats-server, in-memory exporter)", () => {
  it("one trace from the request through the function to what it emits", async () => {
    await using nats = await startTestNats();
    const inv = await serveFunction(inventory as unknown as FunctionDefinition, nats.nc);
    const p = await serveFunction(plan as unknown as FunctionDefinition, nats.nc);
    const pub = createPublisher(jetstream(nats.nc), "test");
    const vms = [{ vm: "v1", tenant: "t", memoryBytes: 1 << 28, state: "running" as const }];
    await pub.publish(hostInventory, { host: "a" }, { host: "a", memoryTotalBytes: 2 ** 33, memoryFreeBytes: 2 ** 32, vms });
    await pub.publish(hostInventory, { host: "b" }, { host: "b", memoryTotalBytes: 2 ** 33, memoryFreeBytes: 2 ** 32, vms: [] });
    const root = trace.getTracer("test").startSpan("operator asks");
    await context.with(trace.setSpan(context.active(), root), () =>
      pub.publish(migrationRequested, { migrationId: "traced" }, { migrationId: "traced", vms: ["v1"], sourceHost: "a", targetHost: "b", requestedBy: "test" }),
    );
    root.end();
    const traceId = root.spanContext().traceId;
    const spans = await eventually(() => {
      const inTrace = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
      return inTrace.some((s) => s.name === "send gw.migration.*.planned") ? inTrace : undefined;
    }, 15_000, "the planned event sent in the request's trace");
    // One process span per delivery (a retry is a second one), all in the same trace.
    const processSpans = spans.filter((s) => s.name === "process gw.migration.*.requested");
    const sendPlanned = spans.find((s) => s.name === "send gw.migration.*.planned")!;
    const processSpan = processSpans.find((s) => s.spanContext().spanId === sendPlanned.parentSpanContext?.spanId)!;
    expect(processSpan, "the planned event is sent from inside a process span").toBeDefined();
    expect(processSpan.kind).toBe(SpanKind.CONSUMER);
    expect(processSpan.attributes).toMatchObject({ "messaging.system": "nats", "messaging.operation.type": "process", "messaging.consumer.group.name": "fn-plan", "gangway.function": "plan" });
    const sendRequest = spans.find((s) => s.name === "send gw.migration.*.requested")!;
    expect(sendRequest.kind).toBe(SpanKind.PRODUCER);
    // The function's span is the child of the publisher's send span (context from the headers).
    for (const ps of processSpans) expect(ps.parentSpanContext?.spanId).toBe(sendRequest.spanContext().spanId);
    await Promise.all([p.stop(), inv.stop()]);
  });
});
