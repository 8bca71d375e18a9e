/**
 * page-request: after a post-copy switch-over the destination faults on pages it lacks
 * (QEMU's return path, REQ_PAGES) and the guest waits. Its neighbours are likely next
 * (locality), so each fault asks for a small aligned window around it (paper 003's
 * prefetch). Only pages never asked for before go to the source host, which has QEMU send
 * them next; the source keys them, and one the destination already holds crosses as its
 * key alone. A repeated request — a QEMU retry, a replayed event, a restarted instance —
 * asks for nothing again; QEMU itself never sends a page twice after the switch-over, and
 * the destination drops a repeat before QEMU sees it: every page lands exactly once.
 */
import type { z } from "zod";
import { agentPageRequest, pageRequested, PAGE_SIZE } from "../../schemas/index.ts";
import { defineFunction, RetryAfterError } from "../../kit/index.ts";
import { planKey, type Plan } from "../plan/index.ts";

/** Pages fetched per fault: the faulting page's aligned window of 64 KiB. */
export const PREFETCH_PAGES = 16;
/** Pages tracked per state entry (one bit each, as 32-bit words). */
const CHUNK_PAGES = 1024;

type Range = z.infer<typeof pageRequested.data>["ranges"][number];
const chunkKey = (m: string, vm: string, block: string, chunk: number) => `page.${m}.${vm}.${block.replace(/[^A-Za-z0-9_-]/g, "_")}.asked.${chunk}`;
const requestKey = (m: string, vm: string, seq: number) => `page.${m}.${vm}.request.${seq}`;

/** The fault's pages and their prefetch window, clipped to the block. */
export function windowOf(ranges: readonly Range[], blockBytes: number): number[] {
  const pages = new Set<number>();
  const lastPage = Math.floor(blockBytes / PAGE_SIZE) - 1;
  for (const r of ranges) {
    const first = Math.floor(r.offset / PAGE_SIZE);
    const end = Math.ceil((r.offset + r.length) / PAGE_SIZE);
    const from = Math.floor(first / PREFETCH_PAGES) * PREFETCH_PAGES;
    const to = Math.max(end, from + PREFETCH_PAGES);
    for (let p = from; p < to && p <= lastPage; p++) pages.add(p);
  }
  return [...pages].sort((a, b) => a - b);
}

/** Consecutive pages as byte ranges. */
export function rangesOf(pages: readonly number[]): Range[] {
  const out: Range[] = [];
  for (const p of pages) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === p * PAGE_SIZE) last.length += PAGE_SIZE;
    else out.push({ offset: p * PAGE_SIZE, length: PAGE_SIZE });
  }
  return out;
}

export default defineFunction({
  id: "page-request",
  description: "serve post-copy page faults: ask the source for each page (and its neighbours) once",
  trigger: pageRequested,
  // Requests of one VM must see each other's claims; one at a time keeps that simple.
  exclusive: true,
  retry: { maxAttempts: 6, backoffMs: 100 },
  async handler(event, ctx) {
    const d = event.data;
    const plan = await ctx.state.get<Plan>(planKey(d.migrationId));
    if (!plan) throw new RetryAfterError(`no plan recorded for migration ${d.migrationId} yet`, 200);
    // A redelivery of a request already worked out asks again for what it claimed (the
    // command's derived id makes the copy a no-op), never for less.
    let fresh = await ctx.state.get<number[]>(requestKey(d.migrationId, d.vm, d.seq));
    if (!fresh) {
      const wanted = windowOf(d.ranges, d.blockBytes);
      const chunks = new Map<number, number[]>();
      for (const p of wanted) {
        const c = Math.floor(p / CHUNK_PAGES);
        if (!chunks.has(c)) chunks.set(c, (await ctx.state.get<number[]>(chunkKey(d.migrationId, d.vm, d.block, c))) ?? new Array<number>(CHUNK_PAGES / 32).fill(0));
      }
      fresh = wanted.filter((p) => {
        const bits = chunks.get(Math.floor(p / CHUNK_PAGES))!;
        const i = p % CHUNK_PAGES;
        if (bits[i >> 5]! & (1 << (i & 31))) return false;
        bits[i >> 5] = bits[i >> 5]! | (1 << (i & 31));
        return true;
      });
      // The claim first, then the bitmap: a crash in between re-asks (harmless), never loses.
      await ctx.state.put(requestKey(d.migrationId, d.vm, d.seq), fresh);
      for (const [c, bits] of chunks) await ctx.state.put(chunkKey(d.migrationId, d.vm, d.block, c), bits);
    }
    if (fresh.length === 0) {
      ctx.log.debug("fault already asked for", { migrationId: d.migrationId, vm: d.vm, seq: d.seq });
      return;
    }
    ctx.emit(agentPageRequest, { host: plan.sourceHost }, { host: plan.sourceHost, migrationId: d.migrationId, vm: d.vm, block: d.block, ranges: rangesOf(fresh), requestSeq: d.seq });
  },
});
