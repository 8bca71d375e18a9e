/**
 * `gangway stream inspect|reencode` as a user runs them, on a stream saved from a real
 * QEMU; the canonical re-encode must load into QEMU (-incoming "exec:cat OUT") and give
 * back the image byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { captureStream, IMAGE_ADDR, mixedImage, readGuestMemory, runState, streamFleet, vmName, type StreamFleet } from "./helpers/vms.ts";

let fleet: StreamFleet;
let dir: string;
let streamFile: string;
let image: Buffer;

function gangway(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ["bin/gangway.mjs", ...args], { env: { ...process.env, GANGWAY_LOG_LEVEL: "warn" } });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  fleet = await streamFleet();
  dir = fleet.dir;
  image = mixedImage(1024, 3);
  const imageFile = join(dir, "image.bin");
  await writeFile(imageFile, image);
  const vm = await fleet.idle(vmName("cli"), { image: imageFile });
  streamFile = join(dir, "saved.stream");
  await captureStream(vm, streamFile);
  await vm.stop();
});

afterAll(async () => {
  await fleet?.stopAll();
});

describe("gangway stream", () => {
  it("inspect --json summarizes machine, blocks, pages per round, devices, vmdesc and size", async () => {
    const r = await gangway("stream", "inspect", streamFile, "--json");
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as {
      bytes: number;
      machine: string;
      ram: { blocks: { id: string; usedLength: number }[] };
      rounds: { round: number; zeroPages: number; normalPages: number }[];
      pages: { zero: number; normal: number; total: number };
      devices: { idstr: string; instanceId: number; versionId: number; bytes: number }[];
      vmdesc: { present: boolean };
      eof: boolean;
    };
    expect(s.bytes).toBe((await readFile(streamFile)).length);
    expect(s.machine).toMatch(/^pc-i440fx-/);
    expect(s.ram.blocks[0]).toEqual({ id: "m0", usedLength: 256 * 1024 * 1024 });
    expect(s.rounds[0].round).toBe(1);
    expect(s.rounds[0].zeroPages + s.rounds[0].normalPages).toBe(s.ram.blocks.reduce((a, b) => a + b.usedLength / 4096, 0));
    // The image's uniform, duplicate and random pages (3 in 4) are normal pages.
    expect(s.pages.normal).toBeGreaterThanOrEqual(768);
    expect(s.devices.map((d) => d.idstr)).toContain("cpu");
    expect(s.devices.every((d) => d.bytes > 0)).toBe(true);
    expect(s.vmdesc.present).toBe(true);
    expect(s.eof).toBe(true);
  });

  it("inspect prints a readable table by default", async () => {
    const r = await gangway("stream", "inspect", streamFile);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/machine: pc-i440fx-/);
    expect(r.stdout).toMatch(/^ {2}m0 +268435456 +65536$/m);
    expect(r.stdout).toMatch(/device sections: \d+/);
    expect(r.stdout).toMatch(/vmdesc: yes/);
  });

  it("reencode writes a canonical stream that QEMU loads, with the image byte for byte", async () => {
    const out = join(dir, "canonical.stream");
    const r = await gangway("stream", "reencode", streamFile, out, "--json");
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as { outputBytes: number; inputBytes: number; normalPages: number };
    expect(res.outputBytes).toBe((await readFile(out)).length);
    expect(res.outputBytes).toBeLessThanOrEqual(res.inputBytes);
    const again = JSON.parse((await gangway("stream", "inspect", out, "--json")).stdout) as { ramSections: unknown; rounds: unknown[] };
    expect(again.ramSections).toEqual({ start: 1, part: 1, end: 1 });
    expect(again.rounds).toHaveLength(1);

    const dst = await fleet.idle(vmName("load"), { role: "destination", incoming: `exec:cat ${out}` });
    try {
      expect((await dst.qmp.waitForMigration({ timeoutMs: 30_000 })).status).toBe("completed");
      for (let i = 0; i < 100 && (await runState(dst)) !== "paused"; i++) await sleep(20);
      expect(await runState(dst)).toBe("paused");
      expect((await readGuestMemory(dst, IMAGE_ADDR, image.length)).equals(image)).toBe(true);
      await dst.qmp.cont();
      expect(await runState(dst)).toBe("running");
    } finally {
      await dst.stop();
    }
  });

  it("says clearly what is wrong: missing file, not a stream, truncated stream, bad usage", async () => {
    const missing = await gangway("stream", "inspect", join(dir, "nope"));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no such file: .*nope/);
    const junk = join(dir, "junk");
    await writeFile(junk, Buffer.from("hello, not a migration stream"));
    const bad = await gangway("stream", "inspect", junk);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/not a QEMU migration stream: magic 0x68656c6c at byte 0/);
    const cut = join(dir, "cut.stream");
    await writeFile(cut, (await readFile(streamFile)).subarray(0, 500_000));
    const trunc = await gangway("stream", "reencode", cut, join(dir, "never.stream"));
    expect(trunc.code).toBe(1);
    expect(trunc.stderr).toMatch(/truncated at byte 500000/);
    await expect(readFile(join(dir, "never.stream"))).rejects.toThrow(/ENOENT/);
    const usage = await gangway("stream", "reencode", streamFile);
    expect(usage.code).toBe(64);
    expect(usage.stderr).toMatch(/reencode needs IN and OUT/);
    expect((await gangway("stream", "frob")).stderr).toMatch(/unknown stream subcommand "frob"/);
  });
});
