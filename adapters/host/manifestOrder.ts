/**
 * Which messages of a VM's manifest the destination takes, in what order. The source
 * publishes, one after the other (each publish awaited): the header, then batches and
 * commands numbered seq 0, 1, 2, … (one sequence for both), then `completed`, which counts
 * them. The follower delivers them in stream order without repeats (a reopened consumer
 * starts after the last stream sequence delivered), so the legit manifest always arrives
 * exactly in that order. Anything else — a second header, a message before the header, a
 * seq already consumed (a replay) or not the next one (a gap or a forgery from ahead), a
 * completed that counts other messages than were taken, another migration's or VM's
 * event, one from another source than the header's host, or records the header's blocks
 * cannot hold — is refused with a reason (for the dead-letter subject) and changes nothing:
 * the legit message with that place in the sequence is still taken when it comes.
 */
import type { z } from "zod";
import { MANIFEST_RECORD_BYTES, ManifestKind, manifestBatch, manifestCommand, manifestCompleted, manifestHeader } from "../../schemas/index.ts";
import type { DecodedEvent } from "../../infra/events/binding.ts";
import { PAGE_SIZE } from "../dataplane/contentKey.ts";

type Header = z.infer<typeof manifestHeader.data>;
type Command = z.infer<typeof manifestCommand.data>;
type Completed = z.infer<typeof manifestCompleted.data>;
type BatchExt = z.infer<typeof manifestBatch.extensions>;

/** The CloudEvents source of a host's agent (see agent.ts: the host's publisher). */
export const hostSource = (host: string) => `gangway/host/${host}`;

export class ManifestOrder {
  private header?: Header;
  /** The seq the next batch or command must carry. */
  nextSeq = 0;
  completed = false;

  constructor(
    private readonly migrationId: string,
    private readonly vm: string,
    /** The migration's source host, when known: a header from another host is foreign. */
    private readonly sourceHost?: string,
  ) {}

  /**
   * The four kinds the rebuild reads. Another well-formed event on the VM's manifest subjects
   * (binding checked it travels there) is for another reader, not refused here.
   */
  static reads(type: string): boolean {
    return type === manifestHeader.type || type === manifestBatch.type || type === manifestCommand.type || type === manifestCompleted.type;
  }

  /** Why `ev` is not the manifest's next message, or undefined (then it is taken: the sequence moves on). */
  admit(ev: DecodedEvent): string | undefined {
    const why = this.check(ev);
    if (why) return why;
    if (ev.type === manifestHeader.type) this.header = ev.data as Header;
    else if (ev.type === manifestCompleted.type) this.completed = true;
    else this.nextSeq++;
    return undefined;
  }

  private check(ev: DecodedEvent): string | undefined {
    const names = (ev.mode === "binary" ? ev.ext : ev.data) as { migrationId?: unknown; vm?: unknown } | undefined;
    if (names?.migrationId !== this.migrationId) return `${ev.type} of migration ${String(names?.migrationId)}, not ${this.migrationId}`;
    if (names.vm !== this.vm) return `${ev.type} of VM ${String(names.vm)}, not ${this.vm}`;
    if (this.completed) return `${ev.type} after the manifest completed`;
    if (ev.type === manifestHeader.type && ev.mode === "structured") {
      const h = ev.data as Header;
      if (this.header) return "a second manifest header (the VM's header came already)";
      if (this.sourceHost && h.sourceHost !== this.sourceHost) return `manifest header from host ${h.sourceHost}, the migration's source is ${this.sourceHost}`;
      if (ev.source !== hostSource(h.sourceHost)) return `manifest header sent by ${ev.source}, not by its source host ${h.sourceHost}`;
      if (h.commands.some((c) => c.cmd === "packaged")) return "PACKAGED before the RAM setup";
      return undefined;
    }
    if (!this.header) return `${ev.type} before the manifest header`;
    if (ev.source !== hostSource(this.header.sourceHost)) return `${ev.type} sent by ${ev.source}, not by the source host ${this.header.sourceHost}`;
    if (ev.type === manifestBatch.type && ev.mode === "binary") {
      const ext = ev.ext as BatchExt;
      return this.seqProblem(ext.seq) ?? this.recordsProblem(ev.data, ext.count);
    }
    if (ev.type === manifestCommand.type && ev.mode === "structured") {
      const c = ev.data as Command;
      const bad = this.seqProblem(c.seq);
      if (bad) return bad;
      const cmd = c.command;
      if (cmd.cmd === "postcopyRamDiscard" && !this.header.blocks.some((b) => b.id === cmd.block)) return `discard names RAM block ${cmd.block}, not in the header`;
      return undefined;
    }
    if (ev.type === manifestCompleted.type && ev.mode === "structured") {
      const c = ev.data as Completed;
      if (c.batches !== this.nextSeq) return `manifest completed counts ${c.batches} batches and commands, ${this.nextSeq} came`;
      return undefined;
    }
    return `${ev.type} is not a manifest message`;
  }

  private seqProblem(seq: number): string | undefined {
    if (seq < this.nextSeq) return `manifest seq ${seq} was taken already (a replay or a duplicate); next is ${this.nextSeq}`;
    if (seq > this.nextSeq) return `manifest seq ${seq} is out of order: next is ${this.nextSeq}`;
    return undefined;
  }

  /** Every record must fit the header's blocks (checked before any record reaches QEMU). */
  private recordsProblem(body: Uint8Array, count: number): string | undefined {
    const blocks = this.header!.blocks;
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    for (let i = 0; i < count; i++) {
      const at = i * MANIFEST_RECORD_BYTES;
      const block = blocks[body[at + 8]!];
      if (!block) return `record ${i} names RAM block ${body[at + 8]}, the header has ${blocks.length}`;
      const offset = Number(view.getBigUint64(at));
      if (offset % PAGE_SIZE !== 0 || offset + PAGE_SIZE > block.usedBytes) return `record ${i}: page at ${offset} is not a page of block ${block.id} (${block.usedBytes} bytes)`;
      const kind = body[at + 9];
      if (kind !== ManifestKind.zero && kind !== ManifestKind.page) return `record ${i} has kind ${kind}`;
    }
    return undefined;
  }
}
