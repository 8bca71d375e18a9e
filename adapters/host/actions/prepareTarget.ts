/**
 * prepare-target (destination): starts the VM paused, waiting for its stream; rebuilds the
 * stream from the source's manifest and the page packs and hands it to QEMU; then proves
 * what QEMU holds against the source's RAM and reports commit-ready. In post-copy, reports
 * postcopy-ready once QEMU has the devices, asks for the pages the guest faults on, and says
 * commit-resumed once every page is in. The source host is watched until the VM is decided.
 */
import { agentPrepareTarget, commitPostcopyReady, commitReady, commitResumed, MigrationMode, MigrationPhase, migrationProgress, pageMissing, pageRequested, PAGE_SIZE } from "../../../schemas/index.ts";
import { inSpan } from "../../../infra/spans.ts";
import type { ReturnPathMessage } from "../../qemu/returnPath.ts";
import { proveDestination } from "../destinationProof.ts";
import { defineAction } from "../hostAction.ts";
import { publishAbort, publishInventory, syncRecords } from "../hostFacts.ts";
import { endTarget, latch, sessionKey, type HostState, type TargetSession } from "../hostState.ts";
import { peerAlive, watchPeer } from "../peers.ts";
import { missingPages, targetRecords, type TargetState } from "../targetMigration.ts";

/** Messages before this command a migration's followers start from (its source's first ones may precede it). */
const FOLLOW_MARGIN = 10_000;

export default defineAction({
  trigger: agentPrepareTarget,
  async handle(state, c, meta) {
    const { log, publisher: pub, host } = state;
    const key = sessionKey(c.migrationId, c.spec.name);
    if (state.targets.has(key) || state.preparing.has(key)) return;
    if (state.owned.has(c.spec.name)) return publishAbort(state, c.migrationId, c.spec.name, `a VM named ${c.spec.name} already runs on ${host}`);
    // A rollback can come while QEMU is still starting: it marks this, and the VM is quit.
    const pending = { rolledBack: false };
    state.preparing.set(key, pending);
    const vm = await state.driver
      .startVm(c.spec, "destination", c.migrationId)
      .catch(async (err: Error) => {
        await publishAbort(state, c.migrationId, c.spec.name, `destination VM did not start: ${err.message}`);
        return undefined;
      })
      .finally(() => state.preparing.delete(key));
    if (!vm) return;
    if (pending.rolledBack) return void (await vm.quit().catch(() => undefined));
    const ended = latch();
    const rebuild: TargetState = { pagesWritten: 0 };
    const session: TargetSession = { migrationId: c.migrationId, vm, spec: c.spec, ended: ended.promise, end: ended.open, state: rebuild };
    state.prepSources.add(c.sourceHost);
    state.targets.set(key, session);
    const params = { migrationId: c.migrationId };
    let faults = 0;
    /** Post-copy: QEMU faulted on pages it lacks; page-request decides how they come. */
    const onReturnPath = (m: ReturnPathMessage) => {
      if (m.type !== "reqPages") return;
      const seq = faults++;
      void pub.publish(pageRequested, params, { migrationId: c.migrationId, vm: c.spec.name, block: m.block, blockBytes: rebuild.header?.blocks.find((b) => b.id === m.block)?.usedBytes ?? m.start + PAGE_SIZE, ranges: [{ offset: m.start, length: Math.max(PAGE_SIZE, m.length) }], seq }, { id: `${c.migrationId}-${c.spec.name}-fault-${seq}` })
        .catch((e: Error) => log.warn("page request not published", { error: e }));
    };
    /** Post-copy: once QEMU has the devices and waits for `cont`, ask commit to go ahead. */
    const onSwitchover = () => {
      session.postcopy = { resumed: latch(), isResumed: false };
      void (async () => {
        const deadline = Date.now() + 120_000;
        while (Date.now() < deadline) {
          const st = await vm.status().catch(() => "gone");
          if (st === "paused") break;
          if (st === "gone" || st === "running") throw new Error(`destination QEMU is ${st} after the device state`);
          await new Promise((r) => setTimeout(r, 50));
        }
        await pub.publish(commitPostcopyReady, params, { migrationId: c.migrationId, vm: c.spec.name, targetHost: host, pagesMissing: missingPages(rebuild, 0).pages }, { id: `${c.migrationId}-${c.spec.name}-postcopy-ready` });
      })().catch((e: Error) => publishAbort(state, c.migrationId, c.spec.name, `destination: ${e.message}`));
    };
    const run = (async () => {
      const source = await state.pages();
      const keyer = state.keyerFor(c.spec.tenant);
      // Started now, so that the proof after the load finds its workers up.
      const ramChecker = state.ramChecker();
      // What this migration stores as it goes, and what the preparation phase preseeded (most
      // of the memory): the packs holding the VM's pages as the source's last scan saw them.
      source.prefetch(c.migrationId, c.spec.tenant, keyer);
      void prefetchScanned(state, c.sourceHost, c.spec.name, c.spec.tenant, () => state.targets.get(key) === session);
      // The manifest comes after the commands that started the migration (give or take the
      // moment between the plan's commands to both sides): read from just before this one.
      const fromSeq = Math.max(1, meta.streamSeq - FOLLOW_MARGIN);
      const records = targetRecords({ nc: state.nc, migrationId: c.migrationId, vm: c.spec.name, tenant: c.spec.tenant, sourceHost: c.sourceHost, host, keyer, pages: source, packs: state.packs, progressTimeoutMs: c.options.progressTimeoutSec * 1000, onSwitchover, ended: ended.promise, fromSeq }, rebuild);
      await inSpan("destination rebuild", { "gangway.migration": c.migrationId, "gangway.vm": c.spec.name, "gangway.host": host }, () =>
        state.driver.migrateIn(vm, records, { postcopy: c.options.postcopy, onReturnPath, onWritten: () => (session.waitingFor = "QEMU to finish loading the stream") }));
      log.debug("destination loaded", { migrationId: c.migrationId, vm: c.spec.name });
      if (session.postcopy) return finishPostcopy(state, session);
      const loadedAt = performance.now();
      const status = await vm.status();
      if (status !== "paused" && status !== "prelaunch") throw new Error(`destination QEMU is ${status} after loading, expected paused`);
      // The proof: read back what QEMU holds (block m0 from its RAM file), apply the source's
      // repairs of pages its stream missed, and digest it.
      const proof = await inSpan("destination proof", { "gangway.migration": c.migrationId, "gangway.vm": c.spec.name }, () => proveDestination({
        nc: state.nc, migrationId: c.migrationId, vm: c.spec.name, tenant: c.spec.tenant, state: rebuild, ramPath: vm.ramPath, keyer, pages: source,
        timeoutMs: c.options.progressTimeoutSec * 1000, ended: ended.promise, onWait: (what) => (session.waitingFor = what), sourceHost: c.sourceHost, host, ...(ramChecker ? { checker: ramChecker } : {}),
      }));
      await pub.publish(commitReady, { migrationId: c.migrationId }, {
        migrationId: c.migrationId, vm: c.spec.name, targetHost: host, pagesExpected: proof.expected, pagesDelivered: proof.delivered, digest: proof.digest,
        pagesRepaired: proof.pagesRepaired, loadDiffering: proof.loadDiffering, ...(proof.firstLoadDiffering ? { firstLoadDiffering: proof.firstLoadDiffering } : {}),
        ...(rebuild.deviceStateDigest ? { deviceStateDigest: rebuild.deviceStateDigest } : {}), readMs: proof.readMs,
      }, { id: `${c.migrationId}-${c.spec.name}-ready` });
      session.waitingFor = "the commit decision";
      log.info("destination ready", { migrationId: c.migrationId, vm: c.spec.name, pages: proof.delivered, pagesRepaired: proof.pagesRepaired, loadDiffering: proof.loadDiffering, readMs: proof.readMs, sourceWaitMs: proof.sourceWaitMs, dumpWaitMs: proof.dumpWaitMs, sinceLoadedMs: Math.round(performance.now() - loadedAt), matchesSourceRam: proof.digest === proof.source.ramDigest });
    })();
    void watchSource(state, session, c.sourceHost, c.options.progressTimeoutSec * 1000);
    run.catch(async (err: Error) => {
      log.warn("destination failed", { migrationId: c.migrationId, vm: c.spec.name, error: err });
      await failTarget(state, session, `destination: ${err.message}`);
    });
  },
});

/**
 * Prefetches the packs that hold the VM's content as its source host's scans last saw it.
 * Without a scan seen (the stream lost it, the follower is not up), every pack of the VM that
 * host's scans stored (more than needed, never less).
 */
async function prefetchScanned(state: HostState, sourceHost: string, vm: string, tenant: string, current: () => boolean): Promise<void> {
  const source = await state.pages();
  const keyer = state.keyerFor(tenant);
  const content = await state.scanContent().then((s) => s.contentOf(sourceHost, vm)).catch(() => undefined);
  // Ended meanwhile (rolled back): a prefetch begun now would outlive every session here.
  if (!current()) return;
  if (content?.tenant === tenant) source.prefetchContent(`prep-${sourceHost}`, tenant, keyer, vm, content.keys);
  else source.prefetch(`prep-${sourceHost}`, tenant, keyer, vm);
}

/**
 * Watches the source host until the VM is decided here. Before post-copy resumed the VM,
 * a source that stops answering fails the migration (the source side takes over). After,
 * the source holds the only copy of the missing pages: the stall is reported
 * (postcopy-paused: the guest's vCPUs wait on the pages they fault on), and post-copy goes
 * on if the source answers again within the progress time-out (a link that came back);
 * only then is the VM given up.
 */
async function watchSource(state: HostState, t: TargetSession, sourceHost: string, patienceMs: number): Promise<void> {
  for (;;) {
    const reason = await watchPeer(state, sourceHost, t.ended, t.migrationId, t.spec.name);
    if (!reason) return;
    if (!t.postcopy?.isResumed) return failTarget(state, t, reason);
    // No QMP stop here: a vCPU waiting on a missing page cannot be paused anyway (stop would
    // hang), and one that touches only pages it has may run on. Post-copy is stalled, and said so.
    state.log.warn("post-copy: source unreachable; the guest waits on its missing pages until it answers again", { migrationId: t.migrationId, vm: t.spec.name, reason });
    const params = { migrationId: t.migrationId };
    const report = (status: string) =>
      state.publisher.publish(migrationProgress, params, { migrationId: t.migrationId, vm: t.spec.name, phase: MigrationPhase.Running, mode: MigrationMode.PostCopy, stats: { time_elapsed: 0, data_processed: 0 }, qemu: { status, reason } })
        .catch(() => undefined);
    void report("postcopy-paused");
    const until = Date.now() + patienceMs;
    const current = () => state.targets.get(sessionKey(t.migrationId, t.spec.name)) === t;
    let back = false;
    while (!back && Date.now() < until && current()) {
      await new Promise((r) => setTimeout(r, 1000));
      back = await peerAlive(state, sourceHost);
    }
    // Every page came meanwhile (or the session was rolled back): nothing left to give up on.
    if (!back && !current()) return;
    if (!back) return failTarget(state, t, `${reason}; not back within ${Math.round(patienceMs / 1000)} s`);
    state.log.info("post-copy: source answers again", { migrationId: t.migrationId, vm: t.spec.name });
    void report("postcopy-active");
  }
}

/**
 * A destination that cannot go on. Before post-copy resumed it the source is intact and
 * takes over; after, the pages it never got are lost with the source: it is paused (its
 * guest would hang on them anyway) and they are named.
 */
async function failTarget(state: HostState, t: TargetSession, reason: string): Promise<void> {
  if (t.postcopy) {
    const missing = missingPages(t.state);
    // QEMU may be stuck on a fault with its lock held: do not wait on it for long.
    if (t.postcopy.isResumed) {
      await Promise.race([t.vm.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
      const v = state.owned.get(t.spec.name);
      if (v?.vm === t.vm) v.state = "paused";
      void publishInventory(state).catch(() => undefined);
    }
    if (missing.pages > 0) {
      await state.publisher.publish(pageMissing, { migrationId: t.migrationId }, { migrationId: t.migrationId, vm: t.spec.name, targetHost: state.host, pages: missing.pages, block: missing.block, ranges: missing.ranges, reason: reason.slice(0, 2000) })
        .catch((e: Error) => state.log.error("missing pages not reported", { error: e }));
    }
    reason = `${reason} (post-copy: ${missing.pages} pages never arrived)`;
  }
  await publishAbort(state, t.migrationId, t.spec.name, reason);
}

/** Post-copy: every page is in; say so with the digest of what QEMU got, once it runs. */
async function finishPostcopy(state: HostState, t: TargetSession): Promise<void> {
  const { migrationId, state: rebuild } = t;
  await t.postcopy!.resumed.promise;
  endTarget(state, t);
  void syncRecords(state); // every page is in: an ordinary running VM from now on
  // Every page of every block must have come: QEMU zero-fills what never did once its
  // post-copy ends, which would be silent corruption. Say so instead.
  const missing = missingPages(rebuild);
  if (missing.pages > 0) {
    await state.publisher.publish(pageMissing, { migrationId }, { migrationId, vm: t.spec.name, targetHost: state.host, pages: missing.pages, block: missing.block, ranges: missing.ranges, reason: "post-copy ended without these pages" })
      .catch((e: Error) => state.log.error("missing pages not reported", { error: e }));
    await Promise.race([t.vm.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
    return publishAbort(state, migrationId, t.spec.name, `post-copy ended with ${missing.pages} pages never delivered (first at ${missing.block}+${missing.ranges[0]?.offset ?? 0})`);
  }
  const digest = rebuild.delivered!.digest();
  state.log.info("post-copy complete", { migrationId, vm: t.spec.name, pagesAfterSwitchover: rebuild.pagesAfterSwitchover ?? 0, duplicatesDropped: rebuild.duplicatesDropped ?? 0 });
  await state.publisher.publish(commitResumed, { migrationId }, {
    migrationId, vm: t.spec.name, targetHost: state.host,
    postcopy: { digest, pagesAfterSwitchover: rebuild.pagesAfterSwitchover ?? 0, duplicatesDropped: rebuild.duplicatesDropped ?? 0 },
  }, { id: `${migrationId}-${t.spec.name}-commit-resumed` });
}
