/**
 * Page packs and manifests. A page pack holds unique pages, compressed, stored under its
 * content address in the object store; the event says it landed. A manifest tells the
 * destination what to write where: ordered binary batches per VM, each record
 * be64 page offset | u8 RAM block index | u8 kind | 16-byte key (kind: 0 zero page with
 * the fill byte in the key's first byte, 1 page by key). Block indexes refer to the
 * block list of the VM's manifest header.
 */
import { z } from "zod";
import { defineBinaryEvent, defineEvent } from "./cloudevent.ts";
import { KEY_BYTES, PAGE_SIZE, contentKey, hostName, migrationId, tenantId, vmName } from "./common.ts";

export const MANIFEST_RECORD_BYTES = 8 + 1 + 1 + KEY_BYTES;

export const ManifestKind = { zero: 0, page: 1 } as const;
export type ManifestKind = (typeof ManifestKind)[keyof typeof ManifestKind];

export const PackCodec = { raw: "raw", lz4: "lz4", zstd: "zstd" } as const;
export type PackCodec = (typeof PackCodec)[keyof typeof PackCodec];

type ByVm = { migrationId: string; vm: string };
const aboutVm = (p: ByVm) => `migration/${p.migrationId}/vm/${p.vm}`;

export const manifestBatch = defineBinaryEvent({
  type: "io.gangway.manifest.batch.v1",
  family: "manifest",
  subject: "gw.manifest.{migrationId}.{vm}.batch",
  about: aboutVm,
  extensions: z.object({
    migrationId,
    vm: vmName,
    tenant: tenantId,
    round: z.coerce.number().int().nonnegative(),
    seq: z.coerce.number().int().nonnegative(),
    count: z.coerce.number().int().nonnegative().max(65536),
    /** Set on the last batch of the VM's last round. */
    final: z.preprocess((v) => v === true || v === "true", z.boolean()),
  }),
  checkBody: (body, ext) => {
    if (body.byteLength !== ext.count * MANIFEST_RECORD_BYTES) return `body has ${body.byteLength} bytes, expected ${ext.count} records × ${MANIFEST_RECORD_BYTES}`;
    for (let i = 0; i < ext.count; i++) {
      const kind = body[i * MANIFEST_RECORD_BYTES + 9];
      if (kind !== ManifestKind.zero && kind !== ManifestKind.page) return `record ${i} has kind ${kind}`;
    }
    return undefined;
  },
});

const discardRange = z.object({ start: z.number().int().nonnegative(), length: z.number().int().positive() });

/**
 * QEMU's migration commands as they pass through gangway, in stream order between the
 * manifest batches (post-copy: OPEN_RETURN_PATH, ADVISE, the discards of re-dirtied pages,
 * and PACKAGED — device state, LISTEN and RUN — whose bytes are an object in the pack store).
 */
export const migrationCommand = z.discriminatedUnion("cmd", [
  z.object({ cmd: z.literal("openReturnPath") }),
  z.object({ cmd: z.literal("ping"), value: z.number().int().nonnegative() }),
  z.object({ cmd: z.literal("postcopyAdvise"), pageSizeSummary: z.number().int().nonnegative().optional(), targetPageSize: z.number().int().nonnegative().optional() }),
  z.object({ cmd: z.literal("postcopyListen") }),
  z.object({ cmd: z.literal("postcopyRun") }),
  z.object({ cmd: z.literal("postcopyRamDiscard"), version: z.number().int().nonnegative(), block: z.string().min(1).max(255), ranges: z.array(discardRange).max(100_000) }),
  z.object({ cmd: z.literal("packaged"), object: z.string().min(1).max(256), bytes: z.number().int().nonnegative() }),
  // QEMU 10.0+: the source is about to stop (send-switchover-start); the destination's QEMU expects it.
  z.object({ cmd: z.literal("switchoverStart") }),
]);
export type ManifestCommand = z.infer<typeof migrationCommand>;

/**
 * What the destination needs before any page: the machine and the RAM blocks (in the
 * order block indexes refer to), and, once the source finished, where the device state is.
 */
export const manifestHeader = defineEvent({
  type: "io.gangway.manifest.header.v1",
  family: "manifest",
  subject: "gw.manifest.{migrationId}.{vm}.header",
  about: aboutVm,
  data: z.object({
    migrationId,
    vm: vmName,
    tenant: tenantId,
    sourceHost: hostName,
    machine: z.string().min(1).max(256),
    blocks: z.array(z.object({ id: z.string().min(1).max(255), usedBytes: z.number().int().nonnegative() })).min(1).max(255),
    /** The ram section's setup word (total bytes | flags), passed on verbatim. */
    ramSetupWord: z.string().regex(/^[0-9]+$/),
    /** The CONFIGURATION record as the source sent it (base64). */
    configRaw: z.string().max(65536),
    /** The ram section's id, instance and version as the source numbered them. */
    ramSection: z.object({ id: z.number().int().nonnegative(), instance: z.number().int().nonnegative(), version: z.number().int().nonnegative() }),
    /** Commands QEMU sent before the RAM (post-copy: OPEN_RETURN_PATH, ADVISE), in order. */
    commands: z.array(migrationCommand).max(16).default([]),
  }),
});

/** Device states up to this many bytes travel in manifest.completed as well (NATS's payload limit is 1 MB). */
export const MAX_INLINE_DEVICE_STATE = 512 * 1024;

/** The source finished: the device state (everything after the RAM) and the totals. */
export const manifestCompleted = defineEvent({
  type: "io.gangway.manifest.completed.v1",
  family: "manifest",
  subject: "gw.manifest.{migrationId}.{vm}.completed",
  about: aboutVm,
  data: z.object({
    migrationId,
    vm: vmName,
    /** Object holding the device-state bytes (the stream from the first non-RAM section on). */
    deviceState: z.string().min(1).max(256),
    deviceStateBytes: z.number().int().nonnegative(),
    /**
     * The same bytes (base64) when they are small: the destination, in the downtime, need not
     * wait for the object's put and its fetch. The object is stored all the same (audit).
     */
    deviceStateInline: z.string().max(Math.ceil(MAX_INLINE_DEVICE_STATE / 3) * 4).regex(/^[A-Za-z0-9+/]*={0,2}$/).optional(),
    rounds: z.number().int().nonnegative(),
    /** Manifest messages in the VM's sequence: batches and the commands between them. */
    batches: z.number().int().nonnegative(),
    records: z.number().int().nonnegative(),
    /** Digest of the image the stream implies (last content of every page of every block). */
    digest: z.string().regex(/^[0-9a-f]{64}$/),
  }),
});

/**
 * The source's proof against its real memory, once its QEMU stopped: the digest of its guest
 * RAM read from the RAM file, and the repair pass — records (as in a batch) of the pages
 * whose RAM differs from what its stream carried, stored in packs like any other page (and,
 * when few, carried in the body too). The destination writes them into its paused VM before it
 * proves what it holds.
 */
export const manifestVerified = defineBinaryEvent({
  type: "io.gangway.manifest.verified.v1",
  family: "manifest",
  subject: "gw.manifest.{migrationId}.{vm}.verified",
  about: aboutVm,
  extensions: z.object({
    migrationId,
    vm: vmName,
    tenant: tenantId,
    /** Repair records in the body. */
    count: z.coerce.number().int().nonnegative().max(16384),
    /** Digest of the image as the source's RAM holds it (RAM blocks read from the file). */
    sourceramdigest: z.string().regex(/^[0-9a-f]{64}$/),
    /** Digest of everything the source sent: its stream, then the repair pass. */
    sentdigest: z.string().regex(/^[0-9a-f]{64}$/),
    /** SHA-256 of the device state the source stored (what the destination must load). */
    devicestatedigest: z.string().regex(/^[0-9a-f]{64}$/),
    /** Pages whose RAM differed from the stream; the first of them (block+offset, round). */
    differing: z.coerce.number().int().nonnegative(),
    firstdiffering: z.string().max(256).optional(),
    /** How long the RAM read took. */
    readms: z.coerce.number().nonnegative(),
    /**
     * The repaired pages follow the records in the body (4096 bytes each, in record order), so
     * the destination need not wait for their pack, which is stored for the audit too.
     */
    inline: z.preprocess((v) => v === true || v === "true", z.boolean()).optional(),
  }),
  checkBody: (body, ext) => {
    const expected = ext.count * (MANIFEST_RECORD_BYTES + (ext.inline ? PAGE_SIZE : 0));
    if (body.byteLength !== expected) return `body has ${body.byteLength} bytes, expected ${ext.count} records × ${MANIFEST_RECORD_BYTES}${ext.inline ? ` and ${ext.count} pages` : ""}`;
    for (let i = 0; i < ext.count; i++) if (body[i * MANIFEST_RECORD_BYTES + 9] !== ManifestKind.page) return `repair record ${i} is not a page`;
    return undefined;
  },
});

export const manifestCommand = defineEvent({
  type: "io.gangway.manifest.command.v1",
  family: "manifest",
  subject: "gw.manifest.{migrationId}.{vm}.command",
  about: aboutVm,
  data: z.object({
    migrationId,
    vm: vmName,
    /** Position among the VM's manifest batches (one sequence for both). */
    seq: z.number().int().nonnegative(),
    command: migrationCommand,
  }),
});

type ByMigration = { migrationId: string };

export const packStored = defineEvent({
  type: "io.gangway.pack.stored.v1",
  family: "manifest",
  subject: "gw.pack.{migrationId}.stored",
  about: (p: ByMigration) => `migration/${p.migrationId}`,
  data: z.object({
    migrationId,
    sourceHost: hostName,
    vm: vmName,
    tenant: tenantId,
    /** Object name in the pack store: the content address of the packed bytes. */
    pack: z.string().regex(/^pack-[0-9a-f]{32,64}$/),
    codec: z.enum(PackCodec),
    /** Keys of the pages in the pack, in pack order. */
    keys: z.array(contentKey).min(1).max(1024),
    rawBytes: z.number().int().positive(),
    storedBytes: z.number().int().positive(),
  }),
});

/**
 * A destination found a stored pack damaged (its bytes do not hash to its name, or a page does
 * not match its key). The pack is removed from the store and its keys from the dedup index,
 * so the next migration that needs those pages sends them again instead of failing on them.
 */
export const packCorrupt = defineEvent({
  type: "io.gangway.pack.corrupt.v1",
  family: "manifest",
  subject: "gw.pack.{migrationId}.corrupt",
  about: (p: ByMigration) => `migration/${p.migrationId}`,
  data: z.object({
    /** The migration (or preparation pass, "prep-<host>") that stored the pack. */
    migrationId,
    tenant: tenantId,
    pack: z.string().regex(/^pack-[0-9a-f]{32,64}$/),
    reportedBy: hostName,
    reason: z.string().min(1).max(2000),
  }),
});
