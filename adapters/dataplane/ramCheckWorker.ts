/**
 * A RAM-check worker (ramCheck.ts): reads its range of a stopped VM's RAM file and answers
 * which pages no longer hold what their image entries say. Keying is the proof's heaviest
 * step; several of these share it out over the host's cores.
 */
import { parentPort } from "node:worker_threads";
import { open } from "node:fs/promises";
import { createPageKeyer, PAGE_SIZE, type PageKeyer } from "./contentKey.ts";
import { ENTRY_BYTES, entryHolds } from "./imageDigest.ts";
import type { RamCheckJob, RamCheckAnswer } from "./ramCheck.ts";

const CHUNK = 256 * PAGE_SIZE;
const keyers = new Map<string, PageKeyer>();

async function check(job: RamCheckJob): Promise<number[]> {
  const keyer = keyers.get(job.tenant) ?? keyers.set(job.tenant, createPageKeyer(job.tenant)).get(job.tenant)!;
  const differing: number[] = [];
  const fh = await open(job.ramPath, "r");
  try {
    const chunk = Buffer.allocUnsafe(CHUNK);
    for (let off = job.from; off < job.to; off += CHUNK) {
      const want = Math.min(CHUNK, job.to - off);
      const { bytesRead } = await fh.read(chunk, 0, want, off);
      if (bytesRead < want) throw new Error(`RAM file ${job.ramPath} ends at ${off + bytesRead} bytes, block has ${job.to}`);
      for (let p = 0; p < bytesRead; p += PAGE_SIZE) {
        const at = ((off + p - job.from) / PAGE_SIZE) * ENTRY_BYTES;
        if (!entryHolds(job.entries, at, chunk.subarray(p, p + PAGE_SIZE), keyer)) differing.push(off + p);
      }
    }
  } finally {
    await fh.close();
  }
  return differing;
}

parentPort!.on("message", (job: RamCheckJob) => {
  check(job).then(
    (differing): void => parentPort!.postMessage({ id: job.id, differing } satisfies RamCheckAnswer),
    (err: Error): void => parentPort!.postMessage({ id: job.id, error: err.message } satisfies RamCheckAnswer),
  );
});
