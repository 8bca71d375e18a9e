/** The return-path codec: what gangway writes to a source QEMU and reads from a destination. */
import { describe, expect, it } from "vitest";
import { ReturnPathDecoder, ReturnPathError, encodeReqPages, encodeShut } from "../../adapters/qemu/returnPath.ts";

describe("return path", () => {
  it("REQ_PAGES_ID names the block; a following REQ_PAGES keeps it; messages split anywhere are reassembled", () => {
    const plain = Buffer.alloc(16);
    plain.writeUInt16BE(4, 0); // REQ_PAGES
    plain.writeUInt16BE(12, 2);
    plain.writeBigUInt64BE(8192n, 4);
    plain.writeUInt32BE(4096, 12);
    const bytes = Buffer.concat([encodeReqPages("pc.ram", 4096, 4096), plain, encodeShut(0)]);
    for (const cut of [1, 3, 7, 20, bytes.length - 1]) {
      const d = new ReturnPathDecoder();
      const out = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))];
      expect(out).toEqual([
        { type: "reqPages", block: "pc.ram", start: 4096, length: 4096 },
        { type: "reqPages", block: "pc.ram", start: 8192, length: 4096 },
        { type: "shut", value: 0 },
      ]);
    }
  });

  it("refuses what QEMU never sends: REQ_PAGES before a block was named, INVALID, a bad length", () => {
    const plain = Buffer.alloc(16);
    plain.writeUInt16BE(4, 0);
    plain.writeUInt16BE(12, 2);
    expect(() => new ReturnPathDecoder().push(plain)).toThrow(ReturnPathError);
    expect(() => new ReturnPathDecoder().push(Buffer.from([0, 0, 0, 0]))).toThrow(/INVALID/);
    expect(() => new ReturnPathDecoder().push(Buffer.from([0, 1, 0, 2, 0, 0]))).toThrow(/SHUT/);
  });
});
