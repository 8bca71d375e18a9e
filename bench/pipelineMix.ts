/**
 * The page mixes of the pipeline benchmark: what each VM's guest RAM holds when it migrates,
 * and what the preparation phase's scan saw earlier (the pages the destination side already
 * holds). Contents are random (crypto), so "never seen" really is never seen; the benchmark
 * checks the destination against the stream the source carried, not against this generator.
 *
 *   present  every page unique and already held (scanned and preseeded before the migration)
 *   new      every page unique, random, never seen (no preparation)
 *   w2       like W2 (DESIGN.md's realistic gang: 4 VMs booting one Debian kernel, 8 MiB of
 *            random data each): 69% zero, 2.6% uniform non-zero, 9.1% the same in every VM of
 *            the gang, 3.8% duplicates within the VM, 15.5% the VM's own (3.1% random, the
 *            rest compressible to ~0.53 with LZ4). The scan saw all of it but 0.5% of the keyed
 *            pages, rewritten since (W2's migration phase sent 0.5%: dedup_ratio 0.005).
 */
import { randomBytes } from "node:crypto";
import type { RamBlockInfo } from "../adapters/qemu/stream/records.ts";

export const PAGE = 4096;
export const MIXES = ["present", "new", "w2"] as const;
export type MixId = (typeof MIXES)[number];

/** A VM's RAM at migration time, block by block, and (if it had one) what its scan read from m0. */
export interface VmMemory {
  blocks: RamBlockInfo[];
  /** Each block's bytes, in `blocks` order. */
  contents: Buffer[];
  /** Block m0 as the preparation scan read it; undefined: no preparation. */
  scanned?: Buffer;
}

/** The RAM blocks of `-machine pc` with a memory backend m0 (DESIGN.md), m0 of `ramBytes`. */
export function pcBlocks(ramBytes: number): RamBlockInfo[] {
  return [
    { id: "m0", usedLength: ramBytes },
    { id: "/rom@etc/acpi/tables", usedLength: 128 * 1024 },
    { id: "pc.bios", usedLength: 256 * 1024 },
    { id: "pc.rom", usedLength: 128 * 1024 },
    { id: "/rom@etc/table-loader", usedLength: PAGE },
    { id: "/rom@etc/acpi/rsdp", usedLength: PAGE },
  ];
}

/** xorshift32: layout decisions only (contents come from crypto). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** Random bytes in 16 MiB draws: one crypto call per page would cost more than the page. */
class RandomPool {
  private buf = Buffer.alloc(0);
  private at = 0;
  take(n: number): Buffer {
    if (this.at + n > this.buf.length) {
      this.buf = randomBytes(Math.max(n, 16 * 1024 * 1024));
      this.at = 0;
    }
    this.at += n;
    return this.buf.subarray(this.at - n, this.at);
  }
}
const pool = new RandomPool();

/**
 * A page shaped like kernel data: 8-byte words, half zero, a quarter pointers into one region,
 * a quarter random. LZ4 takes 1 MiB of them to 0.53 (DESIGN.md: 0.535 on W2's stream).
 */
function compressiblePage(into: Buffer, at: number): void {
  const r = pool.take(PAGE + PAGE / 8);
  const words = PAGE / 8;
  for (let w = 0; w < words; w++) {
    const u = r[PAGE + w]!;
    const o = at + w * 8;
    if (u < 128) into.fill(0, o, o + 8);
    else if (u < 192) {
      into.writeUInt32LE(r.readUInt32LE(w * 8) & 0x00fffff8, o);
      into.writeUInt32LE(0xffff8880, o + 4);
    } else r.copy(into, o, w * 8, w * 8 + 8);
  }
}

const W2 = { zero: 0.69, uniform: 0.026, shared: 0.091, dup: 0.038, own: 0.124, random: 0.031 } as const;
/** Of the keyed pages, the share the scan did not see (rewritten since). */
const W2_NEW_OF_KEYED = 0.005;
const DUP_SOURCES = 32;

/** The pages every VM of a w2 gang has (one kernel and initramfs). */
export function w2SharedPages(ramBytes: number): Buffer {
  const n = Math.max(1, Math.round((ramBytes / PAGE) * W2.shared));
  const b = Buffer.alloc(n * PAGE);
  for (let i = 0; i < n; i++) compressiblePage(b, i * PAGE);
  return b;
}

/** Block m0 of VM `vm` in mix w2, and what its scan read (the rewritten pages had older contents). */
function w2Ram(vm: number, ramBytes: number, shared: Buffer): { ram: Buffer; scanned: Buffer } {
  const pages = ramBytes / PAGE;
  const ram = Buffer.alloc(ramBytes);
  const next = rng(0x5eed + vm * 7919);
  const dups = Buffer.alloc(DUP_SOURCES * PAGE);
  for (let i = 0; i < DUP_SOURCES; i++) compressiblePage(dups, i * PAGE);
  const classes = Object.keys(W2) as (keyof typeof W2)[];
  const rewritten: number[] = [];
  const keyedShare = W2.shared + W2.dup + W2.own + W2.random;
  const pNew = (W2_NEW_OF_KEYED * keyedShare) / (W2.own + W2.random);
  let sharedAt = 0;
  let p = 0;
  // Runs of one class (memory is not page-by-page random: zero regions, a loaded image, a heap).
  while (p < pages) {
    let u = next();
    let cls: keyof typeof W2 = "zero";
    for (const c of classes) {
      if (u < W2[c]) {
        cls = c;
        break;
      }
      u -= W2[c];
    }
    const run = Math.min(pages - p, 1 + Math.floor(next() * 32));
    for (let i = 0; i < run; i++, p++) {
      const at = p * PAGE;
      switch (cls) {
        case "zero":
          break;
        case "uniform":
          ram.fill(1 + Math.floor(next() * 255), at, at + PAGE);
          break;
        case "shared":
          shared.copy(ram, at, (sharedAt % (shared.length / PAGE)) * PAGE, (sharedAt % (shared.length / PAGE) + 1) * PAGE);
          sharedAt++;
          break;
        case "dup": {
          const d = Math.floor(next() * DUP_SOURCES);
          dups.copy(ram, at, d * PAGE, (d + 1) * PAGE);
          break;
        }
        case "own":
        case "random":
          if (cls === "own") compressiblePage(ram, at);
          else pool.take(PAGE).copy(ram, at);
          if (next() < pNew) rewritten.push(p);
          break;
      }
    }
  }
  const scanned = Buffer.from(ram);
  for (const q of rewritten) pool.take(PAGE).copy(scanned, q * PAGE);
  return { ram, scanned };
}

/** The small blocks: firmware is shadowed in guest RAM, so their pages are copies of m0's last pages. */
function romBlocks(blocks: RamBlockInfo[], m0: Buffer, random: boolean): Buffer[] {
  let from = m0.length / PAGE - 1;
  return blocks.slice(1).map((b) => {
    if (random) return randomBytes(b.usedLength);
    const out = Buffer.alloc(b.usedLength);
    for (let at = 0; at < b.usedLength; at += PAGE, from--) m0.copy(out, at, from * PAGE, (from + 1) * PAGE);
    return out;
  });
}

/** VM `vm`'s memory in `mix` (`shared`: w2SharedPages of the gang, for w2). */
export function vmMemory(mix: MixId, vm: number, ramBytes: number, shared?: Buffer): VmMemory {
  if (ramBytes % PAGE !== 0 || ramBytes < 64 * PAGE) throw new RangeError(`RAM of ${ramBytes} bytes: need a multiple of 4096, at least 256 KiB`);
  const blocks = pcBlocks(ramBytes);
  switch (mix) {
    case "present": {
      const m0 = randomBytes(ramBytes);
      return { blocks, contents: [m0, ...romBlocks(blocks, m0, false)], scanned: m0 };
    }
    case "new": {
      const m0 = randomBytes(ramBytes);
      return { blocks, contents: [m0, ...romBlocks(blocks, m0, true)] };
    }
    case "w2": {
      const { ram, scanned } = w2Ram(vm, ramBytes, shared ?? w2SharedPages(ramBytes));
      return { blocks, contents: [ram, ...romBlocks(blocks, ram, false)], scanned };
    }
  }
}

export function parseMixes(s: string): MixId[] {
  const ids = s.split(",").map((x) => x.trim().toLowerCase()).filter(Boolean);
  for (const id of ids) if (!(MIXES as readonly string[]).includes(id)) throw new Error(`unknown mix "${id}" (known: ${MIXES.join(", ")})`);
  return [...new Set(ids)] as MixId[];
}
