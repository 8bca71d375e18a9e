import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { KeyTable } from "../../kit/keyTable.ts";

const hex = (b: Uint8Array, at: number) => Buffer.from(b.buffer, b.byteOffset + at, 16).toString("hex");

describe("KeyTable", () => {
  it("agrees with a Map under random sets, deletes and look-ups, across growth, at unaligned offsets", () => {
    const t = new KeyTable(8);
    const ref = new Map<string, number>();
    // Keys that share their first four bytes (one head, many keys) and keys at odd offsets.
    const pool = randomBytes(3000 * 16 + 1);
    for (let i = 0; i < 300; i++) pool.copy(pool, 1 + i * 16, 1, 5);
    for (let step = 0; step < 40_000; step++) {
      const at = 1 + Math.floor(Math.random() * 3000) * 16;
      const k = hex(pool, at);
      const op = Math.random();
      if (op < 0.5) {
        const v = Math.floor(Math.random() * 1e9);
        t.set(pool, at, v);
        ref.set(k, v);
      } else if (op < 0.7) expect(t.delete(pool, at)).toBe(ref.delete(k));
      else {
        expect(t.get(pool, at)).toBe(ref.get(k));
        expect(t.has(pool, at)).toBe(ref.has(k));
      }
      expect(t.size).toBe(ref.size);
    }
    const seen = new Map<string, number>();
    t.forEach((key, v) => seen.set(hex(key, 0), v));
    expect(seen).toEqual(ref);
    t.clear();
    expect(t.size).toBe(0);
    expect(t.get(pool, 1)).toBeUndefined();
  });

  it("keeps values as numbers up to 2^53 (pack slot handles)", () => {
    const t = new KeyTable();
    const k = randomBytes(16);
    t.set(k, 0, 2 ** 40 + 7);
    expect(t.get(k)).toBe(2 ** 40 + 7);
  });
});
