/** The gangway command as a user runs it: help, bad arguments, exit codes. */
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";

function gangway(...args: string[]) {
  const r = spawnSync(process.execPath, ["bin/gangway.mjs", ...args], { encoding: "utf8", env: { ...process.env, GANGWAY_LOG_LEVEL: "warn" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("gangway CLI", () => {
  it("--help lists every command and exits 0", () => {
    const r = gangway("--help");
    expect(r.code).toBe(0);
    for (const c of ["demo", "up", "agent", "vm", "migrate", "evacuate", "watch", "audit", "stream", "bench"]) expect(r.stdout).toMatch(new RegExp(`^  ${c} `, "m"));
  });

  it("an unknown command or flag says what is wrong and exits 64", () => {
    const r = gangway("frobnicate");
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
    const f = gangway("up", "--bogus");
    expect(f.code).toBe(64);
    expect(f.stderr).toMatch(/Unknown option '--bogus'/);
  });

  it("checks each command's arguments with a readable message", () => {
    expect(gangway("agent").stderr).toMatch(/--host NAME is required/);
    expect(gangway("up", "--port", "99999").stderr).toMatch(/--port must be a TCP port number/);
    expect(gangway("up", "--nats", "not a url").stderr).toMatch(/--nats must be a URL/);
    expect(gangway("audit", "--since", "someday", "--host", "a").stderr).toMatch(/--since must be a time/);
    expect(gangway("vm", "reboot").stderr).toMatch(/unknown vm subcommand "reboot"/);
    expect(gangway("evacuate").code).toBe(64);
  });
});
