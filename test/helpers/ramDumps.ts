/**
 * Byte-for-byte proof in tests: agents started with GANGWAY_RAM_DUMP_DIR keep a copy of the
 * stopped source's RAM and of the destination's RAM as loaded (before it resumes); these must
 * be equal, whatever gangway's own digests say.
 */
import { open, readdir } from "node:fs/promises";
import { join } from "node:path";

const PAGE = 4096;

/** Offsets of the pages at which two RAM dumps differ (and whether their sizes differ). */
export async function ramDifferences(a: string, b: string): Promise<number[] | { sizes: [number, number] }> {
  const [fa, fb] = await Promise.all([open(a, "r"), open(b, "r")]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return { sizes: [sa.size, sb.size] };
    const ba = Buffer.alloc(256 * PAGE);
    const bb = Buffer.alloc(256 * PAGE);
    const out: number[] = [];
    for (let off = 0; off < sa.size; off += ba.length) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, off), fb.read(bb, 0, bb.length, off)]);
      for (let p = 0; p < Math.min(ra.bytesRead, rb.bytesRead); p += PAGE) if (ba.compare(bb, p, p + PAGE, p, p + PAGE) !== 0) out.push(off + p);
    }
    return out;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** For each VM of a migration: the differing pages between the source's and destination's dumps ("missing" if a dump is). */
export async function compareRamDumps(dir: string, migrationId: string, vms: string[]): Promise<Record<string, string>> {
  const files = new Set(await readdir(dir).catch(() => [] as string[]));
  const out: Record<string, string> = {};
  for (const vm of vms) {
    const [src, dst] = (["source", "destination"] as const).map((side) => `${migrationId}.${vm}.${side}.ram`);
    if (!files.has(src!) || !files.has(dst!)) {
      out[vm] = `missing ${[src, dst].filter((f) => !files.has(f!)).join(", ")}`;
      continue;
    }
    const diff = await ramDifferences(join(dir, src!), join(dir, dst!));
    out[vm] = !Array.isArray(diff) ? `sizes differ: source ${diff.sizes[0]} bytes, destination ${diff.sizes[1]}` : diff.length === 0 ? "identical" : `${diff.length} pages differ, first at 0x${diff[0]!.toString(16)}`;
  }
  return out;
}
