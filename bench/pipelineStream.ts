/**
 * Writes a VM's memory as the QEMU 7.2 pre-copy stream its source QEMU would send: header,
 * configuration, START ram (setup), PARTs of 4096 pages in (block, offset) order with ZERO
 * records for zero pages and CONTINUE as QEMU sets it, an empty END, 31 device sections
 * (~13 KB), EOF, and a ~99 KB VMDESC. One pass: the guest is idle, nothing is re-dirtied.
 * Built from the codec tests' record builders and the real encoder.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { StreamEncoder } from "../adapters/qemu/stream/encoder.ts";
import type { StreamRecord } from "../adapters/qemu/stream/records.ts";
import { batch, device, head, ramEnd, ramPart, ramStart } from "../test/stream/helpers/synthetic.ts";
import { PAGE, type VmMemory } from "./pipelineMix.ts";

const PART_PAGES = 4096;
const BATCH_PAGES = 1024;
const DEVICES = ["timer", "cpu_common", "cpu", "apic", "kvmclock", "fw_cfg", "PCIBUS", "i440FX", "PIIX3", "i8259", "i8259", "ioapic", "mc146818rtc", "i8254", "hpet", "dma", "dma", "fdc", "i2c_bus", "piix4_pm", "ide", "serial", "parallel", "ps2kbd", "ps2mouse", "pckbd", "vmmouse", "port92", "e1000", "vga", "acpi_build"];

/** A device section body: random, but never the footer byte, so it cannot end early. */
function body(bytes: number): Buffer {
  const b = randomBytes(bytes);
  for (let i = 0; i < b.length; i++) if (b[i] === 0x7e) b[i] = 0x7d;
  return b;
}

function* records(mem: VmMemory): Generator<StreamRecord> {
  yield* head();
  yield* ramStart(mem.blocks);
  const pages: [number, number | Buffer][] = [];
  let batches: ReturnType<typeof batch>[] = [];
  let inPart = 0;
  const flushBatch = (block: string) => {
    if (pages.length) batches.push(batch(block, pages.splice(0), 1, true));
  };
  for (let b = 0; b < mem.blocks.length; b++) {
    const block = mem.blocks[b]!;
    const content = mem.contents[b]!;
    for (let at = 0; at < block.usedLength; at += PAGE) {
      const page = content.subarray(at, at + PAGE);
      // QEMU 7.2 sends a ZERO record only for an all-zero page; uniform non-zero pages are pages.
      pages.push([at, page[0] === 0 && page.equals(ZERO) ? 0 : page]);
      inPart++;
      if (pages.length === BATCH_PAGES) flushBatch(block.id);
      if (inPart === PART_PAGES) {
        flushBatch(block.id);
        yield* ramPart(...batches);
        batches = [];
        inPart = 0;
      }
    }
    flushBatch(block.id);
  }
  if (batches.length) yield* ramPart(...batches);
  yield* ramEnd();
  for (let i = 0; i < DEVICES.length; i++) yield device(3 + i, DEVICES[i]!, body(i === 2 ? 4000 : 300));
  yield { type: "eof", offset: 0 };
  const desc = JSON.stringify({ page_size: PAGE, devices: DEVICES.map((name, i) => ({ name, instance_id: 0, vmsd_name: name, version: 1, fields: Array.from({ length: 40 }, (_, f) => ({ name: `field${f}`, type: "uint32", size: 4, index: i })) })) });
  yield { type: "vmdesc", offset: 0, json: Buffer.from(desc) };
}

const ZERO = Buffer.alloc(PAGE);

/** Writes the stream to `path`; returns its size in bytes. */
export function writeStreamFile(path: string, mem: VmMemory): number {
  const fd = openSync(path, "w");
  try {
    const enc = new StreamEncoder({ continueMode: "auto" });
    for (const r of records(mem)) for (const b of enc.encode(r)) writeSync(fd, b);
    for (const b of enc.finish()) writeSync(fd, b);
    return enc.bytesOut;
  } finally {
    closeSync(fd);
  }
}
