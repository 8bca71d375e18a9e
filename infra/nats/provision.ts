/**
 * Creates the streams, KV buckets and object stores gangway needs, idempotently: a second
 * run (or a second process starting at the same time) changes nothing.
 */
import { jetstreamManager, jetstream, RetentionPolicy, StorageType, type StreamConfig, JetStreamApiError } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { DEDUP_BUCKET, EVENTS_STREAM, EVENTS_SUBJECTS, PACK_STORE, RUNS_BUCKET, STATE_BUCKET } from "./resources.ts";

const NS_PER_MS = 1_000_000;

export interface ProvisionOptions {
  /** How long the audit stream keeps events, in days. @default 30 */
  retentionDays?: number;
  /** Window in which a re-published event id is dropped by the stream, in ms. @default 600000 (10 min) */
  duplicateWindowMs?: number;
  /** Replicas for streams and buckets (3 on a cluster). @default 1 */
  replicas?: number;
  /** JetStream storage. @default "file" */
  storage?: "file" | "memory";
}

export async function provision(nc: NatsConnection, opts: ProvisionOptions = {}): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const replicas = opts.replicas ?? 1;
  const storage = opts.storage === "memory" ? StorageType.Memory : StorageType.File;
  const events: Partial<StreamConfig> & { name: string } = {
    name: EVENTS_STREAM,
    description: "gangway: every event and command (work for functions; the audit log)",
    subjects: EVENTS_SUBJECTS,
    retention: RetentionPolicy.Limits,
    storage,
    num_replicas: replicas,
    max_age: (opts.retentionDays ?? 30) * 24 * 3600 * 1000 * NS_PER_MS,
    duplicate_window: (opts.duplicateWindowMs ?? 600_000) * NS_PER_MS,
    max_msg_size: 8 * 1024 * 1024,
  };
  try {
    await jsm.streams.add(events);
  } catch (err) {
    // Exists already (maybe with other limits an operator chose): keep theirs, check subjects.
    if (!(err instanceof JetStreamApiError)) throw err;
    const info = await jsm.streams.info(EVENTS_STREAM);
    if (!EVENTS_SUBJECTS.every((s) => info.config.subjects?.includes(s))) {
      throw new Error(`stream ${EVENTS_STREAM} exists without subjects ${EVENTS_SUBJECTS.join(",")}`, { cause: err });
    }
  }
  const js = jetstream(nc);
  const kvm = new Kvm(js);
  await kvm.create(RUNS_BUCKET, { history: 1, ttl: 24 * 3600 * 1000, replicas, storage });
  await kvm.create(STATE_BUCKET, { history: 1, replicas, storage });
  await kvm.create(DEDUP_BUCKET, { history: 1, replicas, storage });
  await new Objm(js).create(PACK_STORE, { replicas, storage, description: "gangway page packs (content-addressed)" });
}
