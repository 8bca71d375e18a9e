/**
 * The codec against a real QEMU 7.2 stream (captured in beforeAll from an idle VM with a
 * loaded image of zero, uniform, duplicate and random pages) and against synthetic
 * streams for the shapes QEMU writes rarely (post-copy commands, config subsections).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readFile, writeFile } from "node:fs/promises";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { StreamParser } from "../../adapters/qemu/stream/parser.ts";
import { parseBuffer, parsePackaged, parseStream } from "../../adapters/qemu/stream/stream.ts";
import { encodeRecords, encodeStream } from "../../adapters/qemu/stream/encoder.ts";
import { canonicalize } from "../../adapters/qemu/stream/canonical.ts";
import { MemoryPageStore, PageImage } from "../../adapters/qemu/stream/pageImage.ts";
import {
  BadMagicError,
  MigrationStreamError,
  SectionFooterError,
  TrailingDataError,
  TruncatedStreamError,
  UnknownRamBlockError,
  UnknownSectionTypeError,
  UnsupportedRamFlagError,
  UnsupportedVersionError,
  PageOutOfRangeError,
  isTruncatedStream,
} from "../../adapters/qemu/stream/errors.ts";
import type { PageBatch, StreamRecord } from "../../adapters/qemu/stream/records.ts";
import { captureStream, IMAGE_ADDR, mixedImage, streamFleet, vmName, type StreamFleet } from "./helpers/vms.ts";
import { BLOCKS, batch, cmd, device, head, page, ramEnd, ramPart, ramStart } from "./helpers/synthetic.ts";

let fleet: StreamFleet;
let stream: Buffer;
let image: Buffer;

beforeAll(async () => {
  fleet = await streamFleet();
  image = mixedImage(1024, 7);
  const imageFile = join(fleet.dir, "image.bin");
  await writeFile(imageFile, image);
  const vm = await fleet.idle(vmName("codec"), { image: imageFile });
  await captureStream(vm, join(fleet.dir, "idle.stream"));
  await vm.stop();
  stream = await readFile(join(fleet.dir, "idle.stream"));
});

afterAll(async () => {
  await fleet?.stopAll();
});

function types(records: StreamRecord[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const r of records) t[r.type] = (t[r.type] ?? 0) + 1;
  return t;
}

/** The image of m0 the records imply (last content of each page). */
function m0Image(records: Iterable<StreamRecord>): { image: PageImage; read: (addr: number, len: number) => Buffer } {
  let img: PageImage | undefined;
  for (const r of records) {
    if (r.type === "ramSetup") img = new PageImage(r.blocks, new MemoryPageStore(r.blocks));
    if (r.type === "pages") img!.apply(r);
  }
  const image = img!;
  const read = (addr: number, len: number) => {
    const out = Buffer.alloc(len);
    for (const b of image.batches()) {
      if (b.block !== "m0") continue;
      let d = 0;
      for (let i = 0; i < b.count; i++) {
        const off = b.offsets[i];
        const normal = b.kinds[i] === 1;
        if (off >= addr && off < addr + len) {
          if (normal) b.data.copy(out, off - addr, d, d + 4096);
          else out.fill(b.fills[i], off - addr, off - addr + 4096);
        }
        if (normal) d += 4096;
      }
    }
    return out;
  };
  return { image, read };
}

describe("codec on a captured QEMU 7.2 stream", () => {
  it("parses header, config, ram setup, rounds, pages, device sections, EOF and VMDESC", () => {
    const records = parseBuffer(stream);
    const t = types(records);
    expect(t.header).toBe(1);
    expect(t.config).toBe(1);
    expect(t.ramSetup).toBe(1);
    expect(t.eof).toBe(1);
    expect(t.vmdesc).toBe(1);
    expect(t.device).toBeGreaterThan(20);
    const config = records.find((r) => r.type === "config")!;
    expect(config.type === "config" && config.config.machine).toMatch(/^pc-i440fx-/);
    const setup = records.find((r) => r.type === "ramSetup")!;
    expect(setup.type === "ramSetup" && setup.blocks.map((b) => b.id)).toEqual(["m0", "/rom@etc/acpi/tables", "pc.bios", "pc.rom", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"]);
    // Round 1 covers every page of every block once, in (block, offset) order.
    const round1 = records.filter((r): r is PageBatch => r.type === "pages" && r.round === 1);
    const pages1 = round1.reduce((a, b) => a + b.count, 0);
    expect(setup.type === "ramSetup" && pages1).toBe(setup.type === "ramSetup" ? setup.totalBytes / 4096 : 0);
    // The device sections match the VMDESC's list of devices.
    const vmdesc = records.find((r) => r.type === "vmdesc")!;
    const desc = JSON.parse(vmdesc.type === "vmdesc" ? vmdesc.json.toString() : "{}") as { devices: { name: string; instance_id: number }[] };
    const devices = records.filter((r) => r.type === "device").map((r) => (r.type === "device" ? `${r.idstr}/${r.instanceId}` : ""));
    expect(devices).toEqual(desc.devices.map((d) => `${d.name}/${d.instance_id}`));
  });

  it("the pages it yields rebuild the loaded image byte for byte", () => {
    const { read } = m0Image(parseBuffer(stream));
    expect(read(IMAGE_ADDR, image.length).equals(image)).toBe(true);
  });

  it("re-encodes byte-identically", () => {
    const records = parseBuffer(stream);
    expect(encodeRecords(records).equals(stream)).toBe(true);
  });

  it("pages given as views where they lie (not in `data`) encode to the same stream; a short view is refused", () => {
    const records = parseBuffer(stream).map((r): StreamRecord => {
      if (r.type !== "pages") return r;
      const views: Uint8Array[] = [];
      // Each page in a buffer of its own, as a pack's slab would hold it.
      for (let at = 0; at < r.data.length; at += 4096) views.push(Uint8Array.from(r.data.subarray(at, at + 4096)));
      return { ...r, data: Buffer.alloc(0), views };
    });
    expect(records.some((r) => r.type === "pages" && r.views!.length > 0)).toBe(true);
    expect(encodeRecords(records).equals(stream)).toBe(true);
    const first = records.findIndex((r) => r.type === "pages" && r.views!.length > 0);
    const bad = records.map((r, i) => (i === first && r.type === "pages" ? { ...r, views: [r.views![0]!.subarray(0, 100), ...r.views!.slice(1)] } : r));
    expect(() => encodeRecords(bad)).toThrow(/page view of 100 bytes/);
  });

  it("any batch size gives the same stream back", () => {
    for (const maxBatchPages of [1, 3, 100, 5000]) {
      const records = parseBuffer(stream, { maxBatchPages });
      expect(records.every((r) => r.type !== "pages" || r.count <= maxBatchPages)).toBe(true);
      expect(encodeRecords(records).equals(stream)).toBe(true);
    }
  });

  it("handles any chunk boundaries: 1-byte chunks", () => {
    const parser = new StreamParser({ maxBatchPages: 64 });
    const records: StreamRecord[] = [];
    for (let i = 0; i < stream.length; i++) {
      parser.push(stream.subarray(i, i + 1));
      if (i % 4096 === 0) parser.flush();
      records.push(...parser.drain());
    }
    parser.end();
    records.push(...parser.drain());
    expect(encodeRecords(records).equals(stream)).toBe(true);
  });

  it("handles any chunk boundaries: random sizes, async, with back-pressure", async () => {
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (const max of [7, 300, 5000, 200_000]) {
      async function* chunks() {
        for (let p = 0; p < stream.length; ) {
          const n = 1 + rnd(max);
          yield stream.subarray(p, p + n);
          p += n;
        }
      }
      const out: Buffer[] = [];
      for await (const b of encodeStream(parseStream(chunks()))) out.push(b);
      expect(Buffer.concat(out).equals(stream)).toBe(true);
    }
  });

  it("back-pressure: a consumer that stops pulling stops the reading of a Readable", async () => {
    let produced = 0;
    function* chunks() {
      for (let p = 0; p < stream.length; p += 65536) {
        produced += Math.min(65536, stream.length - p);
        yield stream.subarray(p, p + 65536);
      }
    }
    const readable = Readable.from(chunks(), { objectMode: false, highWaterMark: 65536 });
    const it = parseStream(readable, { readAheadBytes: 256 * 1024 })[Symbol.asyncIterator]();
    const records: StreamRecord[] = [];
    for (let i = 0; i < 5; i++) records.push((await it.next()).value as StreamRecord);
    await sleep(200);
    // Read ahead: the parser's 256 KiB plus the Readable's own buffer, not the 4.5 MB stream.
    expect(produced).toBeLessThan(2 * 1024 * 1024);
    expect(stream.length).toBeGreaterThan(4 * 1024 * 1024);
    for (let r = await it.next(); !r.done; r = await it.next()) records.push(r.value);
    expect(produced).toBe(stream.length);
    expect(encodeRecords(records).equals(stream)).toBe(true);
  });

  it("truncated input gives TruncatedStreamError at the truncation offset", () => {
    const records = parseBuffer(stream);
    const eof = records.find((r) => r.type === "eof")!.offset;
    // Every record boundary and a byte on each side, plus spread offsets.
    const cuts = new Set<number>();
    for (const r of records) for (const d of [-1, 0, 1, 5, 8, 9]) cuts.add(r.offset + d);
    for (let i = 0; i < 200; i++) cuts.add(Math.floor((stream.length * i) / 200) + 3);
    let checked = 0;
    for (const n of cuts) {
      if (n <= 0 || n >= stream.length || n === eof + 1) continue;
      let err: unknown;
      try {
        parseBuffer(stream.subarray(0, n));
      } catch (e) {
        err = e;
      }
      expect(err, `cut at ${n}`).toBeInstanceOf(TruncatedStreamError);
      expect((err as TruncatedStreamError).offset).toBe(n);
      expect((err as Error).message).toContain(`byte ${n}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(300);
    // Right after EOF the stream is complete without its (optional) VMDESC.
    expect(types(parseBuffer(stream.subarray(0, eof + 1))).vmdesc).toBeUndefined();
  });

  it("unsupported RAM flags give UnsupportedRamFlagError naming the flag and the record's offset", () => {
    const records = parseBuffer(stream);
    const b = records.find((r): r is PageBatch => r.type === "pages" && r.count > 10 && r.kinds[5] === 1)!;
    const recordAt = b.positions[5] - 8; // a CONTINUE page record: 8-byte header
    for (const [name, byte, bit] of [["XBZRLE", 7, 0x40], ["HOOK", 7, 0x80], ["COMPRESS", 6, 0x01], ["MULTIFD_FLUSH", 6, 0x02]] as const) {
      const bad = Buffer.from(stream);
      bad[recordAt + byte] |= bit;
      let err: unknown;
      try {
        parseBuffer(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UnsupportedRamFlagError);
      expect((err as UnsupportedRamFlagError).offset).toBe(recordAt);
      expect((err as Error).message).toContain(name);
      expect((err as Error).message).toContain(`byte ${recordAt}`);
      expect((err as Error).name).toBe("UnsupportedRamFlagError");
    }
  });

  it("bad magic, bad version, unknown section types, bad footers and trailing data are typed errors with offsets", () => {
    const expectErr = (data: Buffer, cls: new (...a: never[]) => MigrationStreamError, offset: number) => {
      let err: unknown;
      try {
        parseBuffer(data);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(cls);
      expect((err as MigrationStreamError).offset).toBe(offset);
      expect((err as Error).message).toContain(`byte ${offset}`);
    };
    const records = parseBuffer(stream);
    const m = Buffer.from(stream);
    m.write("QEVX", 0, "latin1");
    expectErr(m, BadMagicError, 0);
    const v = Buffer.from(stream);
    v.writeUInt32BE(2, 4);
    expectErr(v, UnsupportedVersionError, 4);
    const firstDevice = records.find((r) => r.type === "device")!.offset;
    const u = Buffer.from(stream);
    u[firstDevice] = 0x09;
    expectErr(u, UnknownSectionTypeError, firstDevice);
    const end = records.find((r) => r.type === "ramSectionEnd")!.offset; // EOS, then footer at +8
    const f = Buffer.from(stream);
    f.writeUInt32BE(99, end + 9);
    expectErr(f, SectionFooterError, end + 8);
    expectErr(Buffer.concat([stream, Buffer.from([1, 2, 3])]), TrailingDataError, stream.length);
  });

  it("canonical form: one PART, last content of each page, zero pages as ZERO records", async () => {
    const out: StreamRecord[] = [];
    for await (const r of canonicalize(parseBuffer(stream))) out.push(r);
    const bytes = encodeRecords(out, { continueMode: "auto" });
    const again = parseBuffer(bytes);
    const sections = again.filter((r) => r.type === "ramSection").map((r) => (r.type === "ramSection" ? r.section : ""));
    expect(sections).toEqual(["start", "part", "end"]);
    expect(types(again).round).toBe(1);
    expect(m0Image(again).read(IMAGE_ADDR, image.length).equals(image)).toBe(true);
    // Same device sections, verbatim.
    const dev = (rs: StreamRecord[]) => Buffer.concat(rs.flatMap((r) => (r.type === "device" ? [r.raw] : [])));
    expect(dev(again).equals(dev(parseBuffer(stream)))).toBe(true);
    expect(bytes.length).toBeLessThan(stream.length);
  });
});

describe("codec on synthetic streams", () => {
  it("rounds: a page at or before the previous (block, offset) starts a new round", () => {
    const recs = [
      ...head(),
      ...ramStart(),
      ...ramPart(batch("m0", [[0, 0], [4096, page(1)], [8192, 0]]), batch("pc.bios", [[0, page(2)]])),
      ...ramPart(batch("m0", [[4096, page(3)]]), batch("m0", [[4096, page(4)]])),
      ...ramEnd(batch("pc.bios", [[4096, 7]]), batch("m0", [[0, 1]])),
      { type: "eof", offset: 0 } as const,
    ];
    const parsed = parseBuffer(encodeRecords(recs));
    const rounds = parsed.filter((r) => r.type === "pages").map((r) => (r.type === "pages" ? `${r.block}@${r.offsets[0]}:${r.round}` : ""));
    expect(rounds).toEqual(["m0@0:1", "pc.bios@0:1", "m0@4096:2", "m0@4096:3", "pc.bios@4096:3", "m0@0:4"]);
    expect(types(parsed).round).toBe(4);
  });

  it("CONTINUE: preserved as parsed, or chosen by the encoder", () => {
    const recs = [...head(), ...ramStart(), ...ramPart(batch("m0", [[0, 0], [4096, 0], [8192, page(5)]])), { type: "eof", offset: 0 } as const];
    const always = encodeRecords(recs, { continueMode: "never" });
    const auto = encodeRecords(recs, { continueMode: "auto" });
    expect(always.length - auto.length).toBe(2 * 3); // two records without "\x02m0"
    for (const bytes of [always, auto]) expect(encodeRecords(parseBuffer(bytes)).equals(bytes)).toBe(true);
  });

  it("rejects pages of unknown blocks, CONTINUE without a block, and offsets beyond a block", () => {
    const enc = (b: PageBatch) => encodeRecords([...head(), ...ramStart(), ...ramPart(b), { type: "eof", offset: 0 }]);
    expect(() => parseBuffer(enc(batch("nope", [[0, 0]])))).toThrow(UnknownRamBlockError);
    // A ZERO|CONTINUE record as the first page record: no block to continue.
    const prefix = Buffer.concat([encodeRecords([...head(), ...ramStart()]), Buffer.from([0x02, 0, 0, 0, 2])]);
    const rec = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x22, 0]);
    expect(() => parseBuffer(Buffer.concat([prefix, rec]))).toThrow(/byte \d+ has CONTINUE but no block/);
    expect(() => parseBuffer(enc(batch("pc.bios", [[4 * 4096, 0]])))).toThrow(PageOutOfRangeError);
  });

  it("post-copy commands and a PACKAGED nested stream pass through typed and byte-identical", async () => {
    const dev1 = device(7, "timer", Buffer.from([1, 2, 3, 0x7e, 0, 0, 0, 7, 9])); // contains a footer look-alike
    const dev2 = device(8, "cpu", Buffer.alloc(300, 0x55));
    const packagedBlob = encodeRecords([cmd({ cmd: "postcopyListen" }), dev1, dev2, cmd({ cmd: "ping", value: 3 }), cmd({ cmd: "postcopyRun" })]);
    const blocks = [{ id: "m0", usedLength: 64 * 4096, pageSize: 2 * 1024 * 1024 }, { id: "pc.bios", usedLength: 4 * 4096 }];
    const recs: StreamRecord[] = [
      ...head(),
      cmd({ cmd: "openReturnPath" }),
      cmd({ cmd: "ping", value: 1 }),
      cmd({ cmd: "postcopyAdvise", pageSizeSummary: 0x201000, targetPageSize: 4096 }),
      ...ramStart(blocks),
      ...ramPart(batch("m0", [[0, page(1)], [4096, page(2)], [8192, 0]])),
      cmd({ cmd: "postcopyRamDiscard", version: 0, block: "m0", ranges: [{ start: 4096, length: 8192 }] }),
      cmd({ cmd: "ping", value: 2 }),
      cmd({ cmd: "packaged", data: packagedBlob }),
      ...ramPart(batch("m0", [[8192, page(9)]])),
      ...ramEnd(),
      { type: "eof", offset: 0 },
    ];
    const bytes = encodeRecords(recs);
    const parsed = parseBuffer(bytes);
    expect(encodeRecords(parsed).equals(bytes)).toBe(true);
    const cmds = parsed.flatMap((r) => (r.type === "command" ? [r.command.cmd] : []));
    expect(cmds).toEqual(["openReturnPath", "ping", "postcopyAdvise", "postcopyRamDiscard", "ping", "packaged"]);
    const setup = parsed.find((r) => r.type === "ramSetup");
    expect(setup?.type === "ramSetup" && setup.blocks[0].pageSize).toBe(2 * 1024 * 1024);
    const discard = parsed.find((r) => r.type === "command" && r.command.cmd === "postcopyRamDiscard");
    expect(discard?.type === "command" && discard.command).toEqual({ cmd: "postcopyRamDiscard", version: 0, block: "m0", ranges: [{ start: 4096, length: 8192 }] });
    const pkg = parsed.find((r) => r.type === "command" && r.command.cmd === "packaged");
    const nested = parsePackaged(pkg?.type === "command" && pkg.command.cmd === "packaged" ? pkg.command.data : Buffer.alloc(0));
    expect(nested.map((r) => (r.type === "command" ? r.command.cmd : r.type === "device" ? r.idstr : r.type))).toEqual(["postcopyListen", "timer", "cpu", "ping", "postcopyRun"]);
    expect(nested[1].type === "device" && nested[1].raw.equals((dev1 as { raw: Buffer }).raw)).toBe(true);

    // Canonical form of a post-copy stream: a plain pre-copy stream, discards applied, devices unpacked.
    const canon: StreamRecord[] = [];
    for await (const r of canonicalize(parsed)) canon.push(r);
    const again = parseBuffer(encodeRecords(canon));
    expect(again.some((r) => r.type === "command")).toBe(false);
    expect(again.filter((r) => r.type === "device").map((r) => (r.type === "device" ? r.idstr : ""))).toEqual(["timer", "cpu"]);
    const pages = again.filter((r): r is PageBatch => r.type === "pages");
    expect(pages).toHaveLength(1);
    const p = pages[0];
    expect(Array.from(p.offsets)).toEqual([0, 4096, 8192]);
    expect(Array.from(p.kinds)).toEqual([1, 0, 1]); // 4096 discarded (reads as zero), 8192 re-sent
    expect(p.data.subarray(4096, 8192).equals(page(9))).toBe(true);
    const setup2 = again.find((r) => r.type === "ramSetup");
    expect(setup2?.type === "ramSetup" && setup2.blocks[0].pageSize).toBeUndefined();
  });

  it("configuration subsections: capabilities with x-ignore-shared add a block address to the setup", () => {
    const name = Buffer.from("pc-i440fx-7.2");
    const caps = ["x-ignore-shared"];
    const sub = Buffer.concat([
      Buffer.from([0x05, "configuration/capabilities".length]),
      Buffer.from("configuration/capabilities"),
      Buffer.from([0, 0, 0, 1]),
      Buffer.from([0, 0, 0, caps.length]),
      ...caps.map((c) => Buffer.concat([Buffer.from([c.length]), Buffer.from(c)])),
    ]);
    const raw = Buffer.concat([Buffer.from([0x07, 0, 0, 0, name.length]), name, sub]);
    const blocks = BLOCKS.map((b, i) => ({ ...b, addr: i * 0x100000 }));
    const recs: StreamRecord[] = [
      { type: "header", version: 3, offset: 0 },
      { type: "config", config: { machine: "pc-i440fx-7.2" }, raw, offset: 0 },
      ...ramStart(blocks),
      ...ramPart(batch("pc.bios", [[0, 3]])),
      { type: "eof", offset: 0 },
    ];
    const bytes = encodeRecords(recs);
    const parsed = parseBuffer(bytes);
    const cfg = parsed.find((r) => r.type === "config");
    expect(cfg?.type === "config" && cfg.config.capabilities).toEqual(["x-ignore-shared"]);
    const setup = parsed.find((r) => r.type === "ramSetup");
    expect(setup?.type === "ramSetup" && setup.blocks.map((b) => b.addr)).toEqual([0, 0x100000]);
    expect(encodeRecords(parsed).equals(bytes)).toBe(true);
  });

  it("a device section whose footer is followed by garbage is not split there", () => {
    const body = Buffer.from([0x7e, 0, 0, 0, 5, 0x01, 0, 0, 0, 9, 0, 0xff]); // footer look-alike, then a START with an empty idstr
    const recs: StreamRecord[] = [...head(), ...ramStart(), device(5, "fdc", body), { type: "eof", offset: 0 }];
    const parsed = parseBuffer(encodeRecords(recs));
    const devs = parsed.filter((r) => r.type === "device");
    expect(devs).toHaveLength(1);
    expect(devs[0].type === "device" && devs[0].raw.length).toBe((recs[5] as { raw: Buffer }).raw.length);
  });

  it("errors carry their cause and have predicates", () => {
    const e = new TruncatedStreamError("x", 5, { cause: new Error("root") });
    expect(isTruncatedStream(e)).toBe(true);
    expect((e.cause as Error).message).toBe("root");
    expect(e.name).toBe("TruncatedStreamError");
  });
});
