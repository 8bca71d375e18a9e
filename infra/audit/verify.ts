/**
 * Re-verification of a migration from what is retained: every manifest entry of every VM
 * must resolve to a page pack (announced on gw.pack.*.stored, of the VM's tenant, from this
 * migration, a preparation pass or an earlier migration) whose page content hashes to the
 * entry's key; each VM's memory digest, rebuilt from its manifest (the last content of each
 * page over all rounds), must equal the digests recorded by the source and at commit.
 *
 * Each pack is fetched once and checked whole: its content address, its structure, the keys
 * it holds against the keys announced for it, and every page against its key with the
 * tenant's keyer (the auditor needs the cluster secret, GANGWAY_KEY_SECRET). An entry whose
 * only packs fail is charged to those packs, so one corrupt pack is reported as one failure.
 */
import type { z } from "zod";
import { ManifestKind, type manifestBatch, type manifestVerified, type manifestCommand, type manifestCompleted, type manifestHeader, type packStored } from "../../schemas/index.ts";
import { createPageKeyer, KEY_BYTES, keyHex, PAGE_SIZE, type PageKeyer } from "../../adapters/dataplane/contentKey.ts";
import { ImageDigest } from "../../adapters/dataplane/imageDigest.ts";
import { readManifestRecords } from "../../adapters/dataplane/manifestRecords.ts";
import { decodePack, packNameOf } from "../../adapters/dataplane/pagePack.ts";
import { dataOf, type Fact } from "./events.ts";
import type { VmTimeline } from "./timeline.ts";

type Data<D extends { data: z.ZodType }> = z.infer<D["data"]>;
type BatchExt = z.infer<(typeof manifestBatch)["extensions"]>;
type VerifiedExt = z.infer<(typeof manifestVerified)["extensions"]>;
type PackAnnouncement = Data<typeof packStored>;

/** What the verifier needs of the pack store: the stored bytes as they are, unchecked. */
export interface PackReader {
  getObject(name: string): Promise<Uint8Array | null>;
}

export interface VerifyOptions {
  packs: PackReader;
  /** The keyer of a tenant. @default createPageKeyer(tenant) (GANGWAY_KEY_SECRET or the development secret) */
  keyerFor?: (tenant: string) => PageKeyer;
  /** Packs fetched at once. @default 4 */
  concurrency?: number;
  /** Keys listed per failure (the count is always complete). @default 20 */
  maxKeysListed?: number;
}

export const FailureKind = { pack: "pack", unresolvedKeys: "unresolved-keys", digest: "digest", manifest: "manifest", event: "event" } as const;
export type FailureKind = (typeof FailureKind)[keyof typeof FailureKind];

export type AuditFailure =
  | {
      kind: "pack";
      pack: string;
      tenant: string;
      /** Announced by (migration id or prep-<host>). */
      announcedBy: string[];
      problems: string[];
      /** Keys of pages that do not hash to their key (or every key, when the pack does not decode). */
      badKeys: string[];
      badKeyCount: number;
      /** VMs of this migration with an entry that no good pack resolves because of this one. */
      vms: string[];
      entries: number;
      message: string;
    }
  | { kind: "unresolved-keys"; vm: string; tenant: string; keys: string[]; keyCount: number; entries: number; message: string }
  | { kind: "digest"; vm: string; against: DigestAgainst; recorded: string; rebuilt: string; message: string }
  | { kind: "manifest"; vm: string; problem: string; message: string }
  | { kind: "event"; seq: number; subject: string; reason: string; message: string };

/** What a rebuilt digest is compared with: the source's stream, what it sent after its repair pass, its RAM, the commit's, the destination's. */
type DigestAgainst = "source" | "sent" | "source-ram" | "committed" | "destination";
const DIGEST_NAMES: Record<DigestAgainst, string> = {
  source: "source", sent: "source's account of what it sent (stream and repairs)", "source-ram": "source's RAM proof", committed: "commit", destination: "destination's commit-ready proof",
};

export interface VmVerification {
  vm: string;
  tenant?: string;
  /** Manifest entries over all rounds: keyed pages and fill (zero/uniform) pages. */
  entries: number;
  pageEntries: number;
  fillEntries: number;
  distinctKeys: number;
  batches: number;
  rounds: number;
  /** Pages the rebuilt image covers, of all pages of its RAM blocks. */
  pagesCovered: number;
  pagesTotal: number;
  rebuiltDigest?: string;
  sourceDigest?: string;
  committedDigest?: string;
  destinationDigest?: string;
  /** Pages the source's repair pass sent from its RAM after its stream. */
  pagesRepaired?: number;
  /** The rebuilt image with the repair pass applied: what the destination must hold. */
  deliveredDigest?: string;
  /** Rebuilt digest equals every digest recorded (undefined when nothing was recorded to compare). */
  digestVerified?: boolean;
  /** Every keyed entry resolved to a verified page. */
  entriesVerified: boolean;
}

export interface Verification {
  verified: boolean;
  vms: VmVerification[];
  packs: { candidates: number; fetched: number; verified: number; pages: number; bytes: number };
  failures: AuditFailure[];
}

export interface VerifyInput {
  migrationId: string;
  /** gw.manifest.<id>.> facts (headers, batches, completions). */
  manifest: Fact[];
  /** gw.pack.*.stored facts (every migration's and preparation pass's). */
  packsStored: Fact[];
  /** The timeline's VMs: tenants from the plan, outcomes and recorded digests. */
  vms: VmTimeline[];
}

interface VmManifest {
  vm: string;
  header?: Data<typeof manifestHeader>;
  batches: Map<number, { ext: BatchExt; body: Uint8Array }>;
  /** Sequence numbers taken by QEMU's commands passed on in the manifest (post-copy). */
  commands: Set<number>;
  completed?: Data<typeof manifestCompleted>;
  /** The source's proof against its RAM, with its repair records. */
  verified?: { ext: VerifiedExt; body: Uint8Array };
}

interface PackInfo {
  name: string;
  tenant: string;
  keys: Set<string>;
  announcedBy: Set<string>;
}

export async function verifyMigration(input: VerifyInput, opts: VerifyOptions): Promise<Verification> {
  const keyers = new Map<string, PageKeyer>();
  const keyerFor = (tenant: string) => keyers.get(tenant) ?? keyers.set(tenant, (opts.keyerFor ?? createPageKeyer)(tenant)).get(tenant)!;
  const maxListed = opts.maxKeysListed ?? 20;
  const failures: AuditFailure[] = [];
  const timelineVm = new Map(input.vms.map((v) => [v.vm, v]));

  // --- the manifests, per VM ---
  const manifests = new Map<string, VmManifest>();
  const manifestOf = (vm: string) => manifests.get(vm) ?? manifests.set(vm, { vm, batches: new Map(), commands: new Set() }).get(vm)!;
  for (const f of [...input.manifest].sort((a, b) => a.seq - b.seq)) {
    const e = f.event;
    if (e.mode === "binary" && e.type === "io.gangway.manifest.batch.v1") {
      const ext = e.ext as BatchExt;
      const m = manifestOf(ext.vm);
      if (!m.batches.has(ext.seq)) m.batches.set(ext.seq, { ext, body: e.data }); // a re-delivered batch is the same batch
    } else if (e.mode === "binary" && e.type === "io.gangway.manifest.verified.v1") {
      const ext = e.ext as VerifiedExt;
      manifestOf(ext.vm).verified ??= { ext, body: e.data };
    } else if (e.type === "io.gangway.manifest.command.v1") {
      const d = dataOf<Data<typeof manifestCommand>>(f);
      manifestOf(d.vm).commands.add(d.seq);
    } else if (e.type === "io.gangway.manifest.header.v1") {
      const d = dataOf<Data<typeof manifestHeader>>(f);
      manifestOf(d.vm).header = d;
    } else if (e.type === "io.gangway.manifest.completed.v1") {
      const d = dataOf<Data<typeof manifestCompleted>>(f);
      manifestOf(d.vm).completed = d;
    }
  }
  for (const v of input.vms) if (v.outcome === "committed" && !manifests.has(v.vm)) manifestOf(v.vm);

  // --- where each key of each tenant may live ---
  const packInfo = new Map<string, PackInfo>();
  const packsOfKey = new Map<string, string[]>(); // tenant/key → pack names
  for (const f of input.packsStored) {
    const d = dataOf<PackAnnouncement>(f);
    let p = packInfo.get(d.pack);
    if (!p) packInfo.set(d.pack, (p = { name: d.pack, tenant: d.tenant, keys: new Set(), announcedBy: new Set() }));
    p.announcedBy.add(d.migrationId);
    for (const k of d.keys) {
      if (p.keys.has(k)) continue;
      p.keys.add(k);
      const id = `${d.tenant}/${k}`;
      const list = packsOfKey.get(id);
      if (list) list.push(d.pack);
      else packsOfKey.set(id, [d.pack]);
    }
  }

  // --- walk each manifest: rebuild the image, collect the keys it needs ---
  const needed = new Map<string, { tenant: string; key: string; vms: Map<string, number> }>(); // tenant/key → entries per VM
  const vmResults: VmVerification[] = [];
  for (const m of [...manifests.values()].sort((a, b) => a.vm.localeCompare(b.vm))) {
    const tl = timelineVm.get(m.vm);
    const tenant = m.header?.tenant ?? tl?.tenant;
    const r: VmVerification = {
      vm: m.vm, ...(tenant ? { tenant } : {}), entries: 0, pageEntries: 0, fillEntries: 0, distinctKeys: 0, batches: m.batches.size, rounds: 0,
      pagesCovered: 0, pagesTotal: 0, entriesVerified: true,
      ...(m.completed ? { sourceDigest: m.completed.digest } : {}),
      ...(tl?.digests.committed ? { committedDigest: tl.digests.committed } : {}),
      ...(tl?.digests.destination ? { destinationDigest: tl.digests.destination } : {}),
    };
    vmResults.push(r);
    const manifestFailure = (problem: string) => failures.push({ kind: "manifest", vm: m.vm, problem, message: `VM ${m.vm}: ${problem}` });
    if (!m.header) {
      if (m.batches.size || m.completed || tl?.outcome === "committed") manifestFailure("no manifest header was recorded");
      r.entriesVerified = m.batches.size === 0;
      continue;
    }
    if (tl?.tenant && tl.tenant !== m.header.tenant) manifestFailure(`manifest tenant ${m.header.tenant} differs from the planned tenant ${tl.tenant}`);
    if (tl?.outcome === "committed" && !m.completed) manifestFailure("committed, but the source's manifest completion was never recorded");
    // Batches and commands share one sequence: a gap is a message lost.
    const seqs = [...m.batches.keys(), ...m.commands].sort((a, b) => a - b);
    const missing = seqs.length ? seqs[seqs.length - 1]! + 1 - seqs.length : 0;
    if (missing > 0) manifestFailure(`${missing} manifest batches are missing (batch seq ${seqs[0]}…${seqs[seqs.length - 1]})`);
    if (m.completed) {
      if (m.completed.batches !== seqs.length) manifestFailure(`the source recorded ${m.completed.batches} manifest messages, ${seqs.length} are retained`);
    }
    const image = new ImageDigest(m.header.blocks.map((b) => b.usedBytes));
    const distinct = new Set<string>();
    let lastRound = 0;
    for (const seq of seqs) {
      const batch = m.batches.get(seq);
      if (!batch) continue; // a command: its pages are in the batches around it
      const { ext, body } = batch;
      if (ext.round < lastRound) manifestFailure(`manifest batch ${seq} is of round ${ext.round}, after round ${lastRound}`);
      lastRound = Math.max(lastRound, ext.round);
      for (const rec of readManifestRecords(body, ext.count)) {
        r.entries++;
        try {
          if (rec.kind === ManifestKind.zero) {
            r.fillEntries++;
            image.fill(rec.block, rec.offset, rec.fill);
          } else {
            r.pageEntries++;
            image.keyed(rec.block, rec.offset, body, rec.keyAt);
            const key = keyHex(body, rec.keyAt);
            distinct.add(key);
            if (tenant) {
              const id = `${tenant}/${key}`;
              const n = needed.get(id) ?? needed.set(id, { tenant, key, vms: new Map() }).get(id)!;
              n.vms.set(m.vm, (n.vms.get(m.vm) ?? 0) + 1);
            }
          }
        } catch (err) {
          manifestFailure(`manifest batch ${seq} has an entry outside the RAM blocks: ${(err as Error).message}`);
          break;
        }
      }
    }
    r.rounds = lastRound;
    r.distinctKeys = distinct.size;
    r.pagesCovered = image.pages();
    r.pagesTotal = image.totalPages();
    if (m.completed && m.completed.records !== r.entries) manifestFailure(`the source recorded ${m.completed.records} manifest entries, ${r.entries} are retained`);
    if (m.completed && r.pagesCovered !== r.pagesTotal) manifestFailure(`the manifest covers ${r.pagesCovered} of ${r.pagesTotal} pages`);
    r.rebuiltDigest = image.digest();
    // The stream's image is what the source recorded; the repair pass (pages its RAM held
    // otherwise) comes on top of it, and that is what the source's RAM, the commit and the
    // destination must show.
    const compare: [DigestAgainst, string | undefined, string][] = [["source", r.sourceDigest, r.rebuiltDigest]];
    let delivered = r.rebuiltDigest;
    if (m.verified) {
      const { ext, body } = m.verified;
      r.pagesRepaired = ext.count;
      for (const rec of readManifestRecords(body, ext.count)) {
        image.keyed(rec.block, rec.offset, body, rec.keyAt);
        if (tenant) {
          const id = `${tenant}/${keyHex(body, rec.keyAt)}`;
          const n = needed.get(id) ?? needed.set(id, { tenant, key: keyHex(body, rec.keyAt), vms: new Map() }).get(id)!;
          n.vms.set(m.vm, (n.vms.get(m.vm) ?? 0) + 1);
        }
      }
      delivered = image.digest();
      compare.push(["sent", ext.sentdigest, delivered], ["source-ram", ext.sourceramdigest, delivered]);
    } else if (tl?.outcome === "committed" && tl.proof) manifestFailure("committed with a proof, but the source's proof against its RAM was never recorded");
    // The destination's digest counts where the VM was committed on it; a rolled-back VM's
    // differing digest is the rollback's recorded reason, not an audit failure.
    r.deliveredDigest = delivered;
    compare.push(["committed", r.committedDigest, delivered], ["destination", tl?.outcome === "committed" ? r.destinationDigest : undefined, delivered]);
    if (tl?.outcome === "committed" && tl.proof) {
      compare.push(["source-ram", tl.proof.source_ram_digest, delivered], ["sent", tl.proof.sent_digest, delivered], ["destination", tl.proof.destination_digest, delivered]);
    }
    for (const [against, recorded, rebuilt] of compare) {
      if (recorded === undefined) continue;
      const ok = recorded === rebuilt;
      r.digestVerified = (r.digestVerified ?? true) && ok;
      if (!ok) {
        failures.push({
          kind: "digest", vm: m.vm, against, recorded, rebuilt,
          message: `VM ${m.vm}: the image rebuilt from its manifest${against === "source" ? "" : " and repair pass"} has digest ${rebuilt.slice(0, 16)}…, the ${DIGEST_NAMES[against]} recorded ${recorded.slice(0, 16)}…`,
        });
      }
    }
  }

  // --- fetch each pack that holds a needed key, once, and check it whole ---
  const candidates = new Set<string>();
  for (const id of needed.keys()) for (const p of packsOfKey.get(id) ?? []) candidates.add(p);
  const good = new Set<string>(); // tenant/key verified in some pack
  const failedPacks = new Map<string, { problems: string[]; badKeys: string[] }>();
  const stats = { candidates: candidates.size, fetched: 0, verified: 0, pages: 0, bytes: 0 };
  const queue = [...candidates].sort();
  const worker = async () => {
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
      const info = packInfo.get(name)!;
      const result = await checkPack(info, opts.packs, keyerFor(info.tenant));
      stats.fetched += result.fetched ? 1 : 0;
      stats.bytes += result.bytes;
      stats.pages += result.goodKeys.length;
      for (const k of result.goodKeys) good.add(`${info.tenant}/${k}`);
      if (result.problems.length) failedPacks.set(name, { problems: result.problems, badKeys: result.badKeys });
      else stats.verified++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));

  // --- charge every entry that no good pack resolves: to its failing packs, or as unresolved ---
  const chargedToPack = new Map<string, { vms: Set<string>; entries: number }>();
  const unresolved = new Map<string, { tenant: string; keys: string[]; keyCount: number; entries: number }>();
  for (const [id, n] of needed) {
    if (good.has(id)) continue;
    const packs = packsOfKey.get(id) ?? [];
    const entries = [...n.vms.values()].reduce((a, b) => a + b, 0);
    for (const vm of n.vms.keys()) vmResults.find((v) => v.vm === vm)!.entriesVerified = false;
    const failing = packs.filter((p) => failedPacks.has(p));
    if (failing.length) {
      for (const p of failing) {
        const c = chargedToPack.get(p) ?? chargedToPack.set(p, { vms: new Set(), entries: 0 }).get(p)!;
        for (const vm of n.vms.keys()) c.vms.add(vm);
        c.entries += entries;
      }
      continue;
    }
    for (const [vm, count] of n.vms) {
      const u = unresolved.get(vm) ?? unresolved.set(vm, { tenant: n.tenant, keys: [], keyCount: 0, entries: 0 }).get(vm)!;
      u.keyCount++;
      u.entries += count;
      if (u.keys.length < maxListed) u.keys.push(n.key);
    }
  }
  for (const [name, f] of [...failedPacks].sort(([a], [b]) => a.localeCompare(b))) {
    const info = packInfo.get(name)!;
    const c = chargedToPack.get(name);
    failures.push({
      kind: "pack", pack: name, tenant: info.tenant, announcedBy: [...info.announcedBy].sort(), problems: f.problems,
      badKeys: f.badKeys.slice(0, maxListed), badKeyCount: f.badKeys.length, vms: c ? [...c.vms].sort() : [], entries: c?.entries ?? 0,
      message: `pack ${name} (tenant ${info.tenant}, from ${[...info.announcedBy].join(", ")}) does not verify: ${f.problems.join("; ")}${c ? ` — ${c.entries} manifest entries of ${[...c.vms].sort().join(", ")} have no other good pack` : ""}`,
    });
  }
  for (const [vm, u] of [...unresolved].sort(([a], [b]) => a.localeCompare(b))) {
    failures.push({
      kind: "unresolved-keys", vm, tenant: u.tenant, keys: u.keys, keyCount: u.keyCount, entries: u.entries,
      message: `VM ${vm}: ${u.keyCount} keys (${u.entries} manifest entries) resolve to no pack of tenant ${u.tenant}, e.g. ${u.keys.slice(0, 3).join(", ")}`,
    });
  }
  return { verified: failures.length === 0, vms: vmResults, packs: stats, failures };
}

interface PackCheck {
  fetched: boolean;
  bytes: number;
  goodKeys: string[];
  badKeys: string[];
  problems: string[];
}

/** Fetches one pack as stored and checks it whole against what was announced for it. */
export async function checkPack(info: { name: string; keys: ReadonlySet<string> }, packs: PackReader, keyer: PageKeyer): Promise<PackCheck> {
  const bytes = await packs.getObject(info.name);
  if (!bytes) return { fetched: false, bytes: 0, goodKeys: [], badKeys: [...info.keys], problems: ["missing from the pack store"] };
  const problems: string[] = [];
  const actual = packNameOf(bytes);
  if (actual !== info.name) problems.push(`its content hashes to ${actual}, not to its name`);
  let pack;
  try {
    pack = decodePack(bytes);
  } catch (err) {
    problems.push(`does not decode: ${(err as Error).message}`);
    return { fetched: true, bytes: bytes.byteLength, goodKeys: [], badKeys: [...info.keys], problems };
  }
  const goodKeys: string[] = [];
  const badKeys: string[] = [];
  const held = new Set<string>();
  const key = new Uint8Array(KEY_BYTES);
  for (let i = 0; i < pack.count; i++) {
    const k = keyHex(pack.keys, i * KEY_BYTES);
    held.add(k);
    keyer.keyInto(pack.pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), key, 0);
    if (Buffer.from(key).equals(Buffer.from(pack.keys.buffer, pack.keys.byteOffset + i * KEY_BYTES, KEY_BYTES))) {
      if (info.keys.has(k)) goodKeys.push(k);
    } else badKeys.push(k);
  }
  if (badKeys.length) problems.push(`${badKeys.length} of ${pack.count} pages do not hash to their key`);
  const notHeld = [...info.keys].filter((k) => !held.has(k));
  if (notHeld.length) {
    problems.push(`${notHeld.length} announced keys are not in the pack`);
    badKeys.push(...notHeld);
  }
  return { fetched: true, bytes: bytes.byteLength, goodKeys, badKeys, problems };
}
