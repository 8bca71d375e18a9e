/**
 * The commit protocol's decisions, with a small in-memory state and context (unit level):
 * never a decision without its commands, the source quits only after the destination runs,
 * and only a destination that guarantees its VM stopped can undo a commit not yet carried out.
 */
import { describe, expect, it } from "vitest";
import { commitFunctions } from "../../functions/index.ts";
import { functionHarness } from "../helpers/functions.ts";
import { planKey } from "../../functions/plan/index.ts";

function harness() {
  const h = functionHarness();
  const fn = (id: string) => commitFunctions.find((f) => f.id === id)!;
  // Facts come from the agent of the host that plays the part: the source A, the destination B.
  const sourceOf = (id: string) => (id === "commit-sent" || id === "commit-verified" ? "gangway/host/A" : id.startsWith("commit-") && id !== "commit-abort" && id !== "commit-cancel" ? "gangway/host/B" : "t");
  const send = (id: string, data: Record<string, unknown>) => h.run(fn(id), data, undefined, undefined, sourceOf(id));
  const run = async (id: string, data: Record<string, unknown>) =>
    (await send(id, data)).map((e) => `${e.type.replace(/^io\.gangway\./, "").replace(/\.v1$/, "")}${e.data.host ? `@${e.data.host}` : ""}`);
  return { state: h.state, run, runFull: send };
}

const digest = "ab".repeat(32);
const sent = { migrationId: "m", vm: "v", deviceState: "s", deviceStateBytes: 1, rounds: 2, batches: 3, records: 10, digest };
const ready = { migrationId: "m", vm: "v", targetHost: "B", pagesExpected: 10, pagesDelivered: 10, digest, pagesRepaired: 0, loadDiffering: 0, deviceStateDigest: "ee".repeat(32) };
/** The source's proof against its RAM: nothing differed. */
const verified = { migrationId: "m", vm: "v", tenant: "t", count: 0, sourceramdigest: digest, sentdigest: digest, devicestatedigest: "ee".repeat(32), differing: 0, readms: 5 };

async function planned() {
  const h = harness();
  await h.state.put(planKey("m"), { migrationId: "m", sourceHost: "A", targetHost: "B", vms: [{ vm: "v", tenant: "t", memoryBytes: 1 }], options: {} });
  return h;
}

describe("commit decisions", () => {
  it("commit resumes the destination first; the source quits only once the destination runs", async () => {
    const h = await planned();
    expect(await h.run("commit-sent", sent)).toEqual([]);
    expect(await h.run("commit-verified", verified)).toEqual([]);
    expect(await h.run("commit-ready", ready)).toEqual(["agent.resume-target@B", "migration.committed", "migration.succeeded"]);
    expect(await h.run("commit-resumed", { migrationId: "m", vm: "v", targetHost: "B" })).toEqual(["agent.quit-source@A"]);
  });

  it("a replayed or late event re-sends the decision's commands, never a new decision", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    await h.run("commit-ready", ready);
    expect(await h.run("commit-ready", ready)).toEqual(["agent.resume-target@B"]);
    // A peer-loss abort after the commit decision: the committed VM is left as it is.
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "host B stopped answering", reportedBy: "host A", destinationStopped: false })).toEqual([]);
  });

  it("a destination that stopped before resuming undoes the commit: the intact source resumes", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    await h.run("commit-ready", ready);
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "no destination VM", reportedBy: "host B", destinationStopped: true })).toEqual([
      "agent.rollback@B",
      "agent.rollback@A",
      "migration.rolledback",
    ]);
  });

  it("once the destination runs, nothing undoes the commit", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    await h.run("commit-ready", ready);
    await h.run("commit-resumed", { migrationId: "m", vm: "v", targetHost: "B" });
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "late", reportedBy: "host B", destinationStopped: true })).toEqual([]);
  });

  it("digests that differ roll back; a repeat re-sends the rollback", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    expect(await h.run("commit-ready", { ...ready, digest: "cd".repeat(32) })).toEqual(["agent.rollback@B", "agent.rollback@A", "migration.rolledback", "migration.failed"]);
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "again", reportedBy: "host A", destinationStopped: false })).toEqual(["agent.rollback@B", "agent.rollback@A", "migration.rolledback"]);
  });

  it("post-copy: resuming the destination is the commit; the gang succeeds and the source quits only once every page arrived with the source's digest", async () => {
    const h = await planned();
    expect(await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 100 })).toEqual(["agent.resume-target@B", "migration.committed"]);
    // A repeat re-sends the resume, nothing else.
    expect(await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 100 })).toEqual(["agent.resume-target@B"]);
    // The source's account arrives; no outcome yet: pages are still faulted in.
    expect(await h.run("commit-sent", sent)).toEqual([]);
    const done = { migrationId: "m", vm: "v", targetHost: "B", postcopy: { digest, pagesAfterSwitchover: 100, duplicatesDropped: 0 } };
    // Every page is in, but the source has not proved its RAM yet: the gang waits for it.
    expect(await h.run("commit-resumed", done)).toEqual(["agent.quit-source@A"]);
    expect(await h.run("commit-verified", verified)).toEqual(["migration.succeeded"]);
  });

  it("post-copy: an image that differs from the source's is reported lost, and the source is kept", async () => {
    const h = await planned();
    await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 1 });
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    const bad = { migrationId: "m", vm: "v", targetHost: "B", postcopy: { digest: "cd".repeat(32), pagesAfterSwitchover: 1, duplicatesDropped: 0 } };
    expect(await h.run("commit-resumed", bad)).toEqual(["migration.failed", "migration.failed"]);
  });

  it("post-copy: a failure after the destination resumed is a lost VM, reported once, never rolled back; cancel cannot take it back either", async () => {
    const h = await planned();
    await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 50 });
    expect(await h.run("commit-cancel", { migrationId: "m", reason: "operator", requestedBy: "test" })).toEqual([]);
    const abort = { migrationId: "m", vm: "v", reason: "host A stopped answering", reportedBy: "host B", destinationStopped: false };
    // The VM's failure, then the gang's.
    expect(await h.run("commit-abort", abort)).toEqual(["migration.failed", "migration.failed"]);
    expect(await h.run("commit-abort", abort)).toEqual([]);
  });

  it("post-copy: a destination that stopped before resuming still rolls back onto the intact source", async () => {
    const h = await planned();
    await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 50 });
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "cont failed", reportedBy: "host B", destinationStopped: true })).toEqual([
      "agent.rollback@B",
      "agent.rollback@A",
      "migration.rolledback",
      "migration.failed",
    ]);
  });

  it("commits with three equal digests; the proof is in the committed event", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    // The source's RAM held 2 pages its stream had not carried: both repaired.
    const ram = "12".repeat(32);
    await h.run("commit-verified", { ...verified, count: 2, differing: 2, sourceramdigest: ram, sentdigest: ram, firstdiffering: "m0+0x1000 (last sent in pass 1, manifest seq 4)" });
    const h2 = await h.runFull("commit-ready", { ...ready, digest: ram, pagesRepaired: 2 });
    const committed = h2.find((e) => e.type === "io.gangway.migration.committed.v1")!;
    expect(committed.data.proof).toEqual({ source_ram_digest: ram, sent_digest: ram, destination_digest: ram, pages_repaired: 2, device_state_digest: "ee".repeat(32), source_read_ms: 5 });
  });

  it("a destination that differs from the source's RAM is refused, naming the first differing page", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", { ...verified, differing: 1, count: 1, sourceramdigest: "12".repeat(32), sentdigest: "12".repeat(32), firstdiffering: "m0+0x5000 (last sent in pass 2, manifest seq 9)" });
    const out = await h.runFull("commit-ready", { ...ready, pagesRepaired: 1, loadDiffering: 1, firstLoadDiffering: "m0+0x7000" });
    expect(out.map((e) => e.type)).toContain("io.gangway.migration.rolledback.v1");
    const reason = String(out.find((e) => e.type === "io.gangway.migration.rolledback.v1")!.data.reason);
    expect(reason).toMatch(/does not match the source's RAM/);
    expect(reason).toMatch(/m0\+0x7000/);
    expect(reason).toMatch(/m0\+0x5000 \(last sent in pass 2/);
  });

  it("source RAM that differs from what was sent after the repair pass is refused", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", { ...verified, differing: 20000, count: 0, sourceramdigest: "12".repeat(32), sentdigest: digest, firstdiffering: "m0+0x0 (never sent)" });
    const out = await h.runFull("commit-ready", ready);
    expect(String(out.find((e) => e.type === "io.gangway.migration.rolledback.v1")?.data.reason)).toMatch(/RAM differs from what it sent in 20000 pages/);
  });

  it("another VM's device state at the destination is refused", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-verified", verified);
    const out = await h.runFull("commit-ready", { ...ready, deviceStateDigest: "ff".repeat(32) });
    expect(String(out.find((e) => e.type === "io.gangway.migration.rolledback.v1")?.data.reason)).toMatch(/other device state/);
  });

  it("post-copy: a delivered image equal to what was sent but not to the source's RAM is reported lost", async () => {
    const h = await planned();
    await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 1 });
    await h.run("commit-sent", sent);
    const done = { migrationId: "m", vm: "v", targetHost: "B", postcopy: { digest, pagesAfterSwitchover: 1, duplicatesDropped: 0 } };
    expect(await h.run("commit-resumed", done)).toEqual(["agent.quit-source@A"]);
    const out = await h.runFull("commit-verified", { ...verified, differing: 3, sourceramdigest: "12".repeat(32), firstdiffering: "m0+0x3000 (last sent in pass 0, manifest seq 1)" });
    expect(out.map((e) => e.type)).toEqual(["io.gangway.migration.failed.v1", "io.gangway.migration.failed.v1"]);
    expect(String(out[0]!.data.reason)).toMatch(/differs from the source's RAM.*m0\+0x3000/);
  });

  it("facts from another host, of a VM not in the plan, or a second different account are refused (dead-lettered), deciding nothing", async () => {
    const h = await planned();
    await expect(h.runFull("commit-ready", { ...ready, vm: "other" })).rejects.toThrow(/not in migration m/);
    const forged = async (id: string, data: Record<string, unknown>, source: string) => {
      const f = commitFunctions.find((x) => x.id === id)!;
      return functionHarness(h.state).run(f, data, undefined, undefined, source);
    };
    await expect(forged("commit-sent", sent, "gangway/host/B")).rejects.toThrow(/not from its source host A/);
    await expect(forged("commit-ready", ready, "gangway/cli")).rejects.toThrow(/not from its target host B/);
    await h.run("commit-sent", sent);
    await expect(h.runFull("commit-sent", { ...sent, digest: "cd".repeat(32) })).rejects.toThrow(/recorded already and differs/);
    expect(await h.run("commit-sent", sent)).toEqual([]); // a replay is fine
    await h.run("commit-verified", verified);
    expect(await h.run("commit-ready", ready)).toEqual(["agent.resume-target@B", "migration.committed", "migration.succeeded"]);
  });
});
