/** Which QEMU runs: the selected binary, its firmware directories, its version. */
import { afterEach, describe, expect, it } from "vitest";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultQemuBinary, firmwareDirArgs, parseQemuVersion, qemuVersion } from "../../adapters/qemu/binary.ts";

const saved = process.env.GANGWAY_QEMU;
afterEach(() => {
  if (saved === undefined) delete process.env.GANGWAY_QEMU;
  else process.env.GANGWAY_QEMU = saved;
});

describe("the QEMU binary", () => {
  it("is GANGWAY_QEMU when set, else the system's", () => {
    delete process.env.GANGWAY_QEMU;
    expect(defaultQemuBinary()).toBe("qemu-system-x86_64");
    process.env.GANGWAY_QEMU = "/opt/q/usr/bin/qemu-system-x86_64";
    expect(defaultQemuBinary()).toBe("/opt/q/usr/bin/qemu-system-x86_64");
  });

  it("an unpacked QEMU gets its own ROM and SeaBIOS directories first; the system's none", async () => {
    const prefix = await mkdtemp(join(tmpdir(), "gw-qemu-"));
    try {
      await mkdir(join(prefix, "usr/share/qemu"), { recursive: true });
      await mkdir(join(prefix, "usr/share/seabios"), { recursive: true });
      expect(firmwareDirArgs(join(prefix, "usr/bin/qemu-system-x86_64"))).toEqual(["-L", join(prefix, "usr/share/qemu"), "-L", join(prefix, "usr/share/seabios")]);
      expect(firmwareDirArgs("qemu-system-x86_64")).toEqual([]);
      expect(firmwareDirArgs("/usr/bin/qemu-system-x86_64")).toEqual([]);
    } finally {
      await rm(prefix, { recursive: true, force: true });
    }
  });

  it("says its version", async () => {
    expect(parseQemuVersion("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright")).toBe("10.0.2");
    expect(parseQemuVersion("something else")).toBeUndefined();
    expect(await qemuVersion("qemu-system-x86_64")).toMatch(/^\d+\.\d+\.\d+$/);
    expect(await qemuVersion("/nonexistent/qemu")).toBeUndefined();
  });
});
