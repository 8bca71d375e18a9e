/**
 * Manifest records on the wire (see schemas/manifest.ts): be64 page offset | u8 block index |
 * u8 kind | 16-byte key (zero pages: the fill byte, then zeros).
 */
import { MANIFEST_RECORD_BYTES, ManifestKind } from "../../schemas/index.ts";
import { KEY_BYTES } from "./contentKey.ts";

const TWO32 = 2 ** 32;
/** be64 without a BigInt per record (offsets stay far below 2^53). */
const setOffset = (view: DataView, at: number, offset: number) => {
  view.setUint32(at, Math.floor(offset / TWO32));
  view.setUint32(at + 4, offset % TWO32);
};

export class ManifestWriter {
  private buf: Uint8Array;
  private view: DataView;
  count = 0;
  constructor(readonly capacity: number) {
    this.buf = new Uint8Array(capacity * MANIFEST_RECORD_BYTES);
    this.view = new DataView(this.buf.buffer);
  }
  get full(): boolean {
    return this.count >= this.capacity;
  }
  addZero(offset: number, block: number, fill: number): void {
    const at = this.count++ * MANIFEST_RECORD_BYTES;
    setOffset(this.view, at, offset);
    this.buf[at + 8] = block;
    this.buf[at + 9] = ManifestKind.zero;
    this.buf.fill(0, at + 10, at + 10 + KEY_BYTES);
    this.buf[at + 10] = fill;
  }
  addPage(offset: number, block: number, key: Uint8Array, keyAt = 0): void {
    const at = this.count++ * MANIFEST_RECORD_BYTES;
    setOffset(this.view, at, offset);
    this.buf[at + 8] = block;
    this.buf[at + 9] = ManifestKind.page;
    this.buf.set(key.subarray(keyAt, keyAt + KEY_BYTES), at + 10);
  }
  /** The records so far (a copy), and a reset. */
  take(): { count: number; body: Uint8Array } {
    const out = { count: this.count, body: this.buf.slice(0, this.count * MANIFEST_RECORD_BYTES) };
    this.count = 0;
    return out;
  }
}

export interface ManifestRecord {
  offset: number;
  block: number;
  kind: ManifestKind;
  /** For zero pages the fill byte; for pages unused. */
  fill: number;
  /** Offset of the 16-byte key within the body. */
  keyAt: number;
}

export function* readManifestRecords(body: Uint8Array, count: number): Generator<ManifestRecord> {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let i = 0; i < count; i++) {
    const at = i * MANIFEST_RECORD_BYTES;
    const kind = body[at + 9] as ManifestKind;
    yield { offset: view.getUint32(at) * TWO32 + view.getUint32(at + 4), block: body[at + 8]!, kind, fill: kind === ManifestKind.zero ? body[at + 10]! : 0, keyAt: at + 10 };
  }
}
