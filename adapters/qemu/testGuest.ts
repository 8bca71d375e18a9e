/**
 * The test guest (guest/guest.c) seen from Node: where its kernel is, how to write its
 * command line, what each page of its RAM must hold (an exact mirror of the C code, so a
 * RAM file or a rebuilt stream can be checked byte for byte), and its serial commands.
 */
import { fileURLToPath } from "node:url";
import type { SerialConsole } from "./serial.ts";
import type { VmConfig } from "./vm.ts";

/** The built kernel (`make -s -C guest`, run by scripts/setup.sh). */
export const TEST_GUEST_KERNEL = fileURLToPath(new URL("../../guest/build/gangway-guest.elf", import.meta.url));

export const PAGE_SIZE = 4096;
/**
 * The guest manages usable RAM from 2 MiB up to 4 GiB: page index 512 = guest-physical
 * 0x200000. Below ~3 GiB that is one run of `pages` pages from `first` (READY says both).
 */
export const TEST_GUEST_FIRST_PAGE = 512;
const MAGIC_SHARED = 0x48535747; // "GWSH"
const MAGIC_UNIQUE = 0x4e555747; // "GWUN"
const FNV_BASIS = 2166136261;
const FNV_PRIME = 16777619;
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** The guest's -append parameters. */
export interface TestGuestParams {
  /** This VM's seed: unique pages depend on it. @default 1 */
  seed?: number;
  /** Image seed: shared pages depend only on it (like a common OS image). @default 1 */
  image?: number;
  /** Percent of pages left all-zero. @default 25 */
  zero?: number;
  /** Percent of pages shared by VMs with the same image seed. @default 25 */
  shared?: number;
  /** Unique pages rewritten per second. @default 0 */
  rate?: number;
}

const defaults: Required<TestGuestParams> = { seed: 1, image: 1, zero: 25, shared: 25, rate: 0 };

export function testGuestAppend(p: TestGuestParams = {}): string {
  const q = { ...defaults, ...p };
  return `seed=${q.seed} image=${q.image} zero=${q.zero} shared=${q.shared} rate=${q.rate}`;
}

/** A VmConfig booting the test guest. @default memoryMiB 256 */
export function testGuestConfig(name: string, p: TestGuestParams = {}, overrides: Partial<VmConfig> = {}): VmConfig {
  return { name, memoryMiB: 256, kernel: TEST_GUEST_KERNEL, append: testGuestAppend(p), ...overrides };
}

export const PageKind = { Zero: "zero", Shared: "shared", Unique: "unique" } as const;
export type PageKind = (typeof PageKind)[keyof typeof PageKind];

function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

const fnv = (c: number, w: number) => Math.imul(c ^ w, FNV_PRIME) >>> 0;

/** The kind the guest gives page `index` (guest-physical address / 4096). */
export function testGuestPageKind(index: number, p: TestGuestParams = {}): PageKind {
  const q = { ...defaults, ...p };
  const zero = Math.min(q.zero, 100);
  const shared = Math.min(q.shared, 100 - zero);
  const r = mix32((q.image ^ mix32((index ^ 0x9e3779b9) >>> 0)) >>> 0) % 100;
  return r < zero ? PageKind.Zero : r < zero + shared ? PageKind.Shared : PageKind.Unique;
}

/** Writes the words the guest writes for a non-zero page into `w` (1024 words). */
function generate(w: Uint32Array, kind: PageKind, index: number, q: Required<TestGuestParams>, version: number): void {
  const magic = kind === PageKind.Shared ? MAGIC_SHARED : MAGIC_UNIQUE;
  const key = kind === PageKind.Shared ? q.image : q.seed;
  let x = mix32((magic ^ mix32((key ^ mix32((index ^ mix32((version ^ 0x2545f491) >>> 0)) >>> 0)) >>> 0)) >>> 0);
  let c = fnv(fnv(fnv(FNV_BASIS, magic), index), version);
  for (let i = 4; i < PAGE_SIZE / 4; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const v = (x ^ (x >>> 15)) >>> 0;
    w[i] = v;
    c = fnv(c, v);
  }
  w[0] = magic;
  w[1] = index;
  w[2] = version;
  w[3] = c;
}

// Word views assume a little-endian host, as the guest is (x86).
const scratch = new Uint32Array(PAGE_SIZE / 4);

/** The exact bytes of page `index` as the guest writes it (zero pages: 4096 zero bytes). */
export function testGuestPage(kind: PageKind, index: number, p: TestGuestParams = {}, version = 0): Buffer {
  const page = Buffer.alloc(PAGE_SIZE);
  if (kind !== PageKind.Zero) generate(new Uint32Array(page.buffer, page.byteOffset, PAGE_SIZE / 4), kind, index, { ...defaults, ...p }, version);
  return page;
}

export interface PageCheck {
  ok: boolean;
  kind: PageKind;
  /** Version in the page header (non-zero kinds). */
  version?: number;
  /** Why it is not ok. */
  reason?: string;
}

/**
 * Checks one page of guest RAM against what the guest must have written there: zero
 * pages all zero, shared pages exactly as generated, unique pages exactly as generated
 * for the version their header names (any version: dirtying moves it on).
 */
export function checkTestGuestPage(page: Uint8Array, index: number, p: TestGuestParams = {}): PageCheck {
  const kind = testGuestPageKind(index, p);
  const buf = Buffer.from(page.buffer, page.byteOffset, page.byteLength);
  if (buf.length !== PAGE_SIZE) return { ok: false, kind, reason: `page is ${buf.length} bytes` };
  if (kind === PageKind.Zero) {
    const ok = buf.equals(ZERO_PAGE);
    return ok ? { ok, kind } : { ok, kind, reason: "zero page is not all zero" };
  }
  const magic = buf.readUInt32LE(0);
  const idx = buf.readUInt32LE(4);
  const version = buf.readUInt32LE(8);
  if (magic !== (kind === PageKind.Shared ? MAGIC_SHARED : MAGIC_UNIQUE)) {
    return { ok: false, kind, reason: `magic 0x${magic.toString(16)} is not that of a ${kind} page` };
  }
  if (idx !== index) return { ok: false, kind, version, reason: `header says page ${idx}` };
  if (kind === PageKind.Shared && version !== 0) return { ok: false, kind, version, reason: `shared page has version ${version}` };
  generate(scratch, kind, index, { ...defaults, ...p }, version);
  const ok = buf.equals(new Uint8Array(scratch.buffer));
  return ok ? { ok, kind, version } : { ok, kind, version, reason: `content differs from version ${version}` };
}

// ---- serial protocol ---------------------------------------------------------------------

export interface TestGuestReady {
  pages: number;
  zero: number;
  shared: number;
  unique: number;
  /** First managed page index. */
  first: number;
}

/** Waits for the guest's READY line (it has filled its RAM). */
export async function waitTestGuestReady(serial: SerialConsole, timeoutMs = 30_000): Promise<TestGuestReady> {
  const m = await serial.waitFor(/^READY pages=(\d+) zero=(\d+) shared=(\d+) unique=(\d+) first=(\d+)/, timeoutMs);
  return { pages: Number(m[1]), zero: Number(m[2]), shared: Number(m[3]), unique: Number(m[4]), first: Number(m[5]) };
}

export type TestGuestVerify = { ok: true; pages: number } | { ok: false; failures: number; first: number };

/** Asks the guest to check all its pages ('v') and returns its verdict. */
export async function verifyTestGuest(serial: SerialConsole, timeoutMs = 30_000): Promise<TestGuestVerify> {
  const m = await serial.request("v", /^VERIFY (?:OK pages=(\d+)|FAIL (\d+) first=(\d+))/, timeoutMs);
  return m[1] !== undefined ? { ok: true, pages: Number(m[1]) } : { ok: false, failures: Number(m[2]), first: Number(m[3]) };
}

/** Stops the guest dirtying pages ('p'). */
export async function pauseTestGuest(serial: SerialConsole, timeoutMs = 10_000): Promise<void> {
  await serial.request("p", /^PAUSED/, timeoutMs);
}

/** Lets the guest dirty pages again ('r'). */
export async function resumeTestGuest(serial: SerialConsole, timeoutMs = 10_000): Promise<void> {
  await serial.request("r", /^RESUMED/, timeoutMs);
}

/** The guest's counters ('s'). */
export async function testGuestStatus(serial: SerialConsole, timeoutMs = 10_000): Promise<{ dirtied: number; paused: boolean; ticks: number }> {
  const m = await serial.request("s", /^STATUS dirtied=(\d+) paused=(\d) ticks=(\d+)/, timeoutMs);
  return { dirtied: Number(m[1]), paused: m[2] === "1", ticks: Number(m[3]) };
}
