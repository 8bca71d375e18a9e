/** CPU seconds and peak memory of processes, from /proc (Linux). */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

let ticks: number | undefined;
function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

export interface ProcSample {
  pid: number;
  /** User + system CPU seconds so far. */
  cpuSeconds: number;
  /** Peak resident set (VmHWM), bytes. */
  peakRssBytes: number;
  /** Resident set now (VmRSS), bytes. */
  rssBytes: number;
}

/** One sample of a live process, or undefined when it is gone. */
export function sampleProcess(pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) in parentheses.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024;
    return { pid, cpuSeconds: (utime + stime) / clockTicks(), peakRssBytes: kb("VmHWM"), rssBytes: kb("VmRSS") };
  } catch {
    return undefined;
  }
}
