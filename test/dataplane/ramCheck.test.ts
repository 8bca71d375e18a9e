/**
 * The proof's RAM read on worker threads finds exactly what the read on the main thread
 * finds: the same differing pages, in order, and the same digest afterwards; with its workers
 * gone, the read falls back to the main thread.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPageKeyer, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { ImageDigest } from "../../adapters/dataplane/imageDigest.ts";
import { startRamChecker, type RamChecker } from "../../adapters/dataplane/ramCheck.ts";
import { readRamInto } from "../../adapters/dataplane/ramProof.ts";

const SIZE = 40 * 1024 * 1024; // two worker ranges of 20 MiB
const keyer = createPageKeyer("t");
let dir: string;
let ramPath: string;
let image: ImageDigest;
let checker: RamChecker;
// Changed after the image was taken: keyed → other bytes, zero → data, data → zero, one byte of the last page.
const changed = [3 * PAGE_SIZE, 5000 * PAGE_SIZE, 5121 * PAGE_SIZE, SIZE - PAGE_SIZE];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "gw-ramcheck-"));
  ramPath = join(dir, "ram");
  const ram = Buffer.alloc(SIZE);
  for (let p = 0; p < SIZE / PAGE_SIZE; p++) if (p % 4 !== 0) randomBytes(PAGE_SIZE).copy(ram, p * PAGE_SIZE); // every 4th page zero
  await writeFile(ramPath, ram);
  image = new ImageDigest([SIZE]);
  const scratch = new Uint8Array(16);
  for (let off = 0; off < SIZE; off += PAGE_SIZE) image.setFromBytes(0, off, ram.subarray(off, off + PAGE_SIZE), keyer, scratch);
  const fh = await open(ramPath, "r+");
  await fh.write(randomBytes(PAGE_SIZE), 0, PAGE_SIZE, changed[0]);
  await fh.write(randomBytes(PAGE_SIZE), 0, PAGE_SIZE, changed[1]); // page 5000 was a zero page
  await fh.write(Buffer.alloc(PAGE_SIZE), 0, PAGE_SIZE, changed[2]);
  await fh.write(Buffer.from([0x5a]), 0, 1, changed[3]! + 17);
  await fh.close();
  checker = startRamChecker(2);
});
afterAll(async () => {
  await checker?.close();
  await rm(dir, { recursive: true, force: true });
});

async function read(withChecker?: RamChecker) {
  const img = image.clone();
  const seen: number[] = [];
  const r = await readRamInto({ image: img, block: 0, ramPath, sizeBytes: SIZE, keyer, onDiffer: (off) => seen.push(off), ...(withChecker ? { checker: withChecker } : {}) });
  return { differing: r.differing, first: r.firstDiffering, pages: r.pages, seen, digest: img.digest(), recorded: img.pages() };
}

describe("RAM check on worker threads", () => {
  it("finds the same pages as the main thread, and leaves the same digest", async () => {
    const here = await read();
    const workers = await read(checker);
    expect(here.seen).toEqual(changed);
    expect(workers).toEqual(here);
    expect(workers.digest).not.toBe(image.digest());
  });

  it("the workers themselves answer the changed pages, each range from its own worker", async () => {
    expect(await checker.differing({ ramPath, tenant: "t", sizeBytes: SIZE, entries: image.entriesOf(0) })).toEqual(changed);
  });

  it("an unchanged file: nothing differs, the digest is the image's", async () => {
    const img = image.clone();
    const r = await readRamInto({ image: img, block: 0, ramPath, sizeBytes: changed[0]!, keyer, checker });
    expect(r).toMatchObject({ differing: 0, pages: 3 });
  });

  it("without its workers, the read is done on the main thread", async () => {
    const gone = startRamChecker(1);
    await gone.close();
    expect(await read(gone)).toEqual(await read());
  });
});
