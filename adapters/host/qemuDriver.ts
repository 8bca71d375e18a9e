/**
 * What a host agent needs from QEMU, in its own words. The implementation (qemuDriverImpl.ts)
 * sits on the QMP client, the VM launcher and the stream proxies; tests of the agent's
 * decisions can use another.
 */
import type { VmSpec } from "../../schemas/index.ts";
import type { StreamRecord } from "../qemu/stream/records.ts";

export type VmRole = "source" | "destination";

export interface RunningVm {
  readonly name: string;
  readonly spec: VmSpec;
  readonly role: VmRole;
  /** Guest RAM as a file (memory-backend-file): offset = guest-physical address of block m0. */
  readonly ramPath: string;
  /** QEMU's run state (query-status): running, paused, postmigrate, inmigrate, … */
  status(): Promise<string>;
  cont(): Promise<void>;
  stop(): Promise<void>;
  /** Quit QEMU (quit, then SIGKILL if it lingers) and remove its files. */
  quit(): Promise<void>;
  /** Sends text to the serial console and waits for a line matching `expect`. */
  console(send: string, expect: RegExp, timeoutMs: number): Promise<string>;
  /** Resolves when the QEMU process is gone. */
  readonly exited: Promise<unknown>;
}

/** The outgoing stream of a source VM, as parsed records. */
export interface OutgoingStream {
  records: AsyncIterable<StreamRecord>;
  /** Bytes QEMU has written so far (the native stream). */
  nativeBytes(): number;
  /** Time (ms since epoch) the guest stopped for the final pass; resolves when it happens. */
  stopped: Promise<number>;
  /** Stops the outgoing migration (migrate_cancel) if it is still running. */
  cancel(): Promise<void>;
}

export interface QemuDriver {
  /**
   * Removes what an earlier agent of this host left behind when it died (its QEMUs die
   * with it; their guest-RAM files do not). Returns what was removed.
   */
  reclaim(): Promise<string[]>;
  startVm(spec: VmSpec, role: VmRole, tag: string): Promise<RunningVm>;
  /** Starts migrating a source VM into a proxy this host owns. */
  migrateOut(vm: RunningVm): Promise<OutgoingStream>;
  /** Feeds a rebuilt stream into a destination VM (started paused, -incoming defer); resolves when QEMU has loaded it. */
  migrateIn(vm: RunningVm, records: AsyncIterable<StreamRecord>): Promise<{ bytes: number }>;
}
