/** The data plane's pure pieces: keys per tenant, page packs, manifest records, image digests. */
import { describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { createPageKeyer, isZeroPage, keyHex, uniformByte, PAGE_SIZE } from "../../adapters/dataplane/contentKey.ts";
import { decodePack, encodePack, isPagePackError, packNameOf } from "../../adapters/dataplane/pagePack.ts";
import { ManifestWriter, readManifestRecords } from "../../adapters/dataplane/manifestRecords.ts";
import { ImageDigest } from "../../adapters/dataplane/imageDigest.ts";
import { ManifestKind } from "../../schemas/index.ts";

const page = (fill?: number) => (fill === undefined ? randomBytes(PAGE_SIZE) : Buffer.alloc(PAGE_SIZE, fill));

describe("content keys", () => {
  it("are stable per tenant, differ across tenants and across contents", () => {
    const p = page();
    const a = createPageKeyer("alpha", "secret");
    const b = createPageKeyer("beta", "secret");
    expect(keyHex(a.key(p))).toBe(keyHex(createPageKeyer("alpha", "secret").key(Buffer.from(p))));
    expect(keyHex(a.key(p))).not.toBe(keyHex(b.key(p)));
    expect(keyHex(a.key(p))).not.toBe(keyHex(createPageKeyer("alpha", "other-secret").key(p)));
    expect(keyHex(a.key(p))).not.toBe(keyHex(a.key(page())));
  });

  it("stillKeyed: a page keeps its key until any byte of it changes; an image read of changed bytes sets the full key", () => {
    const k = createPageKeyer("alpha", "secret");
    const p = page();
    const keys = new Uint8Array(3 + 16);
    k.keyInto(p, keys, 3);
    expect(k.stillKeyed(p, keys, 3)).toBe(true);
    const image = new ImageDigest([4 * PAGE_SIZE]);
    image.keyed(0, PAGE_SIZE, keys, 3);
    const scratch = new Uint8Array(16);
    expect(image.setFromBytes(0, PAGE_SIZE, p, k, scratch)).toBe(false);
    for (const at of [0, 1, 2047, 4095]) {
      const q = Buffer.from(p);
      q[at] ^= 1;
      expect(k.stillKeyed(q, keys, 3), `byte ${at}`).toBe(false);
      const changed = image.clone();
      expect(changed.setFromBytes(0, PAGE_SIZE, q, k, scratch)).toBe(true);
      const want = image.clone();
      want.keyed(0, PAGE_SIZE, k.key(q));
      expect(changed.digest()).toBe(want.digest());
    }
  });

  it("classifies zero and uniform pages", () => {
    expect(isZeroPage(page(0))).toBe(true);
    expect(uniformByte(page(0))).toBe(0);
    expect(uniformByte(page(0xab))).toBe(0xab);
    const almost = page(7);
    almost[1000] = 8;
    expect(uniformByte(almost)).toBeUndefined();
  });
});

describe("page packs", () => {
  const keyer = createPageKeyer("t", "s");
  const build = (pages: Buffer[]) => {
    const keys = new Uint8Array(pages.length * 16);
    pages.forEach((p, i) => keyer.keyInto(p, keys, i * 16));
    return { keys, data: Buffer.concat(pages) };
  };

  it("compress what compresses, keep raw what does not, and round-trip", () => {
    const text = Array.from({ length: 8 }, (_, i) => Buffer.from(`page ${i} `.repeat(600).slice(0, PAGE_SIZE)));
    const compressible = build(text);
    const packed = encodePack(compressible.keys, compressible.data);
    expect(packed.codec).toBe("lz4");
    expect(packed.bytes.byteLength).toBeLessThan(compressible.data.byteLength / 4);
    expect(packed.name).toBe(packNameOf(packed.bytes));
    const back = decodePack(packed.bytes);
    expect(Buffer.from(back.pages).equals(compressible.data)).toBe(true);
    expect(Buffer.from(back.keys).equals(Buffer.from(compressible.keys))).toBe(true);

    const noise = build([page(), page(), page()]);
    const raw = encodePack(noise.keys, noise.data);
    expect(raw.codec).toBe("raw");
    expect(Buffer.from(decodePack(raw.bytes).pages).equals(noise.data)).toBe(true);
  });

  it("reject truncated and corrupted packs with a reason", () => {
    const { keys, data } = build([page(), page()]);
    const packed = encodePack(keys, data);
    expect(() => decodePack(packed.bytes.subarray(0, 40))).toThrow(/truncated|expected/);
    const bad = Buffer.from(packed.bytes);
    bad[0] = 0x58;
    try {
      decodePack(bad);
      expect.unreachable();
    } catch (e) {
      expect(isPagePackError(e)).toBe(true);
    }
    // The name is its keys': a flipped key byte names another pack; a flipped payload byte
    // keeps the name, and its page no longer matches its key (what every reader checks).
    const keyFlipped = Buffer.from(packed.bytes);
    keyFlipped[12 + 5]! ^= 1;
    expect(packNameOf(keyFlipped)).not.toBe(packed.name);
    const flipped = Buffer.from(packed.bytes);
    flipped[flipped.length - 1]! ^= 1;
    expect(packNameOf(flipped)).toBe(packed.name);
    const back = decodePack(flipped);
    expect(keyHex(keyer.key(Buffer.from(back.pages.subarray(PAGE_SIZE))))).not.toBe(keyHex(back.keys, 16));
    // A version 1 pack (retained from before) is named by all its bytes.
    const v1 = Buffer.from(packed.bytes);
    v1[4] = 1;
    expect(packNameOf(v1)).toBe(`pack-${createHash("sha256").update(v1).digest("hex").slice(0, 32)}`);
    expect(decodePack(v1).count).toBe(2);
  });
});

describe("manifest records and image digests", () => {
  it("round-trip records", () => {
    const w = new ManifestWriter(4);
    const key = new Uint8Array(16).fill(9);
    w.addZero(0, 0, 0);
    w.addPage(4096, 1, key);
    w.addZero(8192, 0, 0xff);
    expect(w.full).toBe(false);
    const { count, body } = w.take();
    const recs = [...readManifestRecords(body, count)];
    expect(recs.map((r) => [r.offset, r.block, r.kind, r.fill])).toEqual([[0, 0, ManifestKind.zero, 0], [4096, 1, ManifestKind.page, 0], [8192, 0, ManifestKind.zero, 0xff]]);
    expect(Buffer.from(body.subarray(recs[1]!.keyAt, recs[1]!.keyAt + 16)).equals(Buffer.from(key))).toBe(true);
    expect(w.count).toBe(0);
  });

  it("digest the last content of every page, whatever the order it arrived in", () => {
    const k1 = new Uint8Array(16).fill(1);
    const k2 = new Uint8Array(16).fill(2);
    const a = new ImageDigest([3 * PAGE_SIZE]);
    a.keyed(0, 0, k1);
    a.fill(0, PAGE_SIZE, 0);
    a.keyed(0, 2 * PAGE_SIZE, k1);
    a.keyed(0, 2 * PAGE_SIZE, k2); // a later round rewrote it
    const b = new ImageDigest([3 * PAGE_SIZE]);
    b.keyed(0, 2 * PAGE_SIZE, k2);
    b.fill(0, PAGE_SIZE, 0);
    b.keyed(0, 0, k1);
    expect(a.digest()).toBe(b.digest());
    expect(a.pages()).toBe(3);
    expect(a.totalPages()).toBe(3);
    b.fill(0, 0, 0);
    expect(a.digest()).not.toBe(b.digest());
    expect(() => a.keyed(0, 3 * PAGE_SIZE, k1)).toThrow(RangeError);
  });
});
