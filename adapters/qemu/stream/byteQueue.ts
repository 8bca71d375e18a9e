/**
 * A queue of input chunks read as one byte sequence, without joining them: reads that
 * fit in the head chunk are zero-copy, the rest copy only the bytes they need. Positions
 * passed to the peek methods are relative to the next unread byte.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private headIndex = 0;
  /** Read position inside the head chunk. */
  pos = 0;
  /** Unread bytes in the queue. */
  length = 0;
  /** Absolute stream offset of the next unread byte. */
  offset = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The chunk holding the next unread byte (undefined when empty); read it from `pos`. */
  get head(): Buffer | undefined {
    return this.chunks[this.headIndex];
  }

  /** Marks `n` bytes as read. */
  skip(n: number): void {
    this.length -= n;
    this.offset += n;
    let pos = this.pos + n;
    let head = this.chunks[this.headIndex];
    while (head !== undefined && pos >= head.length) {
      pos -= head.length;
      this.headIndex++;
      head = this.chunks[this.headIndex];
    }
    this.pos = pos;
    if (this.headIndex > 64) {
      this.chunks = this.chunks.slice(this.headIndex);
      this.headIndex = 0;
    }
  }

  /** The byte `i` positions ahead. Caller checks `i < length`. */
  byteAt(i: number): number {
    let k = this.headIndex;
    let p = this.pos + i;
    let c = this.chunks[k];
    while (p >= c.length) {
      p -= c.length;
      c = this.chunks[++k];
    }
    return c[p];
  }

  u16(i: number): number {
    const h = this.chunks[this.headIndex];
    const p = this.pos + i;
    if (p + 2 <= h.length) return h.readUInt16BE(p);
    return (this.byteAt(i) << 8) | this.byteAt(i + 1);
  }

  u32(i: number): number {
    const h = this.chunks[this.headIndex];
    const p = this.pos + i;
    if (p + 4 <= h.length) return h.readUInt32BE(p);
    return ((this.byteAt(i) << 24) >>> 0) + ((this.byteAt(i + 1) << 16) | (this.byteAt(i + 2) << 8) | this.byteAt(i + 3));
  }

  /** A be64 as a number; exact up to 2^53 (guest RAM offsets and sizes are far below). */
  u64(i: number): number {
    return this.u32(i) * 4294967296 + this.u32(i + 4);
  }

  /** `n` bytes from `i` ahead, without consuming: zero-copy when inside the head chunk. */
  peek(i: number, n: number): Buffer {
    const h = this.chunks[this.headIndex];
    const p = this.pos + i;
    if (p + n <= h.length) return h.subarray(p, p + n);
    const out = Buffer.allocUnsafe(n);
    this.copyOut(i, out, 0, n);
    return out;
  }

  /** Reads and consumes `n` bytes (zero-copy when inside the head chunk). */
  take(n: number): Buffer {
    const b = n === 0 ? Buffer.alloc(0) : this.peek(0, n);
    this.skip(n);
    return b;
  }

  /** Copies `n` bytes from `i` ahead into target at targetStart, without consuming. */
  copyOut(i: number, target: Uint8Array, targetStart: number, n: number): void {
    // Nothing to copy. Without this, a zero-length read ending exactly at the end of the
    // queued bytes (found by fuzzing: a COMMAND with an empty payload whose 5-byte header
    // spans two chunks, the second ending with it) walked past the last chunk: TypeError.
    if (n <= 0) return;
    let k = this.headIndex;
    let p = this.pos + i;
    let c = this.chunks[k];
    while (p >= c.length) {
      p -= c.length;
      c = this.chunks[++k];
    }
    while (n > 0) {
      const m = Math.min(n, c.length - p);
      target.set(c.subarray(p, p + m), targetStart);
      targetStart += m;
      n -= m;
      c = this.chunks[++k];
      p = 0;
    }
  }

  /** Position (relative, ≥ from) of the next `byte`, or -1 if not in the queue. */
  indexOf(byte: number, from: number): number {
    let k = this.headIndex;
    let base = -this.pos; // relative position of chunk k's first byte
    let c = this.chunks[k];
    while (c !== undefined && base + c.length <= from) {
      base += c.length;
      c = this.chunks[++k];
    }
    while (c !== undefined) {
      const j = c.indexOf(byte, Math.max(0, from - base));
      if (j >= 0) return base + j;
      base += c.length;
      c = this.chunks[++k];
    }
    return -1;
  }
}
