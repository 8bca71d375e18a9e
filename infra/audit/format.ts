/** Human-readable renderings of an audit report and of a host's migration list. */
import type { AuditReport, MigrationListing } from "./audit.ts";

const MB = 1e6;
const fmtBytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / MB).toFixed(1)} MB`);
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const time = (iso: string | undefined) => (iso ? iso.replace("T", " ").replace("Z", "") : "-");
const short = (d: string | undefined) => (d ? `${d.slice(0, 16)}…` : "-");

export function formatAuditReport(r: AuditReport): string {
  const t = r.timeline;
  const v = r.verification;
  const out: string[] = [];
  out.push(`migration ${r.migrationId}: ${t.outcome}${t.reason ? ` (${t.reason})` : ""}, ${t.sourceHost ?? "?"} → ${t.targetHost ?? "?"}${t.time_elapsed_ms !== undefined ? `, ${(t.time_elapsed_ms / 1000).toFixed(2)} s` : ""}`);
  if (t.requested) {
    out.push(`  requested ${time(t.requested.at)} by ${t.requested.requestedBy}${t.requested.reason ? `: ${t.requested.reason}` : ""}${t.requested.evacuationId ? ` (evacuation ${t.requested.evacuationId})` : ""}`);
  } else out.push("  request: not retained");
  if (t.cancelledBy) out.push(`  cancelled by ${t.cancelledBy}`);
  out.push("", "timeline:");
  for (const e of t.entries) out.push(`  ${time(e.at)}  ${e.event.padEnd(18)} ${(e.vm ?? "").padEnd(10)} ${e.detail ?? ""}`.trimEnd());
  out.push(`  (${t.progressEvents} progress updates)`, "", "per VM:");
  out.push(`  ${"vm".padEnd(10)} ${"outcome".padEnd(10)} ${"rounds".padStart(6)} ${"pages".padStart(9)} ${"zero".padStart(9)} ${"dedup".padStart(9)} ${"sent".padStart(9)} ${"native".padStart(10)} ${"link".padStart(10)} ${"downtime".padStart(9)}`);
  for (const x of t.vms) {
    out.push(
      `  ${x.vm.padEnd(10)} ${x.outcome.padEnd(10)} ${String(x.rounds).padStart(6)} ${x.pages.toLocaleString().padStart(9)} ${x.memory_constant.toLocaleString().padStart(9)} ${x.pages_deduplicated.toLocaleString().padStart(9)} ${x.pages_sent.toLocaleString().padStart(9)} ${fmtBytes(x.native_bytes).padStart(10)} ${fmtBytes(x.bytes_on_link).padStart(10)} ${(x.downtime_ms !== undefined ? `${x.downtime_ms} ms` : "-").padStart(9)}`,
    );
    if (x.reason) out.push(`  ${"".padEnd(10)} why: ${x.reason}`);
  }
  out.push(
    `  gang: ${fmtBytes(t.totals.bytes_on_link)} on the link for ${fmtBytes(t.totals.native_bytes)} of QEMU stream (${pct(t.totals.link_ratio)}); dedup left ${pct(t.totals.dedup_ratio)} of non-zero pages to send; packed to ${pct(t.totals.compression_ratio)}`,
  );
  out.push("", "verification:");
  for (const x of v.vms) {
    out.push(
      `  ${x.vm.padEnd(10)} ${x.entries.toLocaleString()} manifest entries (${x.pageEntries.toLocaleString()} by key, ${x.distinctKeys.toLocaleString()} distinct; ${x.fillEntries.toLocaleString()} fill) in ${x.batches} batches, ${x.pagesCovered}/${x.pagesTotal} pages; entries ${x.entriesVerified ? "verified" : "NOT verified"}`,
    );
    out.push(`  ${"".padEnd(10)} digest rebuilt ${short(x.rebuiltDigest)} source ${short(x.sourceDigest)} committed ${short(x.committedDigest)}: ${x.digestVerified === undefined ? "nothing recorded to compare" : x.digestVerified ? "equal" : "DIFFERENT"}`);
  }
  out.push(`  packs: ${v.packs.fetched} of ${v.packs.candidates} fetched (${fmtBytes(v.packs.bytes)}), ${v.packs.verified} verified, ${v.packs.pages.toLocaleString()} pages checked against their keys`);
  out.push("");
  if (r.verified) out.push(`VERIFIED: every manifest entry resolves to a page that hashes to its key, and every rebuilt digest equals the recorded one`);
  else {
    out.push(`NOT VERIFIED: ${r.failures.length} failure${r.failures.length === 1 ? "" : "s"}`);
    for (const f of r.failures) out.push(`  - ${f.message}`);
  }
  return out.join("\n");
}

export function formatMigrationList(host: string, list: MigrationListing[]): string {
  if (list.length === 0) return `no migration involved host ${host}`;
  const out = [`migrations that involved ${host}:`];
  for (const m of list) {
    out.push(
      `  ${m.migrationId}  ${time(m.requestedAt)}  ${m.role.padEnd(6)} ${(m.sourceHost ?? "?")} → ${m.targetHost ?? "?"}  ${m.outcome.padEnd(9)} ${m.vms.join(",")}  by ${m.requestedBy ?? "?"}${m.reason ? ` (${m.reason})` : ""}${m.failureReason ? ` — ${m.failureReason}` : ""}`,
    );
  }
  return out.join("\n");
}
