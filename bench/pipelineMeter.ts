/**
 * CPU and peak memory of a run's processes over the measured phase only: CPU as the
 * difference of two /proc samples, peak RSS as VmHWM after resetting it at the start
 * (`5` written to /proc/<pid>/clear_refs, Linux ≥ 4.0), so set-up and preparation do not count.
 */
import { writeFileSync } from "node:fs";
import { sampleProcess, type ProcSample } from "./procstat.ts";

export interface MeteredProcess {
  name: string;
  pid: number;
}

export interface ProcessFigures {
  cpuSeconds: number;
  peakRssBytes: number;
  /** False when the peak could not be reset: it then covers the process's whole life. */
  peakSinceStart: boolean;
}

export interface Meter {
  /** Samples every process once more (at the end) and returns each one's figures over the phase. */
  stop(): Map<string, ProcessFigures>;
}

function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Starts the measured phase for these processes. Throws if one of them is gone already. */
export function startMeter(procs: MeteredProcess[]): Meter {
  const reset = new Map(procs.map((p) => [p.name, resetPeak(p.pid)]));
  const before = new Map<string, ProcSample>();
  for (const p of procs) {
    const s = sampleProcess(p.pid);
    if (!s) throw new Error(`${p.name} (pid ${p.pid}) is gone before the measurement began`);
    before.set(p.name, s);
  }
  return {
    stop() {
      const out = new Map<string, ProcessFigures>();
      for (const p of procs) {
        const a = sampleProcess(p.pid);
        if (!a) throw new Error(`${p.name} (pid ${p.pid}) is gone before the measurement ended`);
        const b = before.get(p.name)!;
        out.set(p.name, { cpuSeconds: a.cpuSeconds - b.cpuSeconds, peakRssBytes: a.peakRssBytes, peakSinceStart: !reset.get(p.name) });
      }
      return out;
    },
  };
}
