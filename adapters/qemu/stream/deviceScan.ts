/**
 * Finding where an opaque (non-ram) section ends. Its body is vmstate that only the
 * device's own description could parse, so we look for its footer, 0x7E + be32 of its
 * section id, and accept a candidate only if a well-formed record follows it: a section
 * header with a printable idstr or a known section id, a known command with a valid
 * length, or EOF followed by VMDESC or the end of input. A false match needs those ~10
 * to ~270 bytes to line up by chance inside device state. The bytes are forwarded
 * verbatim in any case, so the split only labels them.
 */
import type { ByteQueue } from "./byteQueue.ts";
import { RecordTag } from "./constants.ts";
import { commandLengthOk } from "./commands.ts";

export type Boundary = "yes" | "no" | "more";

/** What the scanner knows about the stream around it. */
export interface ScanContext {
  /** Section ids opened by a START so far (PART/END may only name these). */
  startedSections: ReadonlySet<number>;
  /** Section ids of START/FULL must be below this (QEMU numbers its handlers from 0). */
  maxSectionId: number;
}

/** Whether a record boundary can be at `a` (relative to the queue's read position). */
export function checkBoundary(q: ByteQueue, a: number, ctx: ScanContext, ended: boolean): Boundary {
  const avail = q.length;
  const need = (n: number): boolean => a + n <= avail;
  if (!need(1)) return ended ? "yes" : "more";
  const tag = q.byteAt(a);
  switch (tag) {
    case RecordTag.eof: {
      if (!need(2)) return ended ? "yes" : "more";
      if (q.byteAt(a + 1) !== RecordTag.vmdesc) return "no";
      // At the end of input, EOF + a cut VMDESC: split here, so the error names the VMDESC.
      if (!need(7)) return ended ? "yes" : "more";
      return q.byteAt(a + 6) === 0x7b /* "{" */ ? "yes" : "no";
    }
    case RecordTag.sectionStart:
    case RecordTag.sectionFull: {
      if (!need(6)) return ended ? "no" : "more";
      if (q.u32(a + 1) >= ctx.maxSectionId) return "no";
      const len = q.byteAt(a + 5);
      if (len === 0) return "no";
      if (!need(6 + len + 8)) {
        // Reject early on a non-printable byte we can already see.
        for (let i = 0; a + 6 + i < avail && i < len; i++) if (!printable(q.byteAt(a + 6 + i))) return "no";
        return ended ? "no" : "more";
      }
      for (let i = 0; i < len; i++) if (!printable(q.byteAt(a + 6 + i))) return "no";
      return q.u32(a + 6 + len + 4) <= 0xffff ? "yes" : "no";
    }
    case RecordTag.sectionPart:
    case RecordTag.sectionEnd:
      if (!need(5)) return ended ? "no" : "more";
      return ctx.startedSections.has(q.u32(a + 1)) ? "yes" : "no";
    case RecordTag.command:
      if (!need(5)) return ended ? "no" : "more";
      return commandLengthOk(q.u16(a + 1), q.u16(a + 3)) ? "yes" : "no";
    default:
      return "no";
  }
}

/** Result of a scan: the section's length including its footer, or where to resume. */
export type ScanResult = { end: number } | { resumeAt: number };

/**
 * Scans for the footer of section `sectionId` from relative position `from`. Returns the
 * section's total length (footer included) or the position to resume from once more
 * input has arrived.
 */
export function scanForFooter(q: ByteQueue, sectionId: number, from: number, ctx: ScanContext, ended: boolean): ScanResult {
  let p = from;
  for (;;) {
    const c = q.indexOf(RecordTag.sectionFooter, p);
    if (c < 0) return { resumeAt: q.length };
    if (c + 5 > q.length) return { resumeAt: c };
    if (q.u32(c + 1) === sectionId) {
      const b = checkBoundary(q, c + 5, ctx, ended);
      if (b === "yes") return { end: c + 5 };
      if (b === "more") return { resumeAt: c };
    }
    p = c + 1;
  }
}

function printable(b: number): boolean {
  return b >= 0x20 && b <= 0x7e;
}
