/**
 * COMMAND records (tag 0x08: be16 command, be16 length, payload), typed both ways.
 * PACKAGED is special: its 4-byte payload is the length of a blob that follows it.
 */
import { CommandId, RecordTag } from "./constants.ts";
import { MalformedCommandError, UnknownCommandError } from "./errors.ts";
import type { DiscardRange, MigrationCommand, MigrationCommandName } from "./records.ts";

const idOf: Readonly<Record<MigrationCommandName, CommandId>> = {
  openReturnPath: CommandId.openReturnPath,
  ping: CommandId.ping,
  postcopyAdvise: CommandId.postcopyAdvise,
  postcopyListen: CommandId.postcopyListen,
  postcopyRun: CommandId.postcopyRun,
  postcopyRamDiscard: CommandId.postcopyRamDiscard,
  packaged: CommandId.packaged,
  enableColo: CommandId.enableColo,
  postcopyResume: CommandId.postcopyResume,
  recvBitmap: CommandId.recvBitmap,
  switchoverStart: CommandId.switchoverStart,
};

const nameOf = new Map<number, MigrationCommandName>(Object.entries(idOf).map(([k, v]) => [v, k as MigrationCommandName]));

/** The command's name for a number, or undefined when neither QEMU 7.2 nor 10.0 defines it. */
export function commandName(id: number): MigrationCommandName | undefined {
  return nameOf.get(id);
}

/** Payload lengths that are fixed (-1: variable). Used to validate and to recognise commands when scanning. */
export function commandLengthOk(id: number, len: number): boolean {
  switch (id) {
    case CommandId.openReturnPath:
    case CommandId.postcopyListen:
    case CommandId.postcopyRun:
    case CommandId.enableColo:
    case CommandId.postcopyResume:
    case CommandId.switchoverStart:
      return len === 0;
    case CommandId.ping:
    case CommandId.packaged:
      return len === 4;
    case CommandId.postcopyAdvise:
      return len === 0 || len === 16;
    case CommandId.postcopyRamDiscard:
      return len >= 3;
    case CommandId.recvBitmap:
      return len >= 2;
    default:
      return false;
  }
}

/**
 * Parses a command's payload (not PACKAGED's blob: for PACKAGED `data` is left empty
 * and the caller reads the blob whose length is returned).
 */
export function decodeCommand(id: number, payload: Buffer, offset: number): { command: MigrationCommand; blobLength: number } {
  const name = nameOf.get(id);
  if (name === undefined) throw new UnknownCommandError(id, offset);
  const bad = (detail: string) => new MalformedCommandError(name, detail, offset);
  if (!commandLengthOk(id, payload.length)) throw bad(`payload of ${payload.length} bytes`);
  switch (name) {
    case "ping":
      return { command: { cmd: name, value: payload.readUInt32BE(0) }, blobLength: 0 };
    case "postcopyAdvise":
      if (payload.length === 0) return { command: { cmd: name }, blobLength: 0 };
      return { command: { cmd: name, pageSizeSummary: readU64(payload, 0), targetPageSize: readU64(payload, 8) }, blobLength: 0 };
    case "packaged": {
      const length = payload.readUInt32BE(0);
      return { command: { cmd: name, data: Buffer.alloc(0) }, blobLength: length };
    }
    case "postcopyRamDiscard": {
      const version = payload[0];
      const nameLen = payload[1];
      if (2 + nameLen + 1 > payload.length) throw bad(`block name of ${nameLen} bytes overruns the payload`);
      const block = payload.toString("latin1", 2, 2 + nameLen);
      if (payload[2 + nameLen] !== 0) throw bad("missing NUL after the block name");
      const rest = payload.length - (3 + nameLen);
      if (rest % 16 !== 0) throw bad(`${rest} bytes of ranges is not a multiple of 16`);
      const ranges: DiscardRange[] = [];
      for (let p = 3 + nameLen; p < payload.length; p += 16) ranges.push({ start: readU64(payload, p), length: readU64(payload, p + 8) });
      return { command: { cmd: name, version, block, ranges }, blobLength: 0 };
    }
    case "recvBitmap": {
      const nameLen = payload[0];
      if (1 + nameLen !== payload.length) throw bad(`block name of ${nameLen} bytes in ${payload.length - 1}`);
      return { command: { cmd: name, block: payload.toString("latin1", 1, 1 + nameLen) }, blobLength: 0 };
    }
    default:
      return { command: { cmd: name } as MigrationCommand, blobLength: 0 };
  }
}

/** The complete bytes of a COMMAND record; for PACKAGED, the blob follows the 9 header bytes. */
export function encodeCommand(command: MigrationCommand): Buffer {
  let payload: Buffer;
  switch (command.cmd) {
    case "ping":
      payload = Buffer.allocUnsafe(4);
      payload.writeUInt32BE(command.value >>> 0, 0);
      break;
    case "postcopyAdvise":
      if (command.pageSizeSummary === undefined) {
        payload = Buffer.alloc(0);
      } else {
        payload = Buffer.allocUnsafe(16);
        writeU64(payload, 0, command.pageSizeSummary);
        writeU64(payload, 8, command.targetPageSize ?? 4096);
      }
      break;
    case "postcopyRamDiscard": {
      const name = Buffer.from(command.block, "latin1");
      payload = Buffer.allocUnsafe(3 + name.length + 16 * command.ranges.length);
      payload[0] = command.version;
      payload[1] = name.length;
      name.copy(payload, 2);
      payload[2 + name.length] = 0;
      let p = 3 + name.length;
      for (const r of command.ranges) {
        writeU64(payload, p, r.start);
        writeU64(payload, p + 8, r.length);
        p += 16;
      }
      break;
    }
    case "recvBitmap": {
      const name = Buffer.from(command.block, "latin1");
      payload = Buffer.concat([Buffer.from([name.length]), name]);
      break;
    }
    case "packaged":
      payload = Buffer.allocUnsafe(4);
      payload.writeUInt32BE(command.data.length, 0);
      break;
    default:
      payload = Buffer.alloc(0);
  }
  const out = Buffer.allocUnsafe(5 + payload.length + (command.cmd === "packaged" ? command.data.length : 0));
  out[0] = RecordTag.command;
  out.writeUInt16BE(idOf[command.cmd], 1);
  out.writeUInt16BE(payload.length, 3);
  payload.copy(out, 5);
  if (command.cmd === "packaged") command.data.copy(out, 5 + payload.length);
  return out;
}

export function readU64(b: Buffer, p: number): number {
  return b.readUInt32BE(p) * 4294967296 + b.readUInt32BE(p + 4);
}

export function writeU64(b: Buffer, p: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 4294967296) >>> 0, p);
  b.writeUInt32BE(v >>> 0, p + 4);
}
