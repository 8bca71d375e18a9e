/**
 * A table of 16-byte content keys to numbers, kept in typed arrays: the per-page look-ups
 * of the data path (has the gang met this key, which pack slot holds it) without a hex
 * string and a Map entry per page (1.07 against ~0.1 µs a look-up, DESIGN.md).
 *
 * Open addressing with linear probing over a power-of-two slot array. Keys are xxh3/xxh64
 * outputs under a per-tenant secret, so their first bytes are already uniform and the slot
 * is taken from them directly; nobody outside the cluster can choose keys that collide.
 */
import { KEY_BYTES } from "../schemas/index.ts";

const EMPTY = 0;
const USED = 1;
const DELETED = 2;

export class KeyTable {
  private capacity: number;
  private keys: Uint8Array;
  /** Each slot's first four key bytes as a number: most mismatches end at this compare. */
  private heads: Uint32Array;
  private values: Float64Array;
  private state: Uint8Array;
  private used = 0;
  private tombstones = 0;

  constructor(expected = 1024) {
    this.capacity = 1 << Math.max(4, Math.ceil(Math.log2(expected * 2)));
    this.keys = new Uint8Array(this.capacity * KEY_BYTES);
    this.heads = new Uint32Array(this.capacity);
    this.values = new Float64Array(this.capacity);
    this.state = new Uint8Array(this.capacity);
  }

  get size(): number {
    return this.used;
  }

  /** The value stored for the key at `key[at…at+16)`, or undefined. */
  get(key: Uint8Array, at = 0): number | undefined {
    const slot = this.find(key, at);
    return slot < 0 ? undefined : this.values[slot];
  }

  has(key: Uint8Array, at = 0): boolean {
    return this.find(key, at) >= 0;
  }

  set(key: Uint8Array, at: number, value: number): void {
    if ((this.used + this.tombstones + 1) * 4 > this.capacity * 3) this.grow();
    const mask = this.capacity - 1;
    const head = this.hash(key, at);
    let slot = head & mask;
    let reuse = -1;
    for (;;) {
      const s = this.state[slot]!;
      if (s === EMPTY) break;
      if (s === DELETED) {
        if (reuse < 0) reuse = slot;
      } else if (this.equals(slot, head, key, at)) {
        this.values[slot] = value;
        return;
      }
      slot = (slot + 1) & mask;
    }
    if (reuse >= 0) {
      slot = reuse;
      this.tombstones--;
    }
    this.keys.set(key.subarray(at, at + KEY_BYTES), slot * KEY_BYTES);
    this.heads[slot] = head;
    this.values[slot] = value;
    this.state[slot] = USED;
    this.used++;
  }

  /** Removes the key; true if it was there. */
  delete(key: Uint8Array, at = 0): boolean {
    const slot = this.find(key, at);
    if (slot < 0) return false;
    this.state[slot] = DELETED;
    this.used--;
    this.tombstones++;
    return true;
  }

  clear(): void {
    this.state.fill(EMPTY);
    this.used = 0;
    this.tombstones = 0;
  }

  /** Every key (a view into the table: copy it to keep it) with its value. */
  forEach(f: (key: Uint8Array, value: number) => void): void {
    for (let slot = 0; slot < this.capacity; slot++) {
      if (this.state[slot] === USED) f(this.keys.subarray(slot * KEY_BYTES, (slot + 1) * KEY_BYTES), this.values[slot]!);
    }
  }

  private hash(key: Uint8Array, at: number): number {
    return (key[at]! | (key[at + 1]! << 8) | (key[at + 2]! << 16) | (key[at + 3]! << 24)) >>> 0;
  }

  private equals(slot: number, head: number, key: Uint8Array, at: number): boolean {
    if (this.heads[slot] !== head) return false;
    const k = this.keys;
    const b = slot * KEY_BYTES;
    for (let i = 4; i < KEY_BYTES; i++) if (k[b + i] !== key[at + i]) return false;
    return true;
  }

  private find(key: Uint8Array, at: number): number {
    const mask = this.capacity - 1;
    const head = this.hash(key, at);
    let slot = head & mask;
    for (;;) {
      const s = this.state[slot]!;
      if (s === EMPTY) return -1;
      if (s === USED && this.equals(slot, head, key, at)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  private grow(): void {
    const old = { keys: this.keys, values: this.values, state: this.state, capacity: this.capacity };
    // Mostly tombstones: rebuild at the same size; else double.
    if (this.used * 4 >= this.capacity) this.capacity *= 2;
    this.keys = new Uint8Array(this.capacity * KEY_BYTES);
    this.heads = new Uint32Array(this.capacity);
    this.values = new Float64Array(this.capacity);
    this.state = new Uint8Array(this.capacity);
    this.used = 0;
    this.tombstones = 0;
    for (let slot = 0; slot < old.capacity; slot++) if (old.state[slot] === USED) this.set(old.keys, slot * KEY_BYTES, old.values[slot]!);
  }
}
