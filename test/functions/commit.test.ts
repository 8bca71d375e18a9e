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
  const run = async (id: string, data: Record<string, unknown>) =>
    (await h.run(fn(id), data)).map((e) => `${e.type.replace(/^io\.gangway\./, "").replace(/\.v1$/, "")}${e.data.host ? `@${e.data.host}` : ""}`);
  return { state: h.state, run };
}

const digest = "ab".repeat(32);
const sent = { migrationId: "m", vm: "v", deviceState: "s", deviceStateBytes: 1, rounds: 2, batches: 3, records: 10, digest };
const ready = { migrationId: "m", vm: "v", targetHost: "B", pagesExpected: 10, pagesDelivered: 10, digest };

async function planned() {
  const h = harness();
  await h.state.put(planKey("m"), { migrationId: "m", sourceHost: "A", targetHost: "B", vms: [{ vm: "v", tenant: "t", memoryBytes: 1 }], options: {} });
  return h;
}

describe("commit decisions", () => {
  it("commit resumes the destination first; the source quits only once the destination runs", async () => {
    const h = await planned();
    expect(await h.run("commit-sent", sent)).toEqual([]);
    expect(await h.run("commit-ready", ready)).toEqual(["agent.resume-target@B", "migration.committed", "migration.succeeded"]);
    expect(await h.run("commit-resumed", { migrationId: "m", vm: "v", targetHost: "B" })).toEqual(["agent.quit-source@A"]);
  });

  it("a replayed or late event re-sends the decision's commands, never a new decision", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
    await h.run("commit-ready", ready);
    expect(await h.run("commit-ready", ready)).toEqual(["agent.resume-target@B"]);
    // A peer-loss abort after the commit decision: the committed VM is left as it is.
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "host B stopped answering", reportedBy: "host A", destinationStopped: false })).toEqual([]);
  });

  it("a destination that stopped before resuming undoes the commit: the intact source resumes", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
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
    await h.run("commit-ready", ready);
    await h.run("commit-resumed", { migrationId: "m", vm: "v", targetHost: "B" });
    expect(await h.run("commit-abort", { migrationId: "m", vm: "v", reason: "late", reportedBy: "host B", destinationStopped: true })).toEqual([]);
  });

  it("digests that differ roll back; a repeat re-sends the rollback", async () => {
    const h = await planned();
    await h.run("commit-sent", sent);
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
    expect(await h.run("commit-resumed", done)).toEqual(["agent.quit-source@A", "migration.succeeded"]);
  });

  it("post-copy: an image that differs from the source's is reported lost, and the source is kept", async () => {
    const h = await planned();
    await h.run("commit-postcopy-ready", { migrationId: "m", vm: "v", targetHost: "B", pagesMissing: 1 });
    await h.run("commit-sent", sent);
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
});
