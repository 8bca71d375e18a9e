/**
 * Which QEMU runs the VMs, and which version it is. Debian 12's 7.2 is the default; another
 * (the 10.0 that scripts/setup.sh unpacks into .qemu/10.0) is chosen with $GANGWAY_QEMU.
 * Both ends of a migration must run the same version: gangway starts VMs with the machine
 * alias `pc`, which each version resolves to its own machine type, and QEMU refuses a stream
 * of another machine type.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

/** $GANGWAY_QEMU (a path), else the system's qemu-system-x86_64. */
export function defaultQemuBinary(): string {
  return process.env["GANGWAY_QEMU"] || "qemu-system-x86_64";
}

/**
 * A QEMU unpacked under a prefix (`<prefix>/usr/bin/qemu-system-x86_64`) looks for its
 * firmware in the system's /usr/share (Debian builds are not relocatable): its own ROMs and
 * SeaBIOS come first with -L, or it would boot another version's.
 */
export function firmwareDirArgs(binary: string): string[] {
  const prefix = /^(\/.+)\/usr\/bin\/[^/]+$/.exec(binary)?.[1];
  if (!prefix) return [];
  return ["qemu", "seabios"].map((d) => join(prefix, "usr/share", d)).filter((d) => existsSync(d)).flatMap((d) => ["-L", d]);
}

/** "10.0.2" from `QEMU emulator version 10.0.2 (Debian …)`, or undefined if it does not say. */
export function parseQemuVersion(versionOutput: string): string | undefined {
  return /QEMU emulator version (\d+\.\d+\.\d+)/.exec(versionOutput)?.[1];
}

/** The binary's version (`--version`), or undefined if it does not run. */
export async function qemuVersion(binary = defaultQemuBinary()): Promise<string | undefined> {
  try {
    const { stdout } = await promisify(execFile)(binary, ["--version"], { timeout: 10_000 });
    return parseQemuVersion(stdout);
  } catch {
    return undefined;
  }
}
