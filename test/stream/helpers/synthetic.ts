/** Builds small streams from records, for codec tests that need shapes QEMU rarely writes. */
import { encodeConfig } from "../../../adapters/qemu/stream/config.ts";
import type { MigrationCommand, PageBatch, RamBlockInfo, StreamRecord } from "../../../adapters/qemu/stream/records.ts";

export const BLOCKS: RamBlockInfo[] = [
  { id: "m0", usedLength: 64 * 4096 },
  { id: "pc.bios", usedLength: 4 * 4096 },
];

/** A batch from (offset, content) pairs: a number is a fill byte, a Buffer is a page. */
export function batch(block: string, pages: [number, number | Buffer][], round = 1, named = true): PageBatch {
  const n = pages.length;
  const normals = pages.filter(([, c]) => typeof c !== "number").length;
  const b: PageBatch = {
    type: "pages",
    offset: 0,
    block,
    round,
    count: n,
    offsets: new Float64Array(n),
    kinds: new Uint8Array(n),
    fills: new Uint8Array(n),
    named: new Uint8Array(n),
    positions: new Float64Array(n),
    data: Buffer.alloc(normals * 4096),
  };
  let d = 0;
  pages.forEach(([off, c], i) => {
    b.offsets[i] = off;
    if (typeof c === "number") {
      b.kinds[i] = 0;
      b.fills[i] = c;
    } else {
      b.kinds[i] = 1;
      c.copy(b.data, d);
      d += 4096;
    }
  });
  if (named && n > 0) b.named[0] = 1;
  return b;
}

export function page(seed: number): Buffer {
  const p = Buffer.alloc(4096);
  for (let i = 0; i < 4096; i++) p[i] = (seed * 31 + i * 7) & 0xff;
  return p;
}

const SID = 2;
export const head = (): StreamRecord[] => [
  { type: "header", version: 3, offset: 0 },
  { type: "config", config: { machine: "pc-i440fx-7.2" }, raw: encodeConfig("pc-i440fx-7.2"), offset: 0 },
];
export const ramStart = (blocks = BLOCKS): StreamRecord[] => [
  { type: "ramSection", section: "start", sectionId: SID, instanceId: 0, versionId: 4, offset: 0 },
  { type: "ramSetup", totalBytes: blocks.reduce((a, b) => a + b.usedLength, 0), blocks, offset: 0 },
  { type: "ramSectionEnd", sectionId: SID, offset: 0 },
];
export const ramPart = (...batches: PageBatch[]): StreamRecord[] => [
  { type: "ramSection", section: "part", sectionId: SID, instanceId: 0, versionId: 4, offset: 0 },
  ...batches,
  { type: "ramSectionEnd", sectionId: SID, offset: 0 },
];
export const ramEnd = (...batches: PageBatch[]): StreamRecord[] => [
  { type: "ramSection", section: "end", sectionId: SID, instanceId: 0, versionId: 4, offset: 0 },
  ...batches,
  { type: "ramSectionEnd", sectionId: SID, offset: 0 },
];
export const cmd = (command: MigrationCommand): StreamRecord => ({ type: "command", command, offset: 0 });

/** A FULL device section with a body that does not contain its own footer pattern. */
export function device(sectionId: number, idstr: string, body: Buffer, instanceId = 0, versionId = 1): StreamRecord {
  const id = Buffer.from(idstr, "latin1");
  const raw = Buffer.alloc(1 + 4 + 1 + id.length + 8 + body.length + 5);
  let p = 0;
  raw[p++] = 0x04;
  raw.writeUInt32BE(sectionId, p);
  p += 4;
  raw[p++] = id.length;
  id.copy(raw, p);
  p += id.length;
  raw.writeUInt32BE(instanceId, p);
  raw.writeUInt32BE(versionId, p + 4);
  p += 8;
  body.copy(raw, p);
  p += body.length;
  raw[p++] = 0x7e;
  raw.writeUInt32BE(sectionId, p);
  return { type: "device", section: "full", sectionId, idstr, instanceId, versionId, raw, offset: 0 };
}
