/**
 * Migration metrics in KubeVirt's shape (kubevirt_vmi_migration_data_processed_bytes,
 * _data_remaining_bytes, _dirty_memory_rate_bytes, _memory_transfer_rate_bytes, migrations by
 * phase and outcome), from the events every migration already publishes: the latest progress
 * and dirty-log round of each VM in flight, gauged per migration and VM; outcomes counted.
 * Exported with the process's other metrics (OTLP, or Prometheus with `gangway up
 * --metrics-port`). A VM's series go a while after its migration ended, so a long-lived
 * exporter does not keep every migration it ever saw.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Attributes, ObservableResult } from "@opentelemetry/api";
import type { z } from "zod";
import { dirtyRound, migrationCancelled, migrationFailed, migrationProgress, migrationSucceeded, PAGE_SIZE } from "../schemas/index.ts";
import { decodeMessage } from "./events/binding.ts";
import { meter } from "./telemetry.ts";

type Progress = z.infer<typeof migrationProgress.data>;

interface VmSeries {
  progress?: Progress;
  dirtyBytesPerSecond?: number;
  endedAt?: number;
}

export interface MigrationMetrics {
  close(): void;
}

/** How long a finished migration's series stay (one or two scrapes see its last values). */
const KEEP_ENDED_MS = 120_000;

export function watchMigrationMetrics(nc: NatsConnection): MigrationMetrics {
  const series = new Map<string, VmSeries>();
  const of = (migrationId: string, vm: string) => series.get(`${migrationId}/${vm}`) ?? series.set(`${migrationId}/${vm}`, {}).get(`${migrationId}/${vm}`)!;
  const outcomes = meter().createCounter("gangway.migrations", { description: "migrations ended, by outcome (kubevirt_vmi_migration_succeeded / _failed)" });
  const m = meter();
  const gauge = (name: string, description: string, unit: string, value: (s: VmSeries) => number | undefined) => {
    m.createObservableGauge(name, { description, unit }).addCallback((r: ObservableResult<Attributes>) => {
      for (const [k, s] of series) {
        const v = value(s);
        const [migration, vm] = k.split("/") as [string, string];
        if (v !== undefined) r.observe(v, { "gangway.migration": migration, "gangway.vm": vm });
      }
    });
  };
  gauge("gangway.migration.data_processed_bytes", "bytes of the VM's migration stream processed so far (kubevirt_vmi_migration_data_processed_bytes)", "By", (s) => s.progress?.stats.data_processed);
  gauge("gangway.migration.data_remaining_bytes", "bytes of guest memory still to send (kubevirt_vmi_migration_data_remaining_bytes)", "By", (s) => s.progress?.stats.memory_remaining ?? s.progress?.stats.data_remaining);
  gauge("gangway.migration.data_total_bytes", "bytes of guest memory (kubevirt_vmi_migration_data_total_bytes)", "By", (s) => s.progress?.stats.memory_total);
  gauge("gangway.migration.memory_transfer_rate_bytes", "bytes per second of guest memory the pipeline takes in (kubevirt_vmi_migration_memory_transfer_rate_bytes)", "By/s", (s) => s.progress?.stats.memory_bps);
  gauge("gangway.migration.dirty_memory_rate_bytes", "bytes per second the guest dirties, from the last pass (kubevirt_vmi_migration_dirty_memory_rate_bytes)", "By/s", (s) => s.dirtyBytesPerSecond);
  gauge("gangway.migration.link_bytes", "bytes gangway put on the link for the VM (the saving against data_processed)", "By", (s) => s.progress?.stats.bytes_on_link);
  gauge("gangway.migration.pages_deduplicated", "pages that crossed as their key only", "{page}", (s) => s.progress?.stats.pages_deduplicated);
  gauge("gangway.migration.round", "the pre-copy pass under way", "{round}", (s) => s.progress?.stats.memory_iteration);
  m.createObservableGauge("gangway.migrations.in_phase", { description: "VMs migrating, by phase (kubevirt_vmi_migrations_in_*_phase)", unit: "{vm}" }).addCallback((r) => {
    const by = new Map<string, number>();
    for (const s of series.values()) if (s.progress && s.endedAt === undefined) by.set(s.progress.phase, (by.get(s.progress.phase) ?? 0) + 1);
    for (const [phase, n] of by) r.observe(n, { "gangway.phase": phase });
  });

  const subs: Subscription[] = [];
  const on = (subject: string, f: (d: ReturnType<typeof decodeMessage>) => void) =>
    subs.push(nc.subscribe(subject, { callback: (err, msg) => void (err ? undefined : f(decodeMessage(msg.subject, msg.data, msg.headers))) }));
  on(migrationProgress.filter, (d) => {
    if (!d.ok || d.definition !== migrationProgress || d.event.mode !== "structured") return;
    const p = d.event.data as Progress;
    if (p.vm && p.stats.data_processed >= 0) of(p.migrationId, p.vm).progress = p;
  });
  on(dirtyRound.filter, (d) => {
    if (!d.ok || d.definition !== dirtyRound || d.event.mode !== "structured") return;
    const r = d.event.data as z.infer<typeof dirtyRound.data>;
    of(r.migrationId, r.vm).dirtyBytesPerSecond = r.dirtyRate * PAGE_SIZE;
  });
  for (const [def, outcome] of [[migrationSucceeded, "succeeded"], [migrationFailed, "failed"], [migrationCancelled, "cancelled"]] as const) {
    on(def.filter, (d) => {
      if (!d.ok || d.definition !== def || d.event.mode !== "structured") return;
      const id = (d.event.data as { migrationId: string }).migrationId;
      outcomes.add(1, { "gangway.outcome": outcome });
      for (const [k, s] of series) if (k.startsWith(`${id}/`)) s.endedAt = Date.now();
    });
  }
  const sweep = setInterval(() => {
    for (const [k, s] of series) if (s.endedAt !== undefined && Date.now() - s.endedAt > KEEP_ENDED_MS) series.delete(k);
  }, 10_000);
  sweep.unref();
  return {
    close() {
      clearInterval(sweep);
      for (const s of subs) s.unsubscribe();
    },
  };
}
