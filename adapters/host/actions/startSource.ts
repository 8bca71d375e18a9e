/**
 * start-source (source): migrates a VM out through gangway's pipeline. QEMU's outgoing
 * stream is keyed page by page; pages the gang already sent or stored cross as their keys,
 * the rest go into packs, and the manifest tells the destination how to rebuild the stream.
 * The source goes at its destination's pace, reports each dirty round, its progress and its
 * switch-over, and once QEMU stopped the guest proves (and repairs) what it sent against the
 * guest's RAM. The destination host is watched, and the completion budget timed, until the
 * VM is decided here.
 */
import { agentStartSource, dirtyRound, MigrationMode, MigrationPhase, migrationProgress, migrationStarted, migrationSwitchover, pageServed, PAGE_SIZE } from "../../../schemas/index.ts";
import { inSpan } from "../../../infra/spans.ts";
import { meter } from "../../../infra/telemetry.ts";
import { paceToDestination } from "../destinationPace.ts";
import { defineAction } from "../hostAction.ts";
import { publishAbort, publishInventory } from "../hostFacts.ts";
import { joinGang, latch, sessionKey, type SourceSession } from "../hostState.ts";
import { destinationManifest, peerAlive, watchPeer } from "../peers.ts";
import type { OutgoingStream } from "../qemuDriver.ts";
import { runSourceMigration, type SentImage, type SourceProgress } from "../sourceMigration.ts";
import { checkRamAtStop, proveSourceRam, readSourceRam, stalePagesAtSwitchover, type RamCheckAtStop, type SourceRamRead } from "../sourceRamProof.ts";
import { sourceRecordsFor } from "../testFaults.ts";

/** Manifest messages (4096 pages each) a source may run ahead of what its destination handed QEMU. */
const PACE_WINDOW = 2;
/** The longest a source holds QEMU's stream at once (for its destination, or a sibling's downtime). */
const PACE_MAX_WAIT_MS = 10_000;

const bytesOnLink = meter().createCounter("gangway.migration.bytes_on_link", { unit: "By", description: "bytes a source host put on the link for migrations" });
const pagesCounter = meter().createCounter("gangway.migration.pages", { description: "pages carried by migrations, by outcome (zero, deduplicated, sent)" });

export default defineAction({
  trigger: agentStartSource,
  async handle(state, c) {
    const { log, publisher: pub, host } = state;
    const key = sessionKey(c.migrationId, c.vm);
    const v = state.owned.get(c.vm);
    if (!v) return publishAbort(state, c.migrationId, c.vm, `VM ${c.vm} is not on ${host}`);
    if (v.state === "migrating" || state.sources.has(key)) return publishAbort(state, c.migrationId, c.vm, `VM ${c.vm} is already migrating`);
    v.state = "migrating";
    v.migrationId = c.migrationId;
    void publishInventory(state).catch(() => undefined); // others see at once that it is taken
    const gang = joinGang(state, c.migrationId, c.targetHost);
    const t0 = Date.now();
    const params = { migrationId: c.migrationId };
    let last: SourceProgress | undefined;
    let out: OutgoingStream | undefined;
    let session!: SourceSession;
    /** The dirty log of one pre-copy pass, with QEMU's own view of what remains. */
    const publishRound = async (r: { round: number; pages: number; durationMs: number; nativeBytes: number }) => {
      const f = await out!.figures();
      const transferRate = r.durationMs > 0 ? (r.nativeBytes * 1000) / r.durationMs : 0;
      await pub.publish(dirtyRound, params, {
        migrationId: c.migrationId, vm: c.vm, sourceHost: host, round: r.round, pagesSent: r.pages, pagesDirtied: Math.round((f.dirtyPagesRate * r.durationMs) / 1000),
        durationMs: r.durationMs, dirtyRate: f.dirtyPagesRate, transferRate: Math.round(transferRate), remainingBytes: f.remainingBytes, cpuThrottlePercent: f.cpuThrottlePercent,
        expectedDowntimeMs: transferRate > 0 ? Math.round((f.remainingBytes / transferRate) * 1000) : 1e9,
      }, { id: `${c.migrationId}-${c.vm}-dirty-${r.round}` });
    };
    /** Requested pages the manifest carried since the last report. */
    const served = { ranges: [] as { block: string; offset: number }[], fromSource: 0, fromDestination: 0 };
    const publishServed = async () => {
      if (served.ranges.length === 0) return;
      const { ranges, fromSource, fromDestination } = served;
      served.ranges = [];
      served.fromSource = served.fromDestination = 0;
      const block = ranges[0]!.block;
      await pub.publish(pageServed, params, {
        migrationId: c.migrationId, vm: c.vm, block, fromSource, fromDestination,
        ranges: ranges.filter((r) => r.block === block).slice(0, 4096).map((r) => ({ offset: r.offset, length: PAGE_SIZE })),
      });
    };
    const done = (async () => {
      await pub.publish(migrationStarted, params, { migrationId: c.migrationId, vm: c.vm, sourceHost: host, targetHost: c.targetHost, phase: MigrationPhase.Running });
      out = await state.driver.migrateOut(v.vm, {
        postcopy: c.options.postcopy, downtimeLimitMs: c.options.maxDowntimeMs,
        ...(c.options.autoConverge ? { autoConvergeMaxPercent: c.options.autoConvergeMaxPercent } : {}),
        ...(c.options.bandwidthMBps ? { maxBandwidthBps: c.options.bandwidthMBps * 1e6 } : {}),
      });
      session.out = out;
      void out.stopped.then((at) => {
        const s = session.switchover ?? { mode: "stop-and-copy" as const, reason: "QEMU's remaining pages fit its downtime limit" };
        return pub.publish(migrationSwitchover, params, { migrationId: c.migrationId, vm: c.vm, mode: s.mode, reason: s.reason, round: last?.round ?? 0 }, { id: `${c.migrationId}-${c.vm}-switchover`, time: new Date(at) });
      }).catch(() => undefined);
      const emitProgress = (p: SourceProgress) => {
        last = p;
        const elapsed = (Date.now() - t0) / 1000;
        const processedBytes = p.pages * PAGE_SIZE;
        const rate = elapsed > 0 ? processedBytes / elapsed : 0;
        const remaining = Math.max(0, p.memory_total - processedBytes);
        void pub.publish(migrationProgress, params, {
          migrationId: c.migrationId, vm: c.vm, phase: MigrationPhase.Running, mode: session.switchover?.mode === "post-copy" ? MigrationMode.PostCopy : MigrationMode.PreCopy,
          stats: {
            time_elapsed: Math.round(elapsed * 1000), memory_total: p.memory_total, memory_processed: processedBytes, memory_remaining: remaining,
            time_remaining: rate > 0 ? Math.round((remaining / rate) * 1000) : undefined, memory_constant: p.memory_constant, memory_normal: p.pages - p.memory_constant,
            memory_bps: Math.round(rate), memory_iteration: p.round, pages_deduplicated: p.pages_deduplicated, pages_sent: p.pages_sent, packed_raw_bytes: p.packed_raw_bytes, packed_bytes: p.packed_bytes, bytes_on_link: p.bytes_on_link, data_processed: p.native_bytes,
            dedup_ratio: p.pages - p.memory_constant > 0 ? p.pages_sent / (p.pages - p.memory_constant) : 1,
            compression_ratio: p.packed_raw_bytes > 0 ? p.packed_bytes / p.packed_raw_bytes : 1,
            percent: p.memory_total ? Math.min(99, (100 * Math.min(processedBytes, p.memory_total)) / p.memory_total) : 0,
          },
        }).catch(() => undefined);
      };
      const outgoing = out;
      const keyer = state.keyerFor(v.spec.tenant);
      // Started now, so that the proof at the switch-over finds its workers up.
      const ramChecker = state.ramChecker();
      const checker = ramChecker ? { checker: ramChecker } : {};
      // The source goes at its destination's pace: what the destination has not handed its
      // QEMU when the guest stops is downtime (24–61 s on the demo without this).
      // And while another VM of the gang is in its downtime (its guest stopped), this one waits:
      // both agents' CPU is that VM's, not this one's pre-copy.
      let guestStopped = false;
      void out.stopped.then(() => {
        guestStopped = true;
        gang.stopped.add(c.vm);
      }, () => undefined);
      void session.ended.then(() => gang.stopped.delete(c.vm));
      const pacer = paceToDestination(sourceRecordsFor(outgoing.records, c.vm), {
        published: () => session.published,
        destinationWritten: async () => (await destinationManifest(state, c.targetHost, c.migrationId, c.vm))?.seqWritten,
        window: PACE_WINDOW, active: () => !guestStopped && session.switchover === undefined, log, what: `${c.vm} of ${c.migrationId}`,
        yieldTo: () => [...gang.stopped].find((vm) => vm !== c.vm),
        maxWaitMs: PACE_MAX_WAIT_MS,
      });
      let reading: Promise<SourceRamRead> | undefined;
      let streamEndedAt: number | undefined;
      // Pre-copy: the proof's RAM check starts when the guest stops, beside QEMU's last pass.
      let sentSoFar: SentImage | undefined;
      let atStop: RamCheckAtStop | undefined;
      const repair = () => session.switchover?.mode !== "post-copy";
      void out.stopped.then(() => {
        if (sentSoFar && streamEndedAt === undefined && repair()) atStop = checkRamAtStop({ ramPath: v.vm.ramPath, sent: sentSoFar, keyer, ...checker });
      }, () => undefined);
      const result = await inSpan("scan stream", { "gangway.migration": c.migrationId, "gangway.vm": c.vm, "gangway.host": host }, () => runSourceMigration({
        migrationId: c.migrationId, tenant: v.spec.tenant, sourceHost: host, records: pacer.records, publisher: pub, packs: state.packs,
        vm: c.vm, keyer, resolver: gang.resolver, gangKeys: gang.gangKeys, storedKeys: state.preparation.knownByTenant.get(v.spec.tenant), nativeBytes: () => out!.nativeBytes(), onProgress: emitProgress,
        onRound: (r) => void publishRound(r).catch((e: Error) => log.warn("dirty log not published", { error: e })),
        onPostcopyPage: (block, offset, sent) => {
          const k = `${block}:${offset}`;
          if (!session.requested.delete(k)) return;
          served.ranges.push({ block, offset });
          if (sent) served.fromSource++;
          else served.fromDestination++;
        },
        onPostcopyFlushed: () => void publishServed().catch(() => undefined),
        onPublished: (seq) => (session.published = seq),
        lowLatency: () => session.switchover !== undefined || pacer.holding,
        onImage: (sent) => (sentSoFar = sent),
        staleAtSwitchover: (image, blocks, discarded) => stalePagesAtSwitchover({ ramPath: v.vm.ramPath, image, blocks, discarded, keyer, ...checker }),
        // The guest is stopped and the image final: the proof's RAM read overlaps the last stores.
        onStreamEnd: (sent) => {
          streamEndedAt = Date.now();
          // The check from the stop holds only if the guest stayed stopped since (else: all of it again).
          const held = atStop && !outgoing.resumedSinceStop() ? { atStop } : {};
          reading = readSourceRam({ migrationId: c.migrationId, vm: c.vm, ramPath: v.vm.ramPath, sent, keyer, repair: repair(), ...checker, ...held });
          reading.catch(() => undefined); // awaited by the proof
        },
      }));
      bytesOnLink.add(result.progress.bytes_on_link, { "gangway.host": host });
      pagesCounter.add(result.progress.memory_constant, { outcome: "zero" });
      pagesCounter.add(result.progress.pages_deduplicated, { outcome: "deduplicated" });
      pagesCounter.add(result.progress.pages_sent, { outcome: "sent" });
      emitProgress(result.progress);
      // Where the source's part of a downtime goes: QEMU's last pass, then packs and device state stored.
      const stoppedAt = await out.stopped.catch(() => undefined);
      log.info("source sent everything", {
        migrationId: c.migrationId, ...result.progress,
        ...(stoppedAt !== undefined && streamEndedAt !== undefined ? { streamEndMsAfterStop: streamEndedAt - stoppedAt, storedMsAfterStreamEnd: Date.now() - streamEndedAt } : {}),
      });
      // The guest is stopped now: its RAM file is the truth to prove (and repair) against.
      const proof = await inSpan("source proof", { "gangway.migration": c.migrationId, "gangway.vm": c.vm, "gangway.host": host }, () => proveSourceRam({
        migrationId: c.migrationId, vm: c.vm, tenant: v.spec.tenant, sourceHost: host, ramPath: v.vm.ramPath, sent: result, keyer,
        publisher: pub, packs: state.packs, repair: repair(), ...(reading ? { reading } : {}),
      }));
      pagesCounter.add(proof.pagesRepaired, { outcome: "repaired" });
      (proof.pagesRepaired > 0 || proof.firstDiffering ? log.warn : log.info)("source memory proved", { migrationId: c.migrationId, vm: c.vm, ...proof });
    })();
    const ended = latch();
    // Filled in before `done` runs past its first await (which is where `out` appears).
    session = { migrationId: c.migrationId, vm: c.vm, targetHost: c.targetHost, requested: new Set(), published: -1, done, cancel: async () => void (await out?.cancel()), ended: ended.promise, end: ended.open };
    state.sources.set(key, session);
    // Watch the destination until this VM is decided, not just until it is sent: a
    // destination lost after the source finished still must not leave the source paused.
    void (async () => {
      for (;;) {
        const reason = await watchPeer(state, c.targetHost, ended.promise, c.migrationId, c.vm);
        if (!reason) return;
        // After a post-copy switch-over this host holds the only copy of the pages still to
        // come: give the destination its progress time-out to come back before giving up.
        if (session.switchover?.mode === "post-copy") {
          const until = Date.now() + c.options.progressTimeoutSec * 1000;
          let back = false;
          while (!back && Date.now() < until && state.sources.get(key) === session) {
            await new Promise((r) => setTimeout(r, 1000));
            back = await peerAlive(state, c.targetHost);
          }
          if (back) continue;
        }
        return publishAbort(state, c.migrationId, c.vm, reason);
      }
    })();
    // KubeVirt's completionTimeoutPerGiB (at least 1 GiB's worth): a VM not decided by then is
    // aborted (after a pre-copy commit an abort changes nothing). Where post-copy is allowed,
    // the dirty log switches over at the budget instead: this is only the backstop, half a
    // budget later; a VM in post-copy is never aborted for time (that would lose it).
    const budgetMs = c.options.completionTimeoutPerGiB * Math.max(1, v.spec.memoryMiB / 1024) * 1000;
    let sentAll = false;
    void done.then(() => (sentAll = true), () => undefined);
    const overdue = setTimeout(() => {
      if (session.switchover?.mode === "post-copy") return;
      void (async () => {
        // Where it stood, so that whoever reads the abort knows which side was waiting.
        const qemu = await v.vm.status().catch(() => "unknown");
        const d = await destinationManifest(state, c.targetHost, c.migrationId, c.vm);
        const where = `source QEMU ${qemu}, ${sentAll ? "everything sent" : "still sending"}, manifest published to seq ${session.published}; destination ${d ? `read to seq ${d.seqRead}, wrote to seq ${d.seqWritten}, waiting for ${d.waitingFor}` : "did not say how far it got"}`;
        await publishAbort(state, c.migrationId, c.vm, `not completed within ${Math.round(budgetMs / 1000)} s (completionTimeoutPerGiB ${c.options.completionTimeoutPerGiB}): ${where}`);
      })();
    }, c.options.postcopy ? budgetMs * 1.5 : budgetMs);
    void ended.promise.then(() => clearTimeout(overdue));
    done.catch(async (err: Error) => {
      await out?.cancel().catch(() => undefined);
      await publishAbort(state, c.migrationId, c.vm, `source: ${err.message}`);
    });
  },
});
