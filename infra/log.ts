/**
 * Structured logs: one JSON object per line on stderr (stdout is for --json results).
 * Level from GANGWAY_LOG_LEVEL (debug|info|warn|error|silent), default "info", and
 * "warn" under vitest so test output stays readable.
 */
import { trace } from "@opentelemetry/api";

export const LogLevel = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 } as const;
export type LogLevel = keyof typeof LogLevel;

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line carries these fields as well. */
  child(fields: Record<string, unknown>): Logger;
}

function configuredLevel(): number {
  const name = (process.env.GANGWAY_LOG_LEVEL ?? (process.env.VITEST ? "warn" : "info")) as LogLevel;
  return LogLevel[name] ?? LogLevel.info;
}

/** Error objects serialize to nothing with JSON.stringify; keep name, message and cause. */
function plain(value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, ...(value.cause ? { cause: plain(value.cause) } : {}) };
  }
  return value;
}

export function createLogger(base: Record<string, unknown> = {}, sink: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const min = configuredLevel();
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (LogLevel[level] < min) return;
    const span = trace.getActiveSpan()?.spanContext();
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, msg, ...base };
    if (span) {
      record.trace_id = span.traceId;
      record.span_id = span.spanId;
    }
    for (const [k, v] of Object.entries(fields ?? {})) record[k] = plain(v);
    sink(JSON.stringify(record) + "\n");
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger({ ...base, ...fields }, sink),
  };
}
