/** A serial console on a QEMU chardev unix socket: collect output, wait for a pattern, type. */
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export class TestSerial {
  private out = "";
  private waiters: (() => void)[] = [];
  private constructor(private readonly socket: Socket) {
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => {
      this.out += d;
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on("error", () => undefined);
  }

  static async connect(path: string, timeoutMs = 10_000): Promise<TestSerial> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const s = connect(path);
        await once(s, "connect");
        return new TestSerial(s);
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(30);
      }
    }
  }

  /** Everything received so far. */
  get text(): string {
    return this.out;
  }

  /** Waits until the output after `from` matches; returns the match and where it ends. */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<{ match: RegExpExecArray; end: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.out.slice(from));
      if (m) return { match: m, end: from + m.index + m[0].length };
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`serial: no ${re} within ${timeoutMs} ms; output so far:\n${this.out.slice(-2000)}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), sleep(Math.min(left, 200))]);
    }
  }

  send(text: string): void {
    this.socket.write(text);
  }

  close(): void {
    this.socket.destroy();
  }
}
