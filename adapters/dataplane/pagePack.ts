/**
 * Page packs: unique pages packed together (~256 KiB–1 MiB), compressed, stored under their
 * content address. A pack says its codec; LZ4 is used where it gains, raw where it does not.
 *
 * Layout: "GWPK" | u8 version | u8 codec (0 raw, 1 lz4) | u16 0 | u32 page count |
 *         count × 16-byte keys | payload (count × 4096 bytes, compressed per codec)
 *
 * Its name (content address): version 2 hashes the keys only — the pages are checked
 * against their keys by every reader anyway, and the object store checksums the bytes, so
 * hashing the whole pack once more on each side bought nothing (13% of a destination's CPU
 * with the store's own checksum). Version 1 (older retained packs) hashed all its bytes.
 */
import { createHash } from "node:crypto";
import { compress, decompress } from "lz4-wasm-nodejs";
import { KEY_BYTES, PAGE_SIZE } from "./contentKey.ts";

const MAGIC_BYTES = Buffer.from("GWPK");
const HEADER_BYTES = 12;

export const PackCodecId = { raw: 0, lz4: 1 } as const;
export type PackCodecName = keyof typeof PackCodecId;

export class PagePackError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PagePackError";
  }
}
export const isPagePackError = (e: unknown): e is PagePackError => e instanceof PagePackError;

export interface EncodedPack {
  /** Object name: "pack-" + the first 32 hex digits of the SHA-256 of its keys (packNameOf). */
  name: string;
  bytes: Uint8Array;
  codec: PackCodecName;
  pages: number;
  rawBytes: number;
}

/** Packs pages (keys[i] names pages[i*4096…]); LZ4 when it saves at least 1/16, else raw. */
export function encodePack(keys: Uint8Array, pages: Uint8Array): EncodedPack {
  const count = keys.byteLength / KEY_BYTES;
  if (!Number.isInteger(count) || pages.byteLength !== count * PAGE_SIZE) throw new PagePackError(`pack of ${count} keys needs ${count * PAGE_SIZE} page bytes, got ${pages.byteLength}`);
  const lz = compress(pages);
  const useLz4 = lz.byteLength < pages.byteLength - pages.byteLength / 16;
  const payload = useLz4 ? lz : pages;
  const out = new Uint8Array(HEADER_BYTES + keys.byteLength + payload.byteLength);
  out.set(MAGIC_BYTES, 0);
  out[4] = 2;
  out[5] = useLz4 ? PackCodecId.lz4 : PackCodecId.raw;
  new DataView(out.buffer).setUint32(8, count);
  out.set(keys, HEADER_BYTES);
  out.set(payload, HEADER_BYTES + keys.byteLength);
  return { name: nameOfKeys(keys), bytes: out, codec: useLz4 ? "lz4" : "raw", pages: count, rawBytes: pages.byteLength };
}

export interface DecodedPack {
  codec: PackCodecName;
  /** count × 16-byte keys */
  keys: Uint8Array;
  /** count × 4096 bytes, in key order */
  pages: Uint8Array;
  count: number;
}

/** Unpacks and checks structure; content-to-key checks are the caller's (it holds the keyer). */
export function decodePack(bytes: Uint8Array): DecodedPack {
  if (bytes.byteLength < HEADER_BYTES || !Buffer.from(bytes.buffer, bytes.byteOffset, 4).equals(MAGIC_BYTES)) throw new PagePackError("not a page pack (bad magic)");
  if (bytes[4] !== 1 && bytes[4] !== 2) throw new PagePackError(`unsupported page pack version ${bytes[4]}`);
  const codecId = bytes[5];
  const count = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8);
  const keysEnd = HEADER_BYTES + count * KEY_BYTES;
  if (bytes.byteLength < keysEnd) throw new PagePackError(`pack truncated: ${count} keys need ${keysEnd} bytes, have ${bytes.byteLength}`);
  const keys = bytes.subarray(HEADER_BYTES, keysEnd);
  const payload = bytes.subarray(keysEnd);
  let pages: Uint8Array;
  if (codecId === PackCodecId.raw) pages = payload;
  else if (codecId === PackCodecId.lz4) {
    try {
      pages = decompress(payload);
    } catch (err) {
      throw new PagePackError("pack payload does not decompress (lz4)", { cause: err });
    }
  } else throw new PagePackError(`unknown pack codec ${codecId}`);
  if (pages.byteLength !== count * PAGE_SIZE) throw new PagePackError(`pack holds ${pages.byteLength} page bytes, expected ${count} × ${PAGE_SIZE}`);
  return { codec: codecId === PackCodecId.lz4 ? "lz4" : "raw", keys, pages, count };
}

const nameOfKeys = (keys: Uint8Array) => `pack-${createHash("sha256").update(keys).digest("hex").slice(0, 32)}`;

/**
 * The content address a pack's bytes must have: of its keys (version 2), of all its bytes
 * (version 1). Bytes that are not a pack (or truncated in the keys) name no pack.
 */
export function packNameOf(bytes: Uint8Array): string {
  if (bytes.byteLength >= HEADER_BYTES && bytes[4] === 2) {
    const count = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8);
    const keysEnd = HEADER_BYTES + count * KEY_BYTES;
    if (keysEnd <= bytes.byteLength) return nameOfKeys(bytes.subarray(HEADER_BYTES, keysEnd));
  }
  return `pack-${createHash("sha256").update(bytes).digest("hex").slice(0, 32)}`;
}
