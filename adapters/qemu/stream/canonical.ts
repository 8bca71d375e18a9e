/**
 * The canonical form of a stream: header, configuration, the ram START with its setup,
 * ONE ram PART holding the last content of every page sent (fill pages as ZERO records,
 * in block and offset order), an empty ram END, the device sections verbatim, EOF and
 * (optionally) VMDESC. It is a plain pre-copy stream: post-copy commands are dropped,
 * RAM_DISCARD is applied to the image (discarded pages read as zero until re-sent), and
 * the device sections inside a PACKAGED blob are taken out of it.
 *
 * Nothing can be written before the last page has been seen, so the output comes at
 * the end of the input; the page bytes wait in a PageStore meanwhile.
 */
import { MemoryPageStore, PageImage, type PageStore } from "./pageImage.ts";
import type { DeviceSectionRecord, RamBlockInfo, RamSectionRecord, StreamRecord, VmdescRecord } from "./records.ts";
import { parsePackaged } from "./stream.ts";
import { EncoderStateError } from "./errors.ts";

/** Options of canonicalize. */
export interface CanonicalOptions {
  /** Where page bytes wait until the end. @default in memory (MemoryPageStore) */
  store?: (blocks: readonly RamBlockInfo[]) => PageStore;
  /** Pages per output batch. @default 1024 */
  maxBatchPages?: number;
  /** Keep the VMDESC record. @default true */
  vmdesc?: boolean;
}

/** Summary of what canonicalize kept, available once its output is done. */
export interface CanonicalStats {
  /** Page records in the input (all rounds). */
  inputPages: number;
  /** Pages in the output PART. */
  fillPages: number;
  normalPages: number;
  rounds: number;
}

/**
 * Turns any parsed stream into its canonical records. `stats`, if given, is filled in
 * as the output completes.
 */
export async function* canonicalize(
  records: AsyncIterable<StreamRecord> | Iterable<StreamRecord>,
  options: CanonicalOptions = {},
  stats?: CanonicalStats,
): AsyncGenerator<StreamRecord, void, undefined> {
  const makeStore = options.store ?? ((blocks) => new MemoryPageStore(blocks));
  const st: CanonicalStats = stats ?? { inputPages: 0, fillPages: 0, normalPages: 0, rounds: 0 };
  let image: PageImage | undefined;
  let ramStart: RamSectionRecord | undefined;
  let blocks: RamBlockInfo[] | undefined;
  const devices: DeviceSectionRecord[] = [];
  let vmdesc: VmdescRecord | undefined;
  let sawEof = false;
  try {
    for await (const r of records) {
      switch (r.type) {
        case "header":
        case "config":
          yield r;
          break;
        case "ramSection":
          if (r.section === "start" || r.section === "full") ramStart = r;
          break;
        case "ramSetup":
          if (!ramStart) throw new EncoderStateError("ramSetup before the ram START section");
          // A pre-copy destination does not expect post-copy page sizes in the setup.
          blocks = r.blocks.map((b) => (b.addr === undefined ? { id: b.id, usedLength: b.usedLength } : { id: b.id, usedLength: b.usedLength, addr: b.addr }));
          image?.close();
          image = new PageImage(blocks, makeStore(blocks));
          yield { ...ramStart, section: "start" };
          yield { ...r, blocks };
          yield { type: "ramSectionEnd", sectionId: ramStart.sectionId, offset: r.offset };
          break;
        case "pages":
          if (!image) throw new EncoderStateError("pages before the ram setup");
          image.apply(r);
          st.inputPages += r.count;
          break;
        case "round":
          st.rounds = r.round;
          break;
        case "device":
          devices.push(r);
          break;
        case "command":
          if (r.command.cmd === "postcopyRamDiscard") for (const x of r.command.ranges) image?.discard(r.command.block, x.start, x.length);
          if (r.command.cmd === "packaged") {
            const ctx = { ramSectionId: ramStart?.sectionId, blocks };
            for (const n of parsePackaged(r.command.data, ctx)) if (n.type === "device") devices.push(n);
          }
          break;
        case "eof":
          sawEof = true;
          break;
        case "vmdesc":
          vmdesc = r;
          break;
        case "ramSectionEnd":
          break;
      }
    }
    if (!sawEof) throw new EncoderStateError("the stream has no EOF");
    if (image && ramStart) {
      const part: RamSectionRecord = { ...ramStart, section: "part" };
      yield part;
      for (const b of image.batches(options.maxBatchPages)) {
        for (let i = 0; i < b.count; i++) {
          if (b.kinds[i] === 1) st.normalPages++;
          else st.fillPages++;
        }
        yield b;
      }
      yield { type: "ramSectionEnd", sectionId: ramStart.sectionId, offset: 0 };
      yield { ...ramStart, section: "end" };
      yield { type: "ramSectionEnd", sectionId: ramStart.sectionId, offset: 0 };
    }
    yield* devices;
    yield { type: "eof", offset: 0 };
    if (vmdesc && (options.vmdesc ?? true)) yield vmdesc;
  } finally {
    image?.close();
  }
}
