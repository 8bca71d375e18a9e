/** The gangway command as a user runs it: help, bad arguments, exit codes. */
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";

function gangway(...args: string[]) {
  return gangwayWith({}, ...args);
}

function gangwayWith(env: Record<string, string>, ...args: string[]) {
  const r = spawnSync(process.execPath, ["bin/gangway.mjs", ...args], { encoding: "utf8", env: { ...process.env, GANGWAY_LOG_LEVEL: "warn", GANGWAY_NATS_URL: "", NATS_URL: "", ...env } });
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

  it("--version and -h work everywhere; a bare gangway prints its usage on stderr and exits 64", () => {
    const v = gangway("--version");
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^gangway \d+\.\d+\.\d+\n$/);
    for (const c of ["migrate", "agent", "watch", "audit", "vm", "evacuate"]) {
      const h = gangway(c, "-h");
      expect(h.code, c).toBe(0);
      expect(h.stdout, c).toMatch(/^usage: gangway /);
    }
    const bare = gangway();
    expect(bare.code).toBe(64);
    expect(bare.stdout).toBe("");
    expect(bare.stderr).toMatch(/^usage: gangway <command>/);
  });

  it("reads NATS_URL like the nats CLI, takes a bare host:port, and exits 2 when no server is there; --live is accepted", () => {
    const r = gangwayWith({ NATS_URL: "127.0.0.1:1" }, "migrate", "--live", "vm1", "--to", "hostB");
    expect(r.stderr).toMatch(/cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/);
    expect(r.code).toBe(2);
    const flag = gangway("watch", "--nats", "localhost:1");
    expect(flag.stderr).toMatch(/cannot connect to NATS at nats:\/\/localhost:1/);
    expect(flag.code).toBe(2);
    expect(gangway("watch", "--nats", "http://x:1").stderr).toMatch(/--nats must be a URL like nats:\/\/127\.0\.0\.1:4222 \(or host:port\)/);
  });

  it("takes a virsh user's migrate line, and says what is wrong with the flags virsh also refuses", () => {
    const virsh = gangwayWith({ NATS_URL: "127.0.0.1:1" }, "migrate", "vm1", "--live", "--postcopy", "--postcopy-after-precopy", "--timeout", "300", "--timeout-postcopy", "--bandwidth", "100", "--verbose", "--abort-on-error", "--completion-timeout-per-gib", "60");
    expect(virsh.stderr).toMatch(/cannot connect to NATS/); // every flag was taken: it got as far as the server
    expect(virsh.code).toBe(2);
    const refused = (args: string[], why: RegExp) => {
      const r = gangway("migrate", "vm1", ...args);
      expect(r.code, args.join(" ")).toBe(64);
      expect(r.stderr, args.join(" ")).toMatch(why);
    };
    refused(["--timeout", "300", "--timeout-postcopy"], /--timeout-postcopy needs --postcopy/);
    refused(["--timeout-suspend"], /--timeout-suspend needs --timeout S/);
    refused(["--timeout", "300", "--timeout-suspend", "--timeout-postcopy", "--postcopy"], /exclude each other/);
    refused(["--timeout", "0"], /--timeout must be a positive number/);
    refused(["--completion-timeout-per-gib", "1.5"], /whole number of seconds/);
    expect(gangway("migrate", "-h").stdout).toMatch(/--bandwidth MIBPS +cap the migration stream at MIBPS MiB\/s/);
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
