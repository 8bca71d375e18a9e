/**
 * Content keys of 4 KiB pages: 128 bits, keyed per tenant. Two xxh64 (xxhash-wasm, ~6 GB/s)
 * with seeds derived by HMAC-SHA256 from a cluster secret and the tenant name, so the same
 * page of two tenants gets unrelated keys: pages of different tenants never dedup, and a
 * tenant that cannot compute another's keys cannot probe the index for its pages (the reason
 * VMware switched cross-VM page sharing off by default). The secret never leaves the hosts.
 */
import { createHmac } from "node:crypto";
import xxhash from "xxhash-wasm";

export const PAGE_SIZE = 4096;
export const KEY_BYTES = 16;

const api = await xxhash();

export interface PageKeyer {
  readonly tenant: string;
  /** Writes the 16-byte key of `page` into `out` at `at`. */
  keyInto(page: Uint8Array, out: Uint8Array, at: number): void;
  key(page: Uint8Array): Uint8Array;
  /**
   * Whether `page` still has the key at `key[at…at+16)`, from the key's first half only (one
   * xxh64 instead of two): used where a page is expected to be unchanged (the proofs' reads of
   * a whole RAM), where a mismatch is then keyed in full. Two different pages pass only if
   * their seeded xxh64 collide: ~2^-64 per page, and the seed is secret to the hosts.
   */
  stillKeyed(page: Uint8Array, key: Uint8Array, at: number): boolean;
}

/**
 * The cluster secret: GANGWAY_KEY_SECRET in production (every host agent of a cluster
 * gets the same one). Without it a fixed development secret is used, which still keeps
 * tenants apart but is public.
 */
export function clusterSecret(): string {
  return process.env.GANGWAY_KEY_SECRET ?? "gangway-development-secret";
}

export function createPageKeyer(tenant: string, secret: string = clusterSecret()): PageKeyer {
  const mac = createHmac("sha256", secret).update(`gangway/page-key/v1/${tenant}`).digest();
  const seedA = mac.readBigUInt64BE(0);
  const seedB = mac.readBigUInt64BE(8);
  const keyInto = (page: Uint8Array, out: Uint8Array, at: number) => {
    const a = api.h64Raw(page, seedA);
    const b = api.h64Raw(page, seedB);
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    view.setBigUint64(at, a);
    view.setBigUint64(at + 8, b);
  };
  return {
    tenant,
    keyInto,
    stillKeyed(page, key, at) {
      return api.h64Raw(page, seedA) === new DataView(key.buffer, key.byteOffset, key.byteLength).getBigUint64(at);
    },
    key(page) {
      const out = new Uint8Array(KEY_BYTES);
      keyInto(page, out, 0);
      return out;
    },
  };
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);
export function isZeroPage(page: Uint8Array): boolean {
  return Buffer.from(page.buffer, page.byteOffset, page.byteLength).equals(ZERO_PAGE);
}

const FILL_PAGES = new Map<number, Buffer>();
/** A page of one byte value, shared: read it, never write it (views of it go into streams). */
export const fillPage = (fill: number): Buffer => FILL_PAGES.get(fill) ?? FILL_PAGES.set(fill, Buffer.alloc(PAGE_SIZE, fill)).get(fill)!;

/**
 * The byte a page is filled with, or undefined if its bytes differ. Such a page travels as
 * one fill record, never as data; both ends classify pages with this same function.
 */
export function uniformByte(page: Uint8Array): number | undefined {
  const b = page[0]!;
  if (page[PAGE_SIZE - 1] !== b || page[PAGE_SIZE >> 1] !== b) return undefined;
  return Buffer.from(page.buffer, page.byteOffset, PAGE_SIZE).equals(fillPage(b)) ? b : undefined;
}

export const keyHex = (key: Uint8Array, at = 0): string => Buffer.from(key.buffer, key.byteOffset + at, KEY_BYTES).toString("hex");
export const keyFromHex = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex, "hex"));
