/**
 * A summary of a stream, like QEMU's scripts/analyze-migration.py: machine, RAM blocks,
 * pages by kind per round, device sections, commands, VMDESC.
 */
import { PageKind } from "./constants.ts";
import type { RamBlockInfo, StreamRecord } from "./records.ts";
import { parsePackaged } from "./stream.ts";

export interface RoundSummary {
  round: number;
  /** ZERO records (a fill byte instead of content). */
  zeroPages: number;
  /** PAGE records (4096 bytes of content). */
  normalPages: number;
}

export interface DeviceSummary {
  idstr: string;
  instanceId: number;
  versionId: number;
  sectionId: number;
  section: string;
  /** Bytes of the section on the wire, header and footer included. */
  bytes: number;
  offset: number;
  /** Inside a PACKAGED blob (post-copy). */
  packaged: boolean;
}

export interface StreamSummary {
  /** Bytes of the stream. */
  bytes: number;
  version: number;
  machine: string | null;
  ram: { sectionId: number; totalBytes: number; blocks: RamBlockInfo[] } | null;
  /** ram sections by type. */
  ramSections: { start: number; part: number; end: number };
  rounds: RoundSummary[];
  pages: { zero: number; normal: number; total: number };
  devices: DeviceSummary[];
  deviceBytes: number;
  /** Commands by name, with how often they occur. */
  commands: Record<string, number>;
  eof: boolean;
  vmdesc: { present: boolean; bytes: number };
}

/** Accumulates a summary from records; read `summary` when done. */
export class StreamSummarizer {
  readonly summary: StreamSummary = {
    bytes: 0,
    version: 0,
    machine: null,
    ram: null,
    ramSections: { start: 0, part: 0, end: 0 },
    rounds: [],
    pages: { zero: 0, normal: 0, total: 0 },
    devices: [],
    deviceBytes: 0,
    commands: {},
    eof: false,
    vmdesc: { present: false, bytes: 0 },
  };
  private ramSectionId = 0;

  add(r: StreamRecord, packaged = false): void {
    const s = this.summary;
    switch (r.type) {
      case "header":
        s.version = r.version;
        break;
      case "config":
        s.machine = r.config.machine;
        break;
      case "ramSection":
        if (r.section === "full") s.ramSections.start++;
        else s.ramSections[r.section]++;
        this.ramSectionId = r.sectionId;
        break;
      case "ramSetup":
        s.ram = { sectionId: this.ramSectionId, totalBytes: r.totalBytes, blocks: r.blocks };
        break;
      case "round":
        s.rounds.push({ round: r.round, zeroPages: 0, normalPages: 0 });
        break;
      case "pages": {
        let normal = 0;
        for (let i = 0; i < r.count; i++) if (r.kinds[i] === PageKind.normal) normal++;
        if (s.rounds.length === 0) s.rounds.push({ round: r.round, zeroPages: 0, normalPages: 0 });
        const round = s.rounds[s.rounds.length - 1];
        round.normalPages += normal;
        round.zeroPages += r.count - normal;
        s.pages.normal += normal;
        s.pages.zero += r.count - normal;
        s.pages.total += r.count;
        break;
      }
      case "device":
        s.devices.push({
          idstr: r.idstr,
          instanceId: r.instanceId,
          versionId: r.versionId,
          sectionId: r.sectionId,
          section: r.section,
          bytes: r.raw.length,
          offset: r.offset,
          packaged,
        });
        s.deviceBytes += r.raw.length;
        break;
      case "command":
        s.commands[r.command.cmd] = (s.commands[r.command.cmd] ?? 0) + 1;
        if (r.command.cmd === "packaged") {
          for (const n of parsePackaged(r.command.data, { ramSectionId: this.ramSectionId, blocks: s.ram?.blocks })) {
            // Offsets inside the blob count from its start; make them stream offsets.
            this.add({ ...n, offset: r.offset + 9 + n.offset } as StreamRecord, true);
          }
        }
        break;
      case "eof":
        if (!packaged) s.eof = true;
        break;
      case "vmdesc":
        s.vmdesc = { present: true, bytes: r.json.length };
        break;
      case "ramSectionEnd":
        break;
    }
  }
}

/** Human-readable table of a summary. */
export function formatSummary(s: StreamSummary, name = "stream"): string {
  const lines: string[] = [];
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  lines.push(`${name}: QEMU migration stream version ${s.version}, ${s.bytes} bytes (${mib(s.bytes)})`);
  lines.push(`machine: ${s.machine ?? "(no configuration record)"}`);
  if (s.ram) {
    lines.push(`ram: section ${s.ram.sectionId}, ${s.ram.totalBytes} bytes in ${s.ram.blocks.length} blocks; sections START ${s.ramSections.start}, PART ${s.ramSections.part}, END ${s.ramSections.end}`);
    const w = Math.max(5, ...s.ram.blocks.map((b) => b.id.length));
    lines.push(`  ${"block".padEnd(w)}  ${"bytes".padStart(12)}  ${"pages".padStart(8)}`);
    for (const b of s.ram.blocks) lines.push(`  ${b.id.padEnd(w)}  ${String(b.usedLength).padStart(12)}  ${String(b.usedLength / 4096).padStart(8)}`);
  }
  lines.push(`pages: ${s.pages.total} (${s.pages.zero} zero, ${s.pages.normal} normal) in ${s.rounds.length} round(s)`);
  lines.push(`  ${"round".padStart(5)}  ${"zero".padStart(9)}  ${"normal".padStart(9)}`);
  for (const r of s.rounds) lines.push(`  ${String(r.round).padStart(5)}  ${String(r.zeroPages).padStart(9)}  ${String(r.normalPages).padStart(9)}`);
  lines.push(`device sections: ${s.devices.length}, ${s.deviceBytes} bytes`);
  if (s.devices.length) {
    const w = Math.max(5, ...s.devices.map((d) => d.idstr.length));
    lines.push(`  ${"idstr".padEnd(w)}  ${"inst".padStart(4)}  ${"ver".padStart(3)}  ${"id".padStart(4)}  ${"type".padEnd(5)}  ${"bytes".padStart(7)}`);
    for (const d of s.devices) {
      lines.push(
        `  ${d.idstr.padEnd(w)}  ${String(d.instanceId).padStart(4)}  ${String(d.versionId).padStart(3)}  ${String(d.sectionId).padStart(4)}  ${d.section.padEnd(5)}  ${String(d.bytes).padStart(7)}${d.packaged ? "  (packaged)" : ""}`,
      );
    }
  }
  const cmds = Object.entries(s.commands);
  lines.push(`commands: ${cmds.length ? cmds.map(([k, v]) => `${k}×${v}`).join(", ") : "none"}`);
  lines.push(`eof: ${s.eof ? "yes" : "no"}; vmdesc: ${s.vmdesc.present ? `yes, ${s.vmdesc.bytes} bytes` : "no"}`);
  return lines.join("\n");
}
