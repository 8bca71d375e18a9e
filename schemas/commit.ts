/**
 * Commit: the destination proves it holds every page (counts and a digest of the image it
 * delivered to QEMU); the commit function then resumes the destination and quits the source.
 * Until then the source is authoritative; any failure before commit rolls back.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { digestHex, hostName, migrationId, reason, vmName } from "./common.ts";

const about = (p: { migrationId: string }) => `migration/${p.migrationId}`;

/** The destination loaded the whole stream into its paused QEMU. */
export const commitReady = defineEvent({
  type: "io.gangway.commit.ready.v1",
  family: "commit",
  subject: "gw.commit.{migrationId}.ready",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    targetHost: hostName,
    pagesExpected: z.number().int().nonnegative(),
    pagesDelivered: z.number().int().nonnegative(),
    /** Digest of the memory its QEMU holds, read back after the source's repairs. */
    digest: digestHex,
    downtimeMs: z.number().nonnegative().optional(),
    /** Pages the source's repair pass wrote into the paused VM. */
    pagesRepaired: z.number().int().nonnegative().default(0),
    /** Pages QEMU holds otherwise than gangway delivered them (the first: block+offset). */
    loadDiffering: z.number().int().nonnegative().default(0),
    firstLoadDiffering: z.string().max(256).optional(),
    /** SHA-256 of the device state this destination handed its QEMU. */
    deviceStateDigest: digestHex.optional(),
    /** How long reading back its RAM took (ms). */
    readMs: z.number().nonnegative().optional(),
  }),
});

/**
 * Post-copy: the destination QEMU loaded the device state and waits paused while pages
 * still arrive. Resuming it is the point of no return: from then on the source only serves pages.
 */
export const commitPostcopyReady = defineEvent({
  type: "io.gangway.commit.postcopy-ready.v1",
  family: "commit",
  subject: "gw.commit.{migrationId}.postcopy-ready",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    targetHost: hostName,
    /** Pages still to come (never sent, or re-dirtied and discarded at the switch-over). */
    pagesMissing: z.number().int().nonnegative(),
  }),
});

/** The source finished sending: what it sent, for the commit function to compare. */
export const commitSent = defineEvent({
  type: "io.gangway.commit.sent.v1",
  family: "commit",
  subject: "gw.commit.{migrationId}.sent",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    sourceHost: hostName,
    pages: z.number().int().nonnegative(),
    digest: digestHex,
  }),
});

/** Something failed before commit: roll this VM back. */
export const commitAbort = defineEvent({
  type: "io.gangway.commit.abort.v1",
  family: "commit",
  subject: "gw.commit.{migrationId}.abort",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    reason,
    reportedBy: z.string().min(1).max(256),
    /**
     * The reporter is the destination and guarantees its VM is stopped for good (resume failed,
     * or it has none). Only such an abort may undo a commit decision not yet carried out.
     */
    destinationStopped: z.boolean().default(false),
  }),
});

/** The destination runs the VM: now, and only now, the source may quit. */
export const commitResumed = defineEvent({
  type: "io.gangway.commit.resumed.v1",
  family: "commit",
  subject: "gw.commit.{migrationId}.resumed",
  about,
  data: z.object({
    migrationId,
    vm: vmName,
    targetHost: hostName,
    /**
     * Post-copy: the destination says this once every page arrived, with the digest of the
     * image delivered to QEMU, for the commit function to compare with the source's.
     */
    postcopy: z.object({ digest: digestHex, pagesAfterSwitchover: z.number().int().nonnegative(), duplicatesDropped: z.number().int().nonnegative() }).optional(),
  }),
});
