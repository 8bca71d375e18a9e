/**
 * The source's RAM check begun at the stop, while the last pass still adds to the image,
 * finds exactly what a whole read of the final image finds: the same pages to repair, the
 * same RAM digest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPageKeyer, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { ImageDigest } from "../../adapters/dataplane/imageDigest.ts";
import { startRamChecker, type RamChecker } from "../../adapters/dataplane/ramCheck.ts";
import { checkRamAtStop, readSourceRam } from "../../adapters/host/sourceRamProof.ts";
import type { SentImage } from "../../adapters/host/sourceMigration.ts";

const SIZE = 40 * 1024 * 1024;
const keyer = createPageKeyer("t");
const scratch = new Uint8Array(16);
let dir: string;
let ramPath: string;
let ram: Buffer;
let checker: RamChecker;
/** Stale when the guest stopped and sent again in the last pass (after the check began). */
const lastPass = [7 * PAGE_SIZE, 4000 * PAGE_SIZE, 9000 * PAGE_SIZE];
/** Stale and never sent again (QEMU lost their dirty bits): repairs. */
const lost = [11 * PAGE_SIZE, 6000 * PAGE_SIZE];
/** Held by the RAM at the stop, then recorded otherwise by the last pass: a repair too. */
const wrongInLastPass = 8000 * PAGE_SIZE;

const page = (off: number) => ram.subarray(off, off + PAGE_SIZE);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "gw-ramstop-"));
  ramPath = join(dir, "ram");
  ram = Buffer.alloc(SIZE);
  for (let p = 0; p < SIZE / PAGE_SIZE; p++) if (p % 3 !== 0) randomBytes(PAGE_SIZE).copy(ram, p * PAGE_SIZE);
  await writeFile(ramPath, ram);
  checker = startRamChecker(2);
});
afterAll(async () => {
  await checker?.close();
  await rm(dir, { recursive: true, force: true });
});

/** The image sent before the stop: every page as the RAM holds it, but the stale ones. */
function sentBeforeStop(): SentImage {
  const image = new ImageDigest([SIZE]);
  for (let off = 0; off < SIZE; off += PAGE_SIZE) {
    if ([...lastPass, ...lost].includes(off)) image.keyed(0, off, randomBytes(16));
    else image.setFromBytes(0, off, page(off), keyer, scratch);
  }
  return { image, blocks: [{ id: "m0", usedBytes: SIZE }], origin: () => undefined };
}

/** QEMU's last pass, parsed after the stop. */
function lastPassInto(sent: SentImage): void {
  for (const off of lastPass) sent.image.setFromBytes(0, off, page(off), keyer, scratch);
  sent.image.keyed(0, wrongInLastPass, randomBytes(16));
}

async function proofRead(atStop: boolean) {
  const sent = sentBeforeStop();
  const check = atStop ? checkRamAtStop({ ramPath, sent, keyer, checker }) : undefined;
  if (atStop) expect(check).toBeDefined();
  lastPassInto(sent);
  const r = await readSourceRam({ migrationId: "m", vm: "v", ramPath, sent, keyer, repair: true, checker, ...(check ? { atStop: check } : {}) });
  return { repairs: r.repairs.map((x) => x.offset), differing: r.read.differing, digest: r.ram.digest(), pages: r.read.pages, recorded: r.ram.pages() };
}

describe("the source's RAM check begun at the stop", () => {
  it("repairs what a whole read of the final image repairs, and leaves the same RAM digest", async () => {
    const whole = await proofRead(false);
    const early = await proofRead(true);
    expect(whole.repairs).toEqual([...lost, wrongInLastPass].sort((a, b) => a - b));
    expect(early).toEqual(whole);
  });

  it("without workers there is no early check (the whole read follows at the stream's end)", () => {
    expect(checkRamAtStop({ ramPath, sent: sentBeforeStop(), keyer })).toBeUndefined();
  });
});
