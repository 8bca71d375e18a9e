/**
 * For diagnosis and for tests that compare both ends byte for byte: with
 * GANGWAY_RAM_DUMP_DIR set, the RAM as it is proved is kept as
 * <dir>/<migration>.<vm>.<side>.ram — the stopped source's, and the destination's after its
 * load and repairs. A dump must not lengthen the downtime it observes (a 128 MiB copy takes
 * 0.3–1 s on a busy host, and both ends took one in the pause):
 *
 * - the source's is a hard link where the directory is on the RAM file's filesystem: a stopped
 *   source that commits never runs again, so its RAM file's bytes stay those at its stop until
 *   it is removed, and the link keeps them after (a rolled-back source runs on: its dump then
 *   follows the guest, and is not compared);
 * - the destination's copy starts as soon as the load ended, beside the read-back and the wait
 *   for the source's proof, and the repaired pages are written into it once they are read back.
 */
import { copyFile, link, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeRamPages } from "./ramProof.ts";

export interface RamDump {
  /** Completes the dump (the destination's with the pages repaired since it began), whole or not at all. */
  finish(repaired?: readonly { offset: number; page: Uint8Array }[]): Promise<string>;
}

/** Starts a dump of a stopped or paused VM's RAM, or nothing if dumps are off. */
export async function startRamDump(ramPath: string, migrationId: string, vm: string, side: "source" | "destination"): Promise<RamDump | undefined> {
  const dir = process.env.GANGWAY_RAM_DUMP_DIR;
  if (!dir) return undefined;
  await mkdir(dir, { recursive: true });
  const to = join(dir, `${migrationId}.${vm}.${side}.ram`);
  const part = `${to}.part`;
  await rm(part, { force: true });
  if (side === "source") {
    const linked = await link(ramPath, part).then(() => true, () => false);
    if (linked) {
      await rename(part, to);
      return { finish: async () => to };
    }
  }
  // Whole or not at all: a reader never meets a copy still being written.
  const copied = copyFile(ramPath, part);
  copied.catch(() => undefined); // awaited in finish
  return {
    async finish(repaired = []) {
      await copied;
      await writeRamPages(part, repaired);
      await rename(part, to);
      return to;
    },
  };
}
