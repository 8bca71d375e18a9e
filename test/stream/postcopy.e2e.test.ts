/**
 * The codec on a real post-copy stream: QEMU migrates natively through a byte relay (which
 * also carries the return path back), the relay keeps a copy of what the source sent, and
 * the codec must parse it into typed post-copy commands (OPEN_RETURN_PATH, ADVISE,
 * RAM_DISCARD, PACKAGED with LISTEN, device sections, RUN) and re-encode it byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createServer, connect, type Socket } from "node:net";
import { once } from "node:events";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseBuffer, parsePackaged } from "../../adapters/qemu/stream/stream.ts";
import { encodeRecords } from "../../adapters/qemu/stream/encoder.ts";
import { canonicalize } from "../../adapters/qemu/stream/canonical.ts";
import type { StreamRecord } from "../../adapters/qemu/stream/records.ts";
import type { VmConfig } from "../../adapters/qemu/vm.ts";
import { runState, streamFleet, TEST_GUEST as GUEST, vmName, type StreamFleet } from "./helpers/vms.ts";

const cleanup: (() => unknown)[] = [];
let fleet: StreamFleet;

beforeAll(async () => {
  fleet = await streamFleet();
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await Promise.resolve(c()).catch(() => undefined);
  await fleet?.stopAll();
});

/** A relay source → destination (teeing the forward bytes) and destination → source (the return path). */
async function relay(listenPath: string, targetPath: string): Promise<{ sent: Buffer[]; done: Promise<void> }> {
  const sent: Buffer[] = [];
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const server = createServer((src: Socket) => {
    server.close();
    const dst = connect(targetPath);
    src.on("data", (c: Buffer) => sent.push(c));
    src.pipe(dst);
    dst.pipe(src);
    const end = () => {
      src.destroy();
      dst.destroy();
      finish();
    };
    src.on("close", end);
    dst.on("close", end);
    src.on("error", () => undefined);
    dst.on("error", () => undefined);
  });
  server.listen(listenPath);
  await once(server, "listening");
  cleanup.push(() => server.close());
  return { sent, done };
}

describe.skipIf(!existsSync(GUEST))("the codec on a real post-copy stream", () => {
  it("parses OPEN_RETURN_PATH, ADVISE, RAM_DISCARD, PACKAGED (LISTEN, devices, RUN) and re-encodes it byte for byte", async () => {
    const dir = fleet.dir;
    const guest: VmConfig = { name: vmName("pc"), kernel: GUEST, append: "seed=2 rate=2000", memoryMiB: 128 };
    const src = await fleet.start(guest);
    const dst = await fleet.start(guest, { role: "destination" });
    await src.serial.waitFor(/READY/, 30_000);

    for (const q of [src.qmp, dst.qmp]) await q.migrateSetCapabilities({ "postcopy-ram": true });
    const incoming = join(dir, "in.sock");
    await dst.qmp.migrateIncoming(`unix:${incoming}`);
    const r = await relay(join(dir, "relay.sock"), incoming);
    // A slow pre-copy, so post-copy starts with most pages still to send.
    await src.qmp.migrateSetParameters({ "max-bandwidth": 64 * 1024 * 1024 });
    await src.qmp.migrate(`unix:${join(dir, "relay.sock")}`);
    await sleep(300);
    await src.qmp.migrateStartPostcopy();
    expect((await src.qmp.waitForMigration({ timeoutMs: 60_000 })).status).toBe("completed");
    await r.done;
    expect(await runState(dst)).toBe("paused");
    await dst.qmp.cont();
    const verdict = await dst.serial.request("v", /VERIFY (OK|FAIL).*/, 30_000);
    expect(verdict[0]).toMatch(/^VERIFY OK/);

    const stream = Buffer.concat(r.sent);
    const records = parseBuffer(stream);
    expect(encodeRecords(records).equals(stream)).toBe(true);
    const cmds = records.flatMap((x) => (x.type === "command" ? [x.command.cmd] : []));
    expect(cmds.slice(0, 2)).toEqual(["openReturnPath", "ping"]);
    expect(cmds).toContain("postcopyAdvise");
    expect(cmds).toContain("packaged");
    expect(cmds).toContain("postcopyRamDiscard");
    const pkg = records.find((x) => x.type === "command" && x.command.cmd === "packaged");
    const nested = parsePackaged(pkg?.type === "command" && pkg.command.cmd === "packaged" ? pkg.command.data : Buffer.alloc(0));
    const nestedKinds = nested.map((x) => (x.type === "command" ? x.command.cmd : x.type));
    expect(nestedKinds[0]).toBe("postcopyListen");
    expect(nestedKinds[nestedKinds.length - 1]).toBe("postcopyRun");
    expect(nestedKinds.filter((k) => k === "device").length).toBeGreaterThan(20);
    // Pages after the switch-over follow the PACKAGED command; the stream ends with EOF and no VMDESC.
    const pkgIndex = records.indexOf(pkg!);
    expect(records.slice(pkgIndex).some((x) => x.type === "pages")).toBe(true);
    expect(records[records.length - 1].type).toBe("eof");

    // Its canonical form is a plain pre-copy stream (discards applied, devices unpacked)
    // that a fresh QEMU loads, and the guest's self-check passes there too.
    const canon: StreamRecord[] = [];
    for await (const x of canonicalize(records)) canon.push(x);
    const file = join(dir, "canonical.stream");
    await writeFile(file, encodeRecords(canon, { continueMode: "auto" }));
    const again = await fleet.start({ ...guest, name: vmName("pc2") }, { role: "destination", incoming: `exec:cat ${file}` });
    expect((await again.qmp.waitForMigration({ timeoutMs: 30_000 })).status).toBe("completed");
    await again.qmp.cont();
    const verdict2 = await again.serial.request("v", /VERIFY (OK|FAIL).*/, 30_000);
    expect(verdict2[0]).toMatch(/^VERIFY OK/);
  });
});
