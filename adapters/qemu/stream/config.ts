/**
 * The CONFIGURATION record: tag 0x07, be32 length, machine name, then optional vmstate
 * subsections (tag 0x05, u8 length + name, be32 version, body) that QEMU 7.2 adds only
 * for non-default target page bits, validated capabilities (x-ignore-shared) or
 * validate-uuid. We measure it on the queue, then keep it verbatim.
 */
import type { ByteQueue } from "./byteQueue.ts";
import { RecordTag } from "./constants.ts";
import { MalformedConfigError } from "./errors.ts";
import type { StreamConfig } from "./records.ts";

const NEED_MORE = -1;

/**
 * Length of the CONFIGURATION record at the head of the queue, or -1 when more input is
 * needed to tell. `ended`: no more input will come (so a missing subsection tag means none).
 */
export function measureConfig(q: ByteQueue, ended: boolean): number {
  if (q.length < 5) return NEED_MORE;
  let p = 5 + q.u32(1);
  for (;;) {
    if (q.length < p + 1) return ended ? (q.length === p ? p : NEED_MORE) : NEED_MORE;
    if (q.byteAt(p) !== RecordTag.subsection) return p;
    if (q.length < p + 2) return NEED_MORE;
    const nameLen = q.byteAt(p + 1);
    if (q.length < p + 2 + nameLen + 4) return NEED_MORE;
    const name = q.peek(p + 2, nameLen).toString("latin1");
    let body = p + 2 + nameLen + 4;
    switch (name) {
      case "configuration/target-page-bits":
        body += 4;
        break;
      case "configuration/uuid":
        body += 16;
        break;
      case "configuration/capabilities": {
        if (q.length < body + 4) return NEED_MORE;
        const count = q.u32(body);
        body += 4;
        for (let i = 0; i < count; i++) {
          if (q.length < body + 1) return NEED_MORE;
          body += 1 + q.byteAt(body);
        }
        break;
      }
      default:
        throw new MalformedConfigError(`unknown subsection "${name}"`, q.offset + p);
    }
    if (q.length < body) return NEED_MORE;
    p = body;
  }
}

/** Reads the fields of a complete CONFIGURATION record (as measured by measureConfig). */
export function decodeConfig(raw: Buffer, offset: number): StreamConfig {
  const nameLen = raw.readUInt32BE(1);
  if (nameLen > 255 || 5 + nameLen > raw.length) throw new MalformedConfigError(`machine name length ${nameLen}`, offset + 1);
  const config: StreamConfig = { machine: raw.toString("latin1", 5, 5 + nameLen) };
  let p = 5 + nameLen;
  while (p < raw.length) {
    const len = raw[p + 1];
    const name = raw.toString("latin1", p + 2, p + 2 + len);
    p += 2 + len + 4;
    if (name === "configuration/target-page-bits") {
      config.targetPageBits = raw.readUInt32BE(p);
      p += 4;
    } else if (name === "configuration/uuid") {
      config.uuid = Buffer.from(raw.subarray(p, p + 16));
      p += 16;
    } else {
      const count = raw.readUInt32BE(p);
      p += 4;
      const caps: string[] = [];
      for (let i = 0; i < count; i++) {
        caps.push(raw.toString("latin1", p + 1, p + 1 + raw[p]));
        p += 1 + raw[p];
      }
      config.capabilities = caps;
    }
  }
  return config;
}

/** A CONFIGURATION record naming only a machine (what QEMU 7.2 writes by default). */
export function encodeConfig(machine: string): Buffer {
  const name = Buffer.from(machine, "latin1");
  const out = Buffer.allocUnsafe(5 + name.length);
  out[0] = RecordTag.configuration;
  out.writeUInt32BE(name.length, 1);
  name.copy(out, 5);
  return out;
}
