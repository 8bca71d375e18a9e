/**
 * The proof's RAM check on worker threads: a stopped VM's RAM file is split into ranges, and
 * each is checked against the image's entries by its own worker, in parallel. The guest is
 * stopped while this runs (it is the longest step of the proof); on a host with cores to
 * spare it takes a fraction of one thread's time, and on a busy one it is not held to one
 * thread's share of the CPU. The host starts them with its first migration (one costs a few
 * hundred ms to start, which a downtime should not pay); they wait unreferenced.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { PAGE_SIZE } from "./contentKey.ts";
import { ENTRY_BYTES } from "./imageDigest.ts";

export interface RamCheckJob {
  id: number;
  ramPath: string;
  tenant: string;
  /** Byte offsets in the file: [from, to). */
  from: number;
  to: number;
  /** The image entries of exactly those pages (its own buffer: transferred). */
  entries: Uint8Array<ArrayBuffer>;
}
export type RamCheckAnswer = { id: number; differing: number[] } | { id: number; error: string };

export interface RamChecker {
  /** Byte offsets of the pages in [0, sizeBytes) whose bytes do not hold their entry, ascending. */
  differing(o: { ramPath: string; tenant: string; sizeBytes: number; entries: Uint8Array }): Promise<number[]>;
  close(): Promise<void>;
}

/** Below this a range is not worth a worker's round trip. */
const MIN_RANGE = 16 * 1024 * 1024;

export function startRamChecker(threads = Math.min(4, availableParallelism())): RamChecker {
  const pending = new Map<number, { resolve: (d: number[]) => void; reject: (e: Error) => void; worker: Worker }>();
  const workers = Array.from({ length: threads }, () => {
    const w = new Worker(new URL("./ramCheckWorker.mjs", import.meta.url));
    w.unref();
    w.on("message", (a: RamCheckAnswer) => {
      const p = pending.get(a.id);
      if (!p) return;
      pending.delete(a.id);
      if ("error" in a) p.reject(new Error(a.error));
      else p.resolve(a.differing);
    });
    // A worker that died fails what it held; the caller reads on its own thread instead.
    w.on("error", (err) => failAll(w, err));
    w.on("exit", (code) => failAll(w, new Error(`RAM-check worker exited (${code})`)));
    return w;
  });
  const dead = new Set<Worker>();
  function failAll(w: Worker, err: Error): void {
    dead.add(w);
    for (const [id, p] of pending) if (p.worker === w) (pending.delete(id), p.reject(err));
  }
  let nextId = 0;
  return {
    async differing(o) {
      const alive = workers.filter((w) => !dead.has(w));
      if (alive.length === 0) throw new Error("no RAM-check worker is running");
      const pages = Math.floor(o.sizeBytes / PAGE_SIZE);
      const parts = Math.max(1, Math.min(alive.length, Math.floor((pages * PAGE_SIZE) / MIN_RANGE)));
      const per = Math.ceil(pages / parts);
      const jobs: Promise<number[]>[] = [];
      for (let i = 0; i < parts; i++) {
        const first = i * per;
        const last = Math.min(pages, first + per);
        if (first >= last) break;
        const worker = alive[i]!;
        const job: RamCheckJob = { id: nextId++, ramPath: o.ramPath, tenant: o.tenant, from: first * PAGE_SIZE, to: last * PAGE_SIZE, entries: new Uint8Array(o.entries.subarray(first * ENTRY_BYTES, last * ENTRY_BYTES)) };
        jobs.push(new Promise<number[]>((resolve, reject) => {
          pending.set(job.id, { resolve, reject, worker });
          worker.postMessage(job, [job.entries.buffer]);
        }));
      }
      return (await Promise.all(jobs)).flat();
    },
    async close() {
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}
