/**
 * What a commit requires of a VM's facts (the rules commit's functions apply): facts count only
 * from the host that plays the part, the first account of each is the one that counts, and
 * three digests must be equal — the source's RAM (read once it stopped), what the source sent
 * (stream, then repairs), what the destination loaded (read back) — with the device state the
 * source stored, and every page.
 */
import type { z } from "zod";
import type { commitReady, manifestCompleted, manifestVerified } from "../../schemas/index.ts";
import { NonRetriableError, type FunctionContext } from "../../kit/index.ts";
import type { Plan } from "../plan/index.ts";

export type Sent = z.infer<typeof manifestCompleted.data>;
export type Ready = z.infer<typeof commitReady.data>;
export type Verified = z.infer<typeof manifestVerified.extensions>;

export const short = (d: string) => `${d.slice(0, 16)}…`;

/**
 * A fact about a VM counts only for a VM of the plan and from the agent of the host that
 * plays that part (events carry their publisher as source "gangway/host/<host>"): anything
 * else is dead-lettered with the reason, and decides nothing.
 */
export function reportedBy(plan: Plan, vm: string, source: string, role: "source" | "target"): void {
  if (!plan.vms.some((v) => v.vm === vm)) throw new NonRetriableError(`VM ${vm} is not in migration ${plan.migrationId}`);
  const host = role === "source" ? plan.sourceHost : plan.targetHost;
  if (source !== `gangway/host/${host}`) throw new NonRetriableError(`a ${role} fact of ${plan.migrationId}/${vm} from "${source}", not from its ${role} host ${host}`);
}

/** The first account of a fact is the one that counts; a different second one is refused (a replay is not). */
export async function recordOnce<T>(ctx: FunctionContext, key: string, value: T, what: string): Promise<void> {
  if (await ctx.state.create<T>(key, value)) return;
  const first = await ctx.state.get<T>(key);
  if (JSON.stringify(first) !== JSON.stringify(value)) throw new NonRetriableError(`${what} was recorded already and differs from this one`);
}

/**
 * Why a VM must not be committed, or undefined. Three digests must be equal: the source's
 * RAM (read once it stopped), what the source sent (stream, then repairs), what the
 * destination loaded (read back); and the destination must have loaded the device state the
 * source stored, and every page.
 */
export function refuse(sent: Sent, verified: Verified, ready: Ready): string | undefined {
  if (ready.pagesDelivered !== ready.pagesExpected) return `the destination holds ${ready.pagesDelivered} of ${ready.pagesExpected} pages`;
  if (Number(verified.count) === 0 && verified.sentdigest !== sent.digest) return `the source's account of what it sent is inconsistent (stream digest ${short(sent.digest)} vs ${short(verified.sentdigest)} without repairs)`;
  if (verified.sentdigest !== verified.sourceramdigest) {
    return `the source's RAM differs from what it sent in ${verified.differing} pages, more than its repair pass carries (first differing page ${verified.firstdiffering ?? "unknown"})`;
  }
  if (ready.digest !== verified.sourceramdigest) {
    const load = ready.loadDiffering > 0 ? `; its QEMU holds ${ready.loadDiffering} pages otherwise than gangway delivered them, first at ${ready.firstLoadDiffering}` : "";
    const repaired = verified.differing > 0 ? `; the source repaired ${ready.pagesRepaired} pages, first ${verified.firstdiffering}` : "";
    return `destination memory does not match the source's RAM (digest ${short(ready.digest)} vs ${short(verified.sourceramdigest)})${load}${repaired}`;
  }
  if (ready.deviceStateDigest && ready.deviceStateDigest !== verified.devicestatedigest) {
    return `the destination loaded other device state than the source stored (${short(ready.deviceStateDigest)} vs ${short(verified.devicestatedigest)})`;
  }
  return undefined;
}
