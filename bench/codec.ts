/**
 * Codec throughput: parse + re-encode of a real QEMU 7.2 stream, in MB/s of stream bytes.
 *
 *   npx tsx bench/codec.ts [--stream FILE] [--runs N]
 *
 * Without --stream it boots the gangway test guest (256 MiB, 25% zero pages) under TCG,
 * saves its migration stream (~200 MB) to a temporary file, and benchmarks on that.
 * The stream is read into memory first, so only the codec is timed; chunks are fed at
 * the sizes a unix socket (64 KiB) and a file stream (1 MiB) deliver.
 */
import { parseArgs } from "node:util";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { StreamParser } from "../adapters/qemu/stream/parser.ts";
import { StreamEncoder } from "../adapters/qemu/stream/encoder.ts";
import { parseStream } from "../adapters/qemu/stream/stream.ts";
import { encodeStream } from "../adapters/qemu/stream/encoder.ts";
import { startVm } from "../adapters/qemu/vm.ts";

const GUEST = resolve("guest/build/gangway-guest.elf");

/** Boots the test guest and saves its migration stream (QMP migrate "exec:cat > FILE"). */
async function captureGuestStream(file: string, baseDir: string): Promise<void> {
  if (!existsSync(GUEST)) throw new Error(`${GUEST} is missing: run \`make -s -C guest\` (or pass --stream FILE)`);
  const vm = await startVm({ name: "codec-bench", memoryMiB: 256, kernel: GUEST, append: "seed=9 zero=25 shared=25 rate=0" }, { baseDir });
  try {
    await vm.serial.waitFor(/READY/, 30_000);
    await vm.qmp.migrate(`exec:cat > ${file}`);
    const info = await vm.qmp.waitForMigration({ timeoutMs: 120_000 });
    if (info.status !== "completed") throw new Error(`capture migration ${info.status}`);
  } finally {
    await vm.stop();
  }
}

/** Sync parse (+ optional encode) over the stream in `chunk`-byte pieces; returns seconds. */
function runSync(stream: Buffer, chunk: number, encode: boolean): { seconds: number; pages: number; out: number } {
  const t0 = performance.now();
  const parser = new StreamParser();
  const enc = new StreamEncoder();
  let pages = 0;
  let out = 0;
  for (let p = 0; p < stream.length; p += chunk) {
    parser.push(stream.subarray(p, p + chunk));
    parser.flush();
    for (const r of parser.drain()) {
      if (r.type === "pages") pages += r.count;
      if (encode) for (const b of enc.encode(r)) out += b.length;
    }
  }
  parser.end();
  for (const r of parser.drain()) if (encode) for (const b of enc.encode(r)) out += b.length;
  if (encode) for (const b of enc.finish()) out += b.length;
  return { seconds: (performance.now() - t0) / 1000, pages, out };
}

/** The async pipeline the proxies use: parseStream → encodeStream. */
async function runAsync(stream: Buffer, chunk: number): Promise<{ seconds: number; out: number }> {
  async function* chunks() {
    for (let p = 0; p < stream.length; p += chunk) yield stream.subarray(p, p + chunk);
  }
  const t0 = performance.now();
  let out = 0;
  for await (const b of encodeStream(parseStream(chunks()))) out += b.length;
  return { seconds: (performance.now() - t0) / 1000, out };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { stream: { type: "string" }, runs: { type: "string" } } });
  const runs = Number(values.runs ?? 5);
  let dir: string | undefined;
  let file = values.stream;
  try {
    if (!file) {
      dir = await mkdtemp(join(tmpdir(), "gw-codec-bench-"));
      file = join(dir, "guest.stream");
      process.stderr.write("capturing a 256 MiB test guest's migration stream...\n");
      await captureGuestStream(file, dir);
    }
    const stream = await readFile(file);
    const mb = stream.length / 1e6;
    process.stdout.write(`stream: ${file}, ${mb.toFixed(1)} MB\n`);
    if (stream.length < 100e6) process.stdout.write("note: under 100 MB; figures are noisier\n");
    runSync(stream, 65536, true); // warm-up (JIT)
    const rows: [string, number][] = [];
    for (const [label, chunk, encode] of [
      ["parse, 64 KiB chunks", 65536, false],
      ["parse + encode, 64 KiB chunks", 65536, true],
      ["parse + encode, 1 MiB chunks", 1 << 20, true],
    ] as const) {
      const t: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = runSync(stream, chunk, encode);
        if (encode && r.out !== stream.length) throw new Error(`re-encoded ${r.out} bytes of ${stream.length}`);
        t.push(r.seconds);
      }
      rows.push([label, mb / median(t)]);
    }
    const ta: number[] = [];
    for (let i = 0; i < runs; i++) {
      const r = await runAsync(stream, 65536);
      if (r.out !== stream.length) throw new Error(`re-encoded ${r.out} bytes of ${stream.length}`);
      ta.push(r.seconds);
    }
    rows.push(["parseStream → encodeStream (async), 64 KiB", mb / median(ta)]);
    for (const [label, mbps] of rows) process.stdout.write(`${label.padEnd(46)} ${mbps.toFixed(0).padStart(6)} MB/s (median of ${runs})\n`);
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}

await main();
