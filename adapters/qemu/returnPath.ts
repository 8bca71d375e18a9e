/**
 * QEMU 7.2's return path: the messages a destination sends back to its source on the
 * migration connection (be16 type, be16 length, payload). gangway stands between the two
 * QEMUs, so it reads them from the destination (page faults in post-copy, the final SHUT)
 * and writes the ones the source needs (REQ_PAGES for the pages it must send first, SHUT
 * when gangway has taken the whole stream).
 */

export const RpMessage = {
  invalid: 0,
  shut: 1,
  pong: 2,
  reqPagesId: 3,
  reqPages: 4,
  recvBitmap: 5,
  resumeAck: 6,
} as const;

export type ReturnPathMessage =
  | { type: "shut"; value: number }
  | { type: "pong"; value: number }
  /** A page fault: `block` is named by REQ_PAGES_ID and carried over by plain REQ_PAGES. */
  | { type: "reqPages"; block: string; start: number; length: number }
  | { type: "other"; id: number; payload: Buffer };

export class ReturnPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReturnPathError";
  }
}

function header(type: number, len: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(type, 0);
  b.writeUInt16BE(len, 2);
  return b;
}

/** SHUT: the destination is done with the return path (0: fine). */
export function encodeShut(value = 0): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(value >>> 0, 0);
  return Buffer.concat([header(RpMessage.shut, 4), p]);
}

/** REQ_PAGES_ID: send these bytes of this RAM block first (post-copy). */
export function encodeReqPages(block: string, start: number, length: number): Buffer {
  const name = Buffer.from(block, "latin1");
  if (name.length === 0 || name.length > 255) throw new ReturnPathError(`RAM block name of ${name.length} bytes`);
  const p = Buffer.alloc(8 + 4 + 1 + name.length);
  p.writeBigUInt64BE(BigInt(start), 0);
  p.writeUInt32BE(length, 8);
  p.writeUInt8(name.length, 12);
  name.copy(p, 13);
  return Buffer.concat([header(RpMessage.reqPagesId, p.length), p]);
}

/**
 * Splits the bytes a destination QEMU writes back into messages. Feed chunks as they
 * arrive; complete messages come out, a partial one waits for the rest.
 */
export class ReturnPathDecoder {
  #pending: Buffer = Buffer.alloc(0);
  #block: string | undefined;

  push(chunk: Buffer): ReturnPathMessage[] {
    this.#pending = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    const out: ReturnPathMessage[] = [];
    while (this.#pending.length >= 4) {
      const type = this.#pending.readUInt16BE(0);
      const len = this.#pending.readUInt16BE(2);
      if (this.#pending.length < 4 + len) break;
      const p = this.#pending.subarray(4, 4 + len);
      this.#pending = this.#pending.subarray(4 + len);
      out.push(this.#decode(type, p));
    }
    return out;
  }

  #decode(type: number, p: Buffer): ReturnPathMessage {
    switch (type) {
      case RpMessage.shut:
      case RpMessage.pong:
        if (p.length !== 4) throw new ReturnPathError(`${type === RpMessage.shut ? "SHUT" : "PONG"} with ${p.length} bytes`);
        return { type: type === RpMessage.shut ? "shut" : "pong", value: p.readUInt32BE(0) };
      case RpMessage.reqPages:
      case RpMessage.reqPagesId: {
        if (p.length < 12) throw new ReturnPathError(`REQ_PAGES with ${p.length} bytes`);
        const start = Number(p.readBigUInt64BE(0));
        const length = p.readUInt32BE(8);
        if (type === RpMessage.reqPagesId) {
          const n = p[12] ?? 0;
          if (p.length !== 13 + n) throw new ReturnPathError(`REQ_PAGES_ID with ${p.length} bytes for a ${n}-byte name`);
          this.#block = p.toString("latin1", 13, 13 + n);
        }
        if (this.#block === undefined) throw new ReturnPathError("REQ_PAGES before any REQ_PAGES_ID named a block");
        return { type: "reqPages", block: this.#block, start, length };
      }
      case RpMessage.invalid:
        throw new ReturnPathError("INVALID return-path message");
      case RpMessage.recvBitmap:
      case RpMessage.resumeAck:
        // Post-copy recovery's messages: passed up, gangway does not use them.
        return { type: "other", id: type, payload: Buffer.from(p) };
      default:
        // QEMU 7.2 has no other message (its source gives up on the return path too).
        throw new ReturnPathError(`unknown return-path message ${type}`);
    }
  }
}
