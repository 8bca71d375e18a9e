/**
 * Reads a guest-RAM file (memory-backend-file: offset = guest-physical address of block m0)
 * page by page, in 1 MiB reads. A page is valid until the next one is yielded: copy it to keep it.
 */
import { open } from "node:fs/promises";
import { PAGE_SIZE } from "./contentKey.ts";

const CHUNK = 256 * PAGE_SIZE;

export async function* ramPages(path: string, sizeBytes: number): AsyncGenerator<{ offset: number; page: Buffer }> {
  const fh = await open(path, "r");
  try {
    const chunk = Buffer.allocUnsafe(CHUNK);
    const size = Math.floor(sizeBytes / PAGE_SIZE) * PAGE_SIZE;
    for (let off = 0; off < size; off += CHUNK) {
      const { bytesRead } = await fh.read(chunk, 0, Math.min(CHUNK, size - off), off);
      for (let p = 0; p + PAGE_SIZE <= bytesRead; p += PAGE_SIZE) yield { offset: off + p, page: chunk.subarray(p, p + PAGE_SIZE) };
      if (bytesRead < Math.min(CHUNK, size - off)) return; // the file is shorter than said
    }
  } finally {
    await fh.close();
  }
}
