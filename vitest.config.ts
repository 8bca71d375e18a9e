import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "functions/**/*.test.ts", "schemas/**/*.test.ts", "adapters/**/*.test.ts", "infra/**/*.test.ts", "cli/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // QEMU under TCG and nats-server are heavy on 2 cores: keep files from piling up.
    fileParallelism: true,
    maxWorkers: 2,
    env: { OTEL_TRACES_EXPORTER: "none", OTEL_METRICS_EXPORTER: "none", OTEL_LOGS_EXPORTER: "none" },
  },
});
