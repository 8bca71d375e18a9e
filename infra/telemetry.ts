/**
 * OpenTelemetry for gangway processes: traces and metrics configured by the standard
 * OTEL_* environment variables (OTLP/HTTP when an endpoint or exporter is named, none
 * otherwise), W3C trace context carried in NATS headers.
 */
import { context, propagation, trace, metrics, type Context, type TextMapGetter, type TextMapSetter, type Tracer, type Meter } from "@opentelemetry/api";
import type { MsgHdrs } from "@nats-io/transport-node";
import { NodeSDK } from "@opentelemetry/sdk-node";
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base";
import type { MetricReader } from "@opentelemetry/sdk-metrics";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";

export const INSTRUMENTATION_NAME = "gangway";

export function tracer(): Tracer {
  return trace.getTracer(INSTRUMENTATION_NAME);
}

export function meter(): Meter {
  return metrics.getMeter(INSTRUMENTATION_NAME);
}

const setter: TextMapSetter<MsgHdrs> = { set: (h, k, v) => h.set(k, v) };
const getter: TextMapGetter<MsgHdrs | undefined> = {
  keys: (h) => (h ? h.keys() : []),
  get: (h, k) => (h && h.has(k) ? h.get(k) : undefined),
};

/** Writes the active (or given) trace context into NATS headers. */
export function injectTraceContext(h: MsgHdrs, ctx: Context = context.active()): void {
  propagation.inject(ctx, h, setter);
}

/** Reads a trace context from NATS headers (the active context when there is none). */
export function extractTraceContext(h: MsgHdrs | undefined): Context {
  return propagation.extract(context.active(), h, getter);
}

export interface TelemetryOptions {
  /** service.name of this process (e.g. "gangway-agent", "gangway-functions"). */
  serviceName: string;
  /** Extra span processors (tests pass an in-memory exporter's). */
  spanProcessors?: SpanProcessor[];
  /** A metric reader (tests pass an in-memory one). */
  metricReader?: MetricReader;
  /** Serve every metric for Prometheus at http://<host>:<port>/metrics. */
  prometheus?: { port: number; host: string };
}

export interface Telemetry {
  shutdown(): Promise<void>;
}

/**
 * Starts the SDK. Exporters follow OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER and
 * OTEL_EXPORTER_OTLP_ENDPOINT; when none of them is set, nothing is exported (a demo
 * without a collector must not spam connection errors).
 */
export function startTelemetry(opts: TelemetryOptions): Telemetry {
  const env = process.env;
  const configured = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_TRACES_EXPORTER);
  if (!configured) env.OTEL_TRACES_EXPORTER = "none";
  if (!env.OTEL_METRICS_EXPORTER && !env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT && !opts.prometheus) env.OTEL_METRICS_EXPORTER = "none";
  const readers = [...(opts.metricReader ? [opts.metricReader] : []), ...(opts.prometheus ? [new PrometheusExporter({ port: opts.prometheus.port, host: opts.prometheus.host })] : [])];
  if (!env.OTEL_LOGS_EXPORTER) env.OTEL_LOGS_EXPORTER = "none";
  const sdk = new NodeSDK({
    serviceName: opts.serviceName,
    instrumentations: [],
    ...(opts.spanProcessors ? { spanProcessors: opts.spanProcessors } : {}),
    ...(readers.length ? { metricReaders: readers } : {}),
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}
