/** Runs the gangway command as a fresh process (as an auditor would), without blocking the test's event loop. */
import { spawn } from "node:child_process";
import { resolve } from "node:path";

const BIN = resolve(import.meta.dirname, "../../bin/gangway.mjs");

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function gangwayCli(args: string[], o: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  return new Promise((resolveP, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: "warn", ...o.env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`gangway ${args.join(" ")} did not finish within ${(o.timeoutMs ?? 60_000) / 1000} s; stderr: ${stderr}`));
    }, o.timeoutMs ?? 60_000);
    child.once("exit", (code, signal) => {
      clearTimeout(t);
      resolveP({ code, signal, stdout, stderr });
    });
  });
}

/** A long-running gangway command (watch): its output so far, and a SIGINT that waits for its exit. */
export function startGangwayCli(args: string[]): { output: () => string; stderr: () => string; interrupt: () => Promise<CliResult>; pid: number | undefined } {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, GANGWAY_LOG_LEVEL: "warn" } });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<CliResult>((r) => child.once("exit", (code, signal) => r({ code, signal, stdout, stderr })));
  return {
    pid: child.pid,
    output: () => stdout,
    stderr: () => stderr,
    async interrupt() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}
