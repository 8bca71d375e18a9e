/**
 * What a host agent needs from QEMU, in its own words. The implementation (qemuDriverImpl.ts)
 * sits on the QMP client, the VM launcher and the stream proxies; tests of the agent's
 * decisions can use another.
 */
import type { VmSpec } from "../../schemas/index.ts";
import type { StreamRecord } from "../qemu/stream/records.ts";
import type { ReturnPathMessage } from "../qemu/returnPath.ts";

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
  /**
   * Persists the agent's view of this VM (atomically, in its run directory) so that a
   * restarted agent can adopt it; a destination that leaves "incoming" starts to outlive
   * the agent from then on. Absent on drivers whose VMs die with their agent.
   */
  remember?(s: VmRecordState): Promise<void>;
  /** Lets go of the VM (QMP, serial) and leaves QEMU running: a shutdown that keeps the VMs. */
  detach?(): Promise<void>;
}

/**
 * The agent's view of a VM as its record keeps it. running / paused: the agent runs it;
 * migrating: it is leaving in `migrationId`; incoming: a destination never resumed (it must
 * never be resumed by anyone but the agent that received it); resuming: a destination the
 * commit told to resume (written before `cont`).
 */
export type RecordedState = "running" | "paused" | "migrating" | "incoming" | "resuming";
export interface VmRecordState {
  state: RecordedState;
  migrationId?: string;
  /** resuming: in post-copy (pages were still to come). */
  postcopy?: boolean;
}

/** A QEMU an earlier agent of this host left running, re-attached. */
export interface AdoptedVm {
  vm: RunningVm;
  record: VmRecordState;
  /** QEMU's run state now (query-status). */
  status: string;
}

/** A record whose QEMU is gone (its files are removed): what it was doing. */
export interface GoneVm {
  name: string;
  role: VmRole;
  record: VmRecordState;
}

/** The outgoing stream of a source VM, as parsed records. */
export interface OutgoingStream {
  records: AsyncIterable<StreamRecord>;
  /** Bytes QEMU has written so far (the native stream). */
  nativeBytes(): number;
  /** Time (ms since epoch) the guest stopped for the final pass; resolves when it happens. */
  stopped: Promise<number>;
  /** Whether the guest ran again after that stop (QMP RESUME since). */
  resumedSinceStop(): boolean;
  /** Stops the outgoing migration (migrate_cancel) if it is still running. */
  cancel(): Promise<void>;
  /** QEMU's own view of the pass in progress (query-migrate), for the dirty log. */
  figures(): Promise<{ remainingBytes: number; dirtyPagesRate: number; dirtySyncCount: number; status: string; cpuThrottlePercent: number }>;
  /** Caps QEMU's pre-copy stream (bytes/s) from now on; the guest runs on. Without a rate: back to the migration's own cap. */
  throttle(bytesPerSecond?: number): Promise<void>;
  /** Switch-over now, stop-and-copy: whatever remains is sent with the guest stopped. */
  forceComplete(): Promise<void>;
  /** Switch-over now, post-copy (needs MigrateOutOptions.postcopy). */
  startPostcopy(): Promise<void>;
  /** Post-copy: asks QEMU to send these bytes of a RAM block next. False once QEMU has sent its whole stream (nothing is left to ask for). */
  requestPages(block: string, start: number, length: number): boolean;
}

export interface MigrateOutOptions {
  /** Enable post-copy (postcopy-ram) so the migration may switch to it later. */
  postcopy?: boolean;
  /** Cap on QEMU's stream, bytes/s (virsh --bandwidth), before and after a post-copy switch-over. @default none */
  maxBandwidthBps?: number;
  /** QEMU's own downtime limit (it switches over by itself when the rest fits). */
  downtimeLimitMs?: number;
  /** Throttle the guest's vCPUs while pre-copy does not converge (QEMU auto-converge), up to this percent. */
  autoConvergeMaxPercent?: number;
}

export interface MigrateInOptions {
  /** Enable post-copy on the destination (it must match the source). */
  postcopy?: boolean;
  /** What the destination QEMU says on its return path (page faults, SHUT). */
  onReturnPath?: (message: ReturnPathMessage) => void;
  /** Post-copy: called once the stream is written, while QEMU may still be faulting pages in. */
  onWritten?: () => void;
}

export interface QemuDriver {
  /**
   * Removes what an earlier agent of this host left behind (guest-RAM files of QEMUs that
   * are gone); never a file a live QEMU, adopted or not, uses. Returns what was removed.
   */
  reclaim(): Promise<string[]>;
  /**
   * Re-attaches to every QEMU an earlier agent of this host recorded and left alive (QMP,
   * serial console), and removes the records (and files) of those that are gone. Call
   * before reclaim(). Absent on drivers whose VMs die with their agent.
   */
  adopt?(): Promise<{ adopted: AdoptedVm[]; gone: GoneVm[] }>;
  startVm(spec: VmSpec, role: VmRole, tag: string): Promise<RunningVm>;
  /** The version of the QEMU this driver starts ("10.0.2"), if it can tell (the host's inventory says it). */
  qemuVersion?(): Promise<string | undefined>;
  /** Starts migrating a source VM into a proxy this host owns. */
  migrateOut(vm: RunningVm, options?: MigrateOutOptions): Promise<OutgoingStream>;
  /** Feeds a rebuilt stream into a destination VM (started paused, -incoming defer); resolves when QEMU has loaded it. */
  migrateIn(vm: RunningVm, records: AsyncIterable<StreamRecord>, options?: MigrateInOptions): Promise<{ bytes: number }>;
}
