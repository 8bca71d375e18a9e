/**
 * One error class per way talking to QEMU can fail (QMP, the serial console, starting a
 * VM). Each takes ErrorOptions so a cause survives, sets `name`, and has a predicate.
 */

/** QEMU answered a QMP command with an error (`{"error": {"class", "desc"}}`). */
export class QmpCommandError extends Error {
  /** The command that failed. */
  readonly command: string;
  /** QMP error class, e.g. "GenericError", "CommandNotFound", "DeviceNotFound". */
  readonly errorClass: string;
  /** QEMU's own description. */
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string, options?: ErrorOptions) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`, options);
    this.name = "QmpCommandError";
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** No reply (or no awaited event, or no socket to connect to) within the time allowed. */
export class QmpTimeoutError extends Error {
  /** What was awaited: a command name or an event description. */
  readonly what: string;
  readonly timeoutMs: number;
  constructor(what: string, timeoutMs: number, options?: ErrorOptions) {
    super(`QMP: no ${what} within ${timeoutMs} ms`, options);
    this.name = "QmpTimeoutError";
    this.what = what;
    this.timeoutMs = timeoutMs;
  }
}

/** The QMP connection closed (QEMU exited, or close() was called) before the answer came. */
export class QmpDisconnectedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QmpDisconnectedError";
  }
}

/** The QMP socket could not be connected, or did not greet as QMP does. */
export class QmpConnectError extends Error {
  readonly path: string;
  constructor(path: string, detail: string, options?: ErrorOptions) {
    super(`QMP: cannot connect to ${path}: ${detail}`, options);
    this.name = "QmpConnectError";
    this.path = path;
  }
}

/** A serial-console wait ran out of time; carries the last lines seen, to show what came instead. */
export class SerialTimeoutError extends Error {
  readonly pattern: string;
  readonly timeoutMs: number;
  readonly recent: readonly string[];
  constructor(pattern: string, timeoutMs: number, recent: readonly string[], options?: ErrorOptions) {
    super(
      `serial: no line matching ${pattern} within ${timeoutMs} ms` +
        (recent.length ? `; last lines:\n  ${recent.join("\n  ")}` : "; nothing was printed"),
      options,
    );
    this.name = "SerialTimeoutError";
    this.pattern = pattern;
    this.timeoutMs = timeoutMs;
    this.recent = recent;
  }
}

/** The serial console closed (the VM exited) while a line was awaited or text was sent. */
export class SerialClosedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SerialClosedError";
  }
}

/** QEMU did not come up: it exited, could not be run, or did not open its sockets in time. */
export class VmStartError extends Error {
  readonly vm: string;
  /** The last part of QEMU's stderr (its own reason, when it gave one). */
  readonly stderrTail: string;
  constructor(vm: string, detail: string, stderrTail: string, options?: ErrorOptions) {
    super(`VM ${vm}: ${detail}` + (stderrTail.trim() ? `\nQEMU said:\n${stderrTail.trimEnd()}` : ""), options);
    this.name = "VmStartError";
    this.vm = vm;
    this.stderrTail = stderrTail;
  }
}

/** A live QEMU already uses this VM's run directory. */
export class VmAlreadyRunningError extends Error {
  readonly vm: string;
  readonly pid: number;
  readonly runDir: string;
  constructor(vm: string, pid: number, runDir: string, options?: ErrorOptions) {
    super(`VM ${vm} is already running (pid ${pid}, run directory ${runDir})`, options);
    this.name = "VmAlreadyRunningError";
    this.vm = vm;
    this.pid = pid;
    this.runDir = runDir;
  }
}

/** A VM configuration that cannot make a QEMU command line. */
export class VmConfigError extends Error {
  readonly vm: string;
  constructor(vm: string, detail: string, options?: ErrorOptions) {
    super(`VM ${vm}: ${detail}`, options);
    this.name = "VmConfigError";
    this.vm = vm;
  }
}

export const isQmpCommandError = (e: unknown): e is QmpCommandError => e instanceof QmpCommandError;
export const isQmpTimeout = (e: unknown): e is QmpTimeoutError => e instanceof QmpTimeoutError;
export const isQmpDisconnected = (e: unknown): e is QmpDisconnectedError => e instanceof QmpDisconnectedError;
export const isQmpConnectError = (e: unknown): e is QmpConnectError => e instanceof QmpConnectError;
export const isSerialTimeout = (e: unknown): e is SerialTimeoutError => e instanceof SerialTimeoutError;
export const isSerialClosed = (e: unknown): e is SerialClosedError => e instanceof SerialClosedError;
export const isVmStartError = (e: unknown): e is VmStartError => e instanceof VmStartError;
export const isVmAlreadyRunning = (e: unknown): e is VmAlreadyRunningError => e instanceof VmAlreadyRunningError;
export const isVmConfigError = (e: unknown): e is VmConfigError => e instanceof VmConfigError;
