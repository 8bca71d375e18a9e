/**
 * End to end with real QEMU: an idle VM holding a known image migrates through the source
 * proxy, the codec and the destination proxy; the destination's RAM must equal the image
 * byte for byte. A stream corrupted or cut in the proxy path must fail with the offset
 * named, and leave the source running.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { migrateThroughProxies, isProxyMigrationError, type ProxyMigrationError } from "../../adapters/qemu/proxyPipe.ts";
import { isTruncatedStream, isUnsupportedRamFlag, type MigrationStreamError } from "../../adapters/qemu/stream/errors.ts";
import { createLogger } from "../../infra/log.ts";
import type { PageBatch, StreamRecord } from "../../adapters/qemu/stream/records.ts";
import type { VmHandle } from "../../adapters/qemu/vm.ts";
import { IMAGE_ADDR, mixedImage, readGuestMemory, runState, streamFleet, vmName, type StreamFleet } from "./helpers/vms.ts";

/** Failures are expected in some tests: keep their warnings out of the test output. */
const quiet = createLogger({}, () => undefined);
let fleet: StreamFleet;
let image: Buffer;
let imageFile: string;

/** An idle source holding the image, and its destination (same config, no image, -incoming defer -S). */
async function pair(): Promise<{ src: VmHandle; dst: VmHandle }> {
  const name = vmName("px");
  const src = await fleet.idle(name, { image: imageFile });
  const dst = await fleet.idle(name, { role: "destination" });
  return { src, dst };
}

beforeAll(async () => {
  fleet = await streamFleet();
  image = mixedImage(2048, 11); // 8 MiB
  imageFile = join(fleet.dir, "image.bin");
  await writeFile(imageFile, image);
});

afterEach(async () => {
  await fleet.stopVms();
});

afterAll(async () => {
  await fleet?.stopAll();
});

/** A filter that sets `bits` in the flags byte of the first page record matching `header` (8 bytes). */
function corruptRecord(header: Buffer, bits: number): { filter: (c: Buffer, at: number) => Buffer; hit: () => number } {
  let tail = Buffer.alloc(0);
  let hitAt = -1;
  return {
    hit: () => hitAt,
    filter: (chunk, at) => {
      if (hitAt >= 0) return chunk;
      const hay = Buffer.concat([tail, chunk]);
      const i = hay.indexOf(header);
      tail = Buffer.from(hay.subarray(Math.max(0, hay.length - 7)));
      if (i < 0) return chunk;
      const start = at - (hay.length - chunk.length) + i; // stream offset of the record
      const copy = Buffer.from(chunk);
      copy[start + 7 - at] |= bits; // the flags byte always lies in this chunk
      hitAt = start;
      return copy;
    },
  };
}

/** The batch with its pages in reverse order. */
function reversed(b: PageBatch): PageBatch {
  const n = b.count;
  const r: PageBatch = { ...b, offsets: new Float64Array(n), kinds: new Uint8Array(n), fills: new Uint8Array(n), named: new Uint8Array(n), positions: new Float64Array(n), data: Buffer.alloc(b.data.length) };
  let d = 0;
  const starts: number[] = [];
  for (let i = 0; i < n; i++) {
    starts.push(d);
    if (b.kinds[i] === 1) d += 4096;
  }
  let o = 0;
  for (let i = n - 1, k = 0; i >= 0; i--, k++) {
    r.offsets[k] = b.offsets[i];
    r.kinds[k] = b.kinds[i];
    r.fills[k] = b.fills[i];
    if (b.kinds[i] === 1) {
      b.data.copy(r.data, o, starts[i], starts[i] + 4096);
      o += 4096;
    }
  }
  r.named[0] = 1;
  return r;
}

/** Pages of each ram section in reverse order (batches and pages within them), never across a round boundary. */
async function* backwards(records: AsyncIterable<StreamRecord>): AsyncGenerator<StreamRecord> {
  let held: PageBatch[] = [];
  const release = function* () {
    for (const b of held.reverse()) yield reversed(b);
    held = [];
  };
  for await (const r of records) {
    if (r.type === "pages") {
      held.push(r);
      continue;
    }
    if (r.type === "round" || r.type === "ramSectionEnd") yield* release();
    yield r;
  }
}

describe("migration through the stream proxies (QEMU 7.2, TCG)", () => {
  it("an idle VM's RAM arrives byte for byte; the destination stays paused until cont", async () => {
    const { src, dst } = await pair();
    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp });
    expect(report.ok).toBe(true);
    expect(report.nativeBytes).toBeGreaterThan(image.length / 2);
    expect(report.bytesWritten).toBe(report.nativeBytes); // records re-encoded as they came
    expect(report.source.runState).toBe("postmigrate");
    expect(await runState(dst)).toBe("paused");
    expect((await readGuestMemory(dst, IMAGE_ADDR, image.length)).equals(image)).toBe(true);
    await dst.qmp.cont();
    expect(await runState(dst)).toBe("running");
  });

  it("with rounds collapsed into one PART the destination gets the same RAM from fewer bytes", async () => {
    const { src, dst } = await pair();
    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp, destination: { collapseRounds: true, encode: { continueMode: "auto", vmdesc: false } } });
    expect(report.ok).toBe(true);
    expect(report.bytesWritten!).toBeLessThan(report.nativeBytes!);
    expect((await readGuestMemory(dst, IMAGE_ADDR, image.length)).equals(image)).toBe(true);
    await dst.qmp.cont();
    expect(await runState(dst)).toBe("running");
  });

  it("pages may arrive in any order within a round", async () => {
    const { src, dst } = await pair();
    const report = await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp, transform: backwards });
    expect(report.ok).toBe(true);
    expect((await readGuestMemory(dst, IMAGE_ADDR, image.length)).equals(image)).toBe(true);
    await dst.qmp.cont();
    expect(await runState(dst)).toBe("running");
  });

  it("a corrupted page record (XBZRLE flag set on the way) fails with its offset; the source keeps running", async () => {
    const { src, dst } = await pair();
    // The first random page of the image: offset 0x2000000 + 3 pages, PAGE|CONTINUE.
    const header = Buffer.alloc(8);
    header.writeUInt32BE(IMAGE_ADDR + 3 * 4096 + 0x28, 4);
    const c = corruptRecord(header, 0x40);
    let err: unknown;
    try {
      await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp, sourceProxy: { inputFilter: c.filter, logger: quiet }, logger: quiet });
    } catch (e) {
      err = e;
    }
    expect(isProxyMigrationError(err)).toBe(true);
    const report = (err as ProxyMigrationError).report;
    expect(c.hit()).toBeGreaterThan(0);
    expect(isUnsupportedRamFlag(report.error)).toBe(true);
    expect((report.error as MigrationStreamError).offset).toBe(c.hit());
    expect((err as Error).message).toContain(`XBZRLE (0x40) at byte ${c.hit()}`);
    expect(report.source.migration).toBe("failed");
    expect(await runState(src)).toBe("running");
    // The destination's connection was closed mid-stream: its load failed and QEMU exited.
    await Promise.race([dst.exited, sleep(10_000)]);
    expect(dst.isRunning).toBe(false);
  });

  it("a stream cut mid-RAM fails as truncated at the cut; the source keeps running", async () => {
    const { src, dst } = await pair();
    const cut = 1_000_003;
    const filter = (chunk: Buffer, at: number): Buffer | null => (at >= cut ? null : at + chunk.length > cut ? chunk.subarray(0, cut - at) : chunk);
    let err: unknown;
    try {
      await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp, sourceProxy: { inputFilter: filter, logger: quiet }, logger: quiet });
    } catch (e) {
      err = e;
    }
    expect(isProxyMigrationError(err)).toBe(true);
    const report = (err as ProxyMigrationError).report;
    expect(isTruncatedStream(report.error)).toBe(true);
    expect((report.error as MigrationStreamError).offset).toBe(cut);
    expect((err as Error).message).toMatch(new RegExp(`truncated at byte ${cut}`));
    expect(await runState(src)).toBe("running");
    await Promise.race([dst.exited, sleep(10_000)]);
    expect(dst.isRunning).toBe(false);
  });

  it("a stream cut after QEMU sent everything (inside VMDESC): the adapter resumes the source from postmigrate", async () => {
    const { src, dst } = await pair();
    const marker = Buffer.from('{"page_size"');
    let cutAt = -1;
    const filter = (chunk: Buffer, at: number): Buffer | null => {
      if (cutAt >= 0) return null;
      const i = chunk.indexOf(marker);
      if (i < 0) return chunk;
      cutAt = at + i;
      return chunk.subarray(0, i);
    };
    let err: unknown;
    try {
      await migrateThroughProxies({ sourceQmp: src.qmp, destinationQmp: dst.qmp, sourceProxy: { inputFilter: filter, logger: quiet }, logger: quiet });
    } catch (e) {
      err = e;
    }
    expect(isProxyMigrationError(err)).toBe(true);
    const report = (err as ProxyMigrationError).report;
    expect(isTruncatedStream(report.error)).toBe(true);
    expect((report.error as MigrationStreamError).offset).toBe(cutAt);
    expect(report.source.migration).toBe("completed");
    expect(report.source.resumed).toBe(true);
    expect(await runState(src)).toBe("running");
  });
});
