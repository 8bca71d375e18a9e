/**
 * Faults a test can inject into an agent's data path, to show that the proof catches what it
 * claims to (GANGWAY_TEST_FAULTS="<fault>:<vm>,…"; never set in production):
 *   alter-sent-page:VM     the source alters one page after parsing QEMU's stream
 *   drop-record:VM         the source drops one page record after parsing
 *   alter-loaded-page:VM   the destination's RAM has one page changed after QEMU loaded it
 *   swap-device-state:VM   the destination loads another VM's device state (named VM=OTHER)
 *   skip-repair:VM         the source proves its RAM but sends no repair pass
 */
import type { PageBatch, StreamRecord } from "../qemu/stream/records.ts";
import { PAGE_SIZE, uniformByte } from "../dataplane/contentKey.ts";

function faults(): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of (process.env.GANGWAY_TEST_FAULTS ?? "").split(",").filter(Boolean)) {
    const [name, arg] = f.split(":");
    if (name && arg) out.set(name, arg);
  }
  return out;
}

/** The argument of `fault` if it is set for `vm` ("VM" or "VM=ARG"), else undefined. */
export function testFault(fault: string, vm: string): string | undefined {
  const arg = faults().get(fault);
  if (!arg) return undefined;
  const [target, value] = arg.split("=");
  return target === vm ? (value ?? target) : undefined;
}

/** Index (among normal pages) and record index of the first non-uniform normal page of a batch. */
function firstContentPage(b: PageBatch): { record: number; normal: number } | undefined {
  let normal = 0;
  for (let i = 0; i < b.count; i++) {
    if (b.kinds[i] !== 1) continue;
    if (uniformByte(b.data.subarray(normal * PAGE_SIZE, (normal + 1) * PAGE_SIZE)) === undefined) return { record: i, normal };
    normal++;
  }
  return undefined;
}

/** The source's records, with the test faults of `vm` applied if any are set. */
export function sourceRecordsFor(records: AsyncIterable<StreamRecord>, vm: string): AsyncIterable<StreamRecord> {
  return testFault("alter-sent-page", vm) !== undefined || testFault("drop-record", vm) !== undefined ? withSourceFaults(records, vm) : records;
}

/** The source's records with the test faults of `vm` applied (once each, in the last page batch of the first pass that has content). */
async function* withSourceFaults(records: AsyncIterable<StreamRecord>, vm: string): AsyncGenerator<StreamRecord> {
  let alter = testFault("alter-sent-page", vm) !== undefined;
  let drop = testFault("drop-record", vm) !== undefined;
  for await (const r of records) {
    if (r.type === "pages" && (alter || drop)) {
      const at = firstContentPage(r);
      if (at && alter) {
        alter = false;
        r.data[at.normal * PAGE_SIZE + 17] ^= 0x5a;
      } else if (at && drop) {
        drop = false;
        yield withoutRecord(r, at.record, at.normal);
        continue;
      }
    }
    yield r;
  }
}

function withoutRecord(b: PageBatch, record: number, normal: number): PageBatch {
  const keep = (a: Float64Array | Uint8Array) => {
    const out = new (a.constructor as Float64ArrayConstructor | Uint8ArrayConstructor)(b.count - 1);
    out.set(a.subarray(0, record), 0);
    out.set(a.subarray(record + 1), record);
    return out;
  };
  return {
    ...b, count: b.count - 1, offsets: keep(b.offsets) as Float64Array, kinds: keep(b.kinds) as Uint8Array, fills: keep(b.fills) as Uint8Array,
    named: keep(b.named) as Uint8Array, positions: keep(b.positions) as Float64Array,
    data: Buffer.concat([b.data.subarray(0, normal * PAGE_SIZE), b.data.subarray((normal + 1) * PAGE_SIZE)]),
  };
}
