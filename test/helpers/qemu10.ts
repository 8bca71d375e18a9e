/**
 * QEMU 10.0 beside the system's 7.2: scripts/setup.sh unpacks bookworm-backports' packages
 * into .qemu/10.0. Tests that run on it say so by this path (GANGWAY_QEMU for agents).
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";

export const QEMU10 = resolve(".qemu/10.0/usr/bin/qemu-system-x86_64");

/** The path, or a clear failure: a missing 10.0 is a set-up fault, never a silent skip. */
export function requireQemu10(): string {
  if (!existsSync(QEMU10)) throw new Error(`QEMU 10.0 is not at ${QEMU10}: run bash scripts/setup.sh (it fetches it from bookworm-backports)`);
  return QEMU10;
}
