/**
 * docker-compose.yml, checked as the compose tooling would and then some (no Docker engine
 * runs here): parsed with a small parser for the YAML subset compose files use (block
 * mappings and sequences, flow collections, anchors, aliases and `<<` merges, quoted and
 * plain scalars, comments), then checked: three NATS services forming one JetStream
 * cluster (their config's routes name all three), the functions and the host agents
 * pointed at the cluster, every image built or pulled, every volume declared or present.
 */
import { describe, expect, it } from "vitest";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { resolve } from "node:path";

type Yaml = string | number | boolean | null | Yaml[] | { [k: string]: Yaml };
type YamlMap = { [k: string]: Yaml };

// --- a parser for the YAML subset compose files use ---------------------------------

interface Line {
  indent: number;
  text: string;
  no: number;
}

class YamlError extends Error {
  constructor(message: string, line?: Line) {
    super(line ? `line ${line.no}: ${message}` : message);
    this.name = "YamlError";
  }
}

/** Strips a comment: `#` at the start or after whitespace, outside quotes. */
function stripComment(s: string): string {
  let quote: string | undefined;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quote) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(s[i - 1]!))) return s.slice(0, i);
  }
  return s;
}

export function parseYaml(text: string): Yaml {
  const lines: Line[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    if (/\t/.test(raw.match(/^\s*/)![0])) throw new YamlError("tab in indentation", { indent: 0, text: raw, no: i + 1 });
    const s = stripComment(raw).trimEnd();
    if (s.trim() === "" || s.trim() === "---") return;
    lines.push({ indent: s.length - s.trimStart().length, text: s.trim(), no: i + 1 });
  });
  const anchors = new Map<string, Yaml>();
  let pos = 0;

  const scalar = (s: string, line: Line): Yaml => {
    if (s.startsWith('"')) {
      if (!s.endsWith('"') || s.length < 2) throw new YamlError(`unterminated string ${s}`, line);
      return JSON.parse(s) as string;
    }
    if (s.startsWith("'")) {
      if (!s.endsWith("'") || s.length < 2) throw new YamlError(`unterminated string ${s}`, line);
      return s.slice(1, -1).replace(/''/g, "'");
    }
    if (s === "" || s === "~" || s === "null") return null;
    if (s === "true") return true;
    if (s === "false") return false;
    if (/^-?[0-9]+(\.[0-9]+)?$/.test(s)) return Number(s);
    if (/^[&*!|>%@`]/.test(s)) throw new YamlError(`unsupported scalar ${s}`, line);
    return s;
  };

  /** A flow collection ([...] or {...}) on one line; returns the value and where it ended. */
  const flow = (s: string, at: number, line: Line): [Yaml, number] => {
    const skip = () => {
      while (at < s.length && s[at] === " ") at++;
    };
    const item = (stop: string): Yaml => {
      skip();
      if (s[at] === "[" || s[at] === "{") {
        const [v, end] = flow(s, at, line);
        at = end;
        return v;
      }
      let start = at;
      if (s[at] === '"' || s[at] === "'") {
        const q = s[at]!;
        at++;
        while (at < s.length && s[at] !== q) at += s[at] === "\\" && q === '"' ? 2 : 1;
        at++;
        return scalar(s.slice(start, at), line);
      }
      while (at < s.length && !stop.includes(s[at]!) && !(s[at] === ":" && (s[at + 1] === " " || s[at + 1] === "," || s[at + 1] === "}"))) at++;
      const word = s.slice(start, at).trim();
      if (word.startsWith("*")) {
        if (!anchors.has(word.slice(1))) throw new YamlError(`unknown alias ${word}`, line);
        return anchors.get(word.slice(1))!;
      }
      start = at;
      return scalar(word, line);
    };
    if (s[at] === "[") {
      at++;
      const out: Yaml[] = [];
      skip();
      if (s[at] === "]") return [out, at + 1];
      for (;;) {
        out.push(item(",]"));
        skip();
        if (s[at] === ",") at++;
        else if (s[at] === "]") return [out, at + 1];
        else throw new YamlError(`expected , or ] in ${s}`, line);
      }
    }
    at++;
    const out: YamlMap = {};
    skip();
    if (s[at] === "}") return [out, at + 1];
    for (;;) {
      const k = item(",}:");
      skip();
      if (s[at] !== ":") throw new YamlError(`expected : in ${s}`, line);
      at++;
      out[String(k)] = item(",}");
      skip();
      if (s[at] === ",") at++;
      else if (s[at] === "}") return [out, at + 1];
      else throw new YamlError(`expected , or } in ${s}`, line);
    }
  };

  /** A value written after `key:` or `- ` on the same line, or the block below it. */
  const inlineValue = (rest: string, line: Line, parentIndent: number): Yaml => {
    let anchor: string | undefined;
    const m = rest.match(/^&([A-Za-z0-9_-]+)\s*(.*)$/);
    if (m) {
      anchor = m[1];
      rest = m[2]!;
    }
    let value: Yaml;
    if (rest === "") {
      const next = lines[pos];
      // A nested block: deeper, or a sequence at the key's own indent.
      if (next && (next.indent > parentIndent || (next.indent === parentIndent && next.text.startsWith("- ")))) value = block(next.indent);
      else value = null;
    } else if (rest.startsWith("*")) {
      const name = rest.slice(1);
      if (!anchors.has(name)) throw new YamlError(`unknown alias *${name}`, line);
      value = anchors.get(name)!;
    } else if (rest.startsWith("[") || rest.startsWith("{")) {
      const [v, end] = flow(rest, 0, line);
      if (rest.slice(end).trim() !== "") throw new YamlError(`text after a flow collection: ${rest.slice(end)}`, line);
      value = v;
    } else if (rest === "|" || rest === ">" || rest.startsWith("|") || rest.startsWith(">")) {
      throw new YamlError("block scalars are not supported", line);
    } else value = scalar(rest, line);
    if (anchor) anchors.set(anchor, value);
    return value;
  };

  const block = (indent: number): Yaml => {
    const first = lines[pos]!;
    if (first.text === "-" || first.text.startsWith("- ")) {
      const out: Yaml[] = [];
      while (pos < lines.length && lines[pos]!.indent === indent && (lines[pos]!.text === "-" || lines[pos]!.text.startsWith("- "))) {
        const line = lines[pos++]!;
        const rest = line.text.slice(1).trim();
        if (/^[^"'[{][^:]*:( |$)/.test(rest)) throw new YamlError("mappings inside block sequences are not supported", line);
        out.push(inlineValue(rest, line, indent));
      }
      return out;
    }
    const out: YamlMap = {};
    const merges: YamlMap[] = [];
    while (pos < lines.length && lines[pos]!.indent === indent) {
      const line = lines[pos++]!;
      const m = line.text.match(/^("[^"]*"|'[^']*'|[^:\s][^:]*?)\s*:(?:\s+(.*))?$/);
      if (!m) throw new YamlError(`expected "key: value", got ${line.text}`, line);
      const key = String(scalar(m[1]!, line));
      const value = inlineValue((m[2] ?? "").trim(), line, indent);
      if (key === "<<") {
        for (const v of Array.isArray(value) ? value : [value]) {
          if (typeof v !== "object" || v === null || Array.isArray(v)) throw new YamlError("<< merges a mapping", line);
          merges.push(v);
        }
      } else {
        if (key in out) throw new YamlError(`duplicate key ${key}`, line);
        out[key] = value;
      }
    }
    if (pos < lines.length && lines[pos]!.indent > indent) throw new YamlError("bad indentation", lines[pos]);
    // Merge keys: explicit keys win, earlier merges win over later ones.
    for (const m of merges) for (const [k, v] of Object.entries(m)) if (!(k in out)) out[k] = v;
    return out;
  };

  if (lines.length === 0) return null;
  const doc = block(lines[0]!.indent);
  if (pos < lines.length) throw new YamlError("text after the document", lines[pos]);
  return doc;
}

// --- the checks -----------------------------------------------------------------------

const ROOT = resolve(import.meta.dirname, "..");
const isMap = (v: Yaml | undefined): v is YamlMap => typeof v === "object" && v !== null && !Array.isArray(v);
const asMap = (v: Yaml | undefined, what: string): YamlMap => {
  if (!isMap(v)) throw new Error(`${what} must be a mapping, got ${JSON.stringify(v)}`);
  return v;
};
const asList = (v: Yaml | undefined): Yaml[] => (Array.isArray(v) ? v : v === undefined || v === null ? [] : [v]);
/** Environment as a map, from compose's map or "K=V" list form. */
const envOf = (svc: YamlMap): Record<string, string> => {
  const e = svc.environment;
  if (Array.isArray(e)) return Object.fromEntries(e.map((x) => String(x).split(/=(.*)/s).slice(0, 2) as [string, string]));
  return Object.fromEntries(Object.entries(isMap(e) ? e : {}).map(([k, v]) => [k, v === null ? "" : String(v)]));
};
/** Short volume syntax "source:target[:mode]". */
const volumesOf = (svc: YamlMap) =>
  asList(svc.volumes).map((v) => {
    const [source, target, mode] = String(v).split(":");
    return { source: source!, target: target ?? source!, mode };
  });
const dependsOn = (svc: YamlMap): string[] => (Array.isArray(svc.depends_on) ? svc.depends_on.map(String) : Object.keys(isMap(svc.depends_on) ? svc.depends_on : {}));

/** The parts of a nats-server config the cluster depends on. */
function natsConf(text: string) {
  const body = text.replace(/#.*$/gm, "");
  const cluster = body.match(/cluster\s*\{([\s\S]*?)\n\}/)?.[1] ?? "";
  const routes = [...(cluster.match(/routes\s*[:=]?\s*\[([\s\S]*?)\]/)?.[1] ?? "").matchAll(/nats-route:\/\/([A-Za-z0-9_.-]+):([0-9]+)/g)].map((m) => ({ host: m[1]!, port: Number(m[2]) }));
  const jetstream = body.match(/jetstream\s*\{([\s\S]*?)\}/)?.[1] ?? "";
  return {
    serverName: body.match(/^\s*server_name\s*[:=]\s*(\S+)/m)?.[1],
    clientPort: Number(body.match(/^\s*listen\s*[:=]\s*\S*?:([0-9]+)/m)?.[1]),
    httpPort: Number(body.match(/^\s*http\s*[:=]\s*\S*?:([0-9]+)/m)?.[1]),
    clusterName: cluster.match(/name\s*[:=]\s*(\S+)/)?.[1],
    clusterPort: Number(cluster.match(/listen\s*[:=]\s*\S*?:([0-9]+)/)?.[1]),
    routes,
    storeDir: jetstream.match(/store_dir\s*[:=]\s*(\S+)/)?.[1],
  };
}

function gangwayHelp(command: string): string {
  const r = spawnSync(process.execPath, [resolve(ROOT, "bin/gangway.mjs"), command, "--help"], { encoding: "utf8" });
  expect(r.status, `gangway ${command} --help: ${r.stderr}`).toBe(0);
  return r.stdout;
}

describe("the YAML subset parser", () => {
  it("reads block and flow collections, anchors, aliases, merges, quotes and comments", () => {
    const doc = parseYaml(`
x-base: &base          # an anchor on a mapping
  image: "img:1"
  command: ["a", 'b c', 3]
s:
  one:
    <<: *base
    command: [override]
    env: { A: x, B: "y # not a comment", C: { d: true } }
    list:
      - ./a:/b:ro
      - "q: x"
  two: *base
  url: nats://h:4222,nats://g:4222
  empty:
`);
    expect(doc).toEqual({
      "x-base": { image: "img:1", command: ["a", "b c", 3] },
      s: {
        one: { command: ["override"], env: { A: "x", B: "y # not a comment", C: { d: true } }, list: ["./a:/b:ro", "q: x"], image: "img:1" },
        two: { image: "img:1", command: ["a", "b c", 3] },
        url: "nats://h:4222,nats://g:4222",
        empty: null,
      },
    });
    expect(() => parseYaml("a: *nope")).toThrow(/unknown alias/);
    expect(() => parseYaml("a: 1\na: 2")).toThrow(/duplicate key a/);
    expect(() => parseYaml("a:\n  b: 1\n    c: 2")).toThrow(/line 3/);
  });
});

describe("docker-compose.yml", () => {
  const compose = asMap(parseYaml(readFileSync(resolve(ROOT, "docker-compose.yml"), "utf8")), "the compose file");
  const services = asMap(compose.services, "services");
  const declaredVolumes = asMap(compose.volumes ?? {}, "volumes");
  const svc = (name: string) => asMap(services[name], `service ${name}`);
  const natsServices = Object.keys(services).filter((n) => String(svc(n).image ?? "").startsWith("nats:"));
  const commandOf = (name: string) => asList(svc(name).command).map(String);
  const gangwayServices = Object.keys(services).filter((n) => !natsServices.includes(n));

  it("runs three NATS servers that form one JetStream cluster: the config's routes name all three", () => {
    expect(natsServices.sort()).toHaveLength(3);
    const confs = new Set<string>();
    const nodeNames = new Set<string>();
    for (const name of natsServices) {
      const s = svc(name);
      expect(String(s.image), `${name}'s image is pinned`).toMatch(/^nats:[0-9]/);
      const cmd = commandOf(name);
      const confPath = cmd[cmd.indexOf("-c") + 1];
      expect(cmd.indexOf("-c"), `${name} runs nats-server with -c CONFIG`).toBeGreaterThanOrEqual(0);
      const mount = volumesOf(s).find((v) => v.target === confPath);
      expect(mount, `${name} mounts its config at ${confPath}`).toBeDefined();
      expect(existsSync(resolve(ROOT, mount!.source)), `${mount!.source} exists`).toBe(true);
      confs.add(mount!.source);
      const conf = natsConf(readFileSync(resolve(ROOT, mount!.source), "utf8"));
      // server_name comes from the environment, one per node.
      const env = envOf(s);
      const serverName = conf.serverName?.startsWith("$") ? env[conf.serverName.slice(1)] : conf.serverName;
      expect(serverName, `${name}'s server_name`).toBeTruthy();
      nodeNames.add(serverName!);
      // The routes name every NATS service of this file, at the cluster port, and nothing else.
      expect(conf.clusterName).toBeTruthy();
      // And nats-server itself accepts it, as this node would read it.
      const t = spawnSync("nats-server", ["-t", "-c", resolve(ROOT, mount!.source)], { encoding: "utf8", env: { ...process.env, ...env } });
      expect(t.status, `nats-server -t: ${t.stderr}`).toBe(0);
      expect(conf.routes.map((r) => r.host).sort()).toEqual([...natsServices].sort());
      for (const r of conf.routes) expect(r.port).toBe(conf.clusterPort);
      // JetStream stores on a named volume of this service, declared at the top level.
      expect(conf.storeDir).toBeTruthy();
      const data = volumesOf(s).find((v) => conf.storeDir!.startsWith(v.target.replace(/\/?$/, "/")));
      expect(data, `${name} has a volume under ${conf.storeDir}`).toBeDefined();
      expect(declaredVolumes, `volume ${data!.source} is declared`).toHaveProperty(data!.source);
      // The healthcheck asks the monitoring port the config opens.
      const check = asList(asMap(s.healthcheck, `${name} healthcheck`).test).map(String).join(" ");
      expect(check).toContain(`:${conf.httpPort}/healthz`);
    }
    expect(confs.size, "every node runs the same cluster config").toBe(1);
    expect(nodeNames.size, "each node has its own server_name").toBe(3);
    const dataVolumes = natsServices.map((n) => volumesOf(svc(n)).find((v) => !v.source.startsWith(".") && !v.source.startsWith("/"))!.source);
    expect(new Set(dataVolumes).size, "each node has its own data volume").toBe(3);
  });

  it("points the functions and every host agent at the cluster, with flags the commands take", () => {
    const conf = natsConf(readFileSync(resolve(ROOT, "infra/compose/nats-cluster.conf"), "utf8"));
    const clusterUrls = natsServices.map((n) => `nats://${n}:${conf.clientPort}`).sort();
    const functions = gangwayServices.filter((n) => commandOf(n)[0] === "up");
    const agents = gangwayServices.filter((n) => commandOf(n)[0] === "agent");
    expect(functions).toHaveLength(1);
    expect(agents.length).toBeGreaterThanOrEqual(2);
    const helps = new Map<string, string>();
    for (const name of [...functions, ...agents]) {
      const s = svc(name);
      const cmd = commandOf(name);
      // The URL list names the three nodes (so a client survives one node's loss).
      const url = envOf(s).GANGWAY_NATS_URL ?? cmd[cmd.indexOf("--nats") + 1];
      expect(url, `${name} is given the cluster's URLs`).toBeTruthy();
      expect(url!.split(",").map((u) => u.trim()).sort()).toEqual(clusterUrls);
      // Every flag in the command is one the gangway command takes.
      const help = helps.get(cmd[0]!) ?? helps.set(cmd[0]!, gangwayHelp(cmd[0]!)).get(cmd[0]!)!;
      for (const flag of cmd.filter((a) => a.startsWith("--"))) expect(help, `gangway ${cmd[0]} takes ${flag}`).toContain(flag);
      for (const dep of dependsOn(s)) expect(Object.keys(services), `${name} depends on ${dep}`).toContain(dep);
    }
    for (const dep of natsServices) expect(dependsOn(svc(functions[0]!))).toContain(dep);
    // Replicated streams need the cluster: the functions provision with 3 replicas.
    const upCmd = commandOf(functions[0]!);
    expect(Number(upCmd[upCmd.indexOf("--replicas") + 1])).toBe(natsServices.length);
    const hosts = agents.map((n) => commandOf(n)[commandOf(n).indexOf("--host") + 1]);
    expect(new Set(hosts).size, "each agent is its own host").toBe(agents.length);
    for (const h of hosts) expect(h).toMatch(/^[A-Za-z0-9_-]{1,128}$/);
    for (const a of agents) expect(asList(svc(a).devices).map(String)).toContain("/dev/kvm:/dev/kvm");
  });

  it("builds or pulls every image, and declares or ships every volume", () => {
    const built = new Map<string, string>();
    for (const [name, raw] of Object.entries(services)) {
      const s = asMap(raw, name);
      if (s.build === undefined) continue;
      const ctx = typeof s.build === "string" ? s.build : String(asMap(s.build, `${name} build`).context ?? ".");
      const dockerfile = typeof s.build === "string" ? "Dockerfile" : String(asMap(s.build, `${name} build`).dockerfile ?? "Dockerfile");
      expect(existsSync(resolve(ROOT, ctx, dockerfile)), `${name}: ${ctx}/${dockerfile} exists`).toBe(true);
      if (s.image) built.set(String(s.image), name);
    }
    const dockerfile = readFileSync(resolve(ROOT, "Dockerfile"), "utf8");
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "bin\/gangway\.mjs"\]/m); // commands are gangway's arguments
    for (const [name, raw] of Object.entries(services)) {
      const s = asMap(raw, name);
      expect(s.image !== undefined || s.build !== undefined, `${name} has an image or a build`).toBe(true);
      if (s.build === undefined && !String(s.image).startsWith("nats:")) expect([...built.keys()], `${name}'s image ${s.image} is built by a service`).toContain(String(s.image));
      for (const v of volumesOf(s)) {
        if (v.source.startsWith("./") || v.source === ".") expect(existsSync(resolve(ROOT, v.source)), `${name}: ${v.source} exists`).toBe(true);
        else if (!v.source.startsWith("/")) expect(declaredVolumes, `${name}: volume ${v.source} is declared`).toHaveProperty(v.source);
      }
    }
    // Declared volumes are all used.
    const used = new Set(Object.values(services).flatMap((s) => volumesOf(asMap(s, "service")).map((v) => v.source)));
    for (const v of Object.keys(declaredVolumes)) expect(used, `volume ${v} is used`).toContain(v);
  });
});

describe("docker-compose.secure.yml (authentication and TLS, over docker-compose.yml)", () => {
  const baseDoc = asMap(parseYaml(readFileSync(resolve(ROOT, "docker-compose.yml"), "utf8")), "the compose file");
  const base = asMap(baseDoc.services, "services");
  const override = asMap(parseYaml(readFileSync(resolve(ROOT, "docker-compose.secure.yml"), "utf8")), "the override");
  const overrideServices = asMap(override.services, "override services");
  /** A service as compose merges it: keys replaced, environment merged, volumes merged by target. */
  const merged = (name: string) => {
    const b = asMap(base[name], `service ${name}`);
    const o = asMap(overrideServices[name], `override of ${name}`);
    const volumes = new Map(volumesOf(b).map((v) => [v.target, v]));
    for (const v of volumesOf(o)) volumes.set(v.target, v);
    return { svc: { ...b, ...o } as YamlMap, env: { ...envOf(b), ...envOf(o) }, volumes: [...volumes.values()], command: asList(o.command ?? b.command).map(String) };
  };
  const natsNames = Object.keys(base).filter((n) => String(asMap(base[n], n).image ?? "").startsWith("nats:"));
  const gangwayNames = Object.keys(base).filter((n) => !natsNames.includes(n));
  const agentHosts = gangwayNames.map((n) => asList(asMap(base[n], n).command).map(String)).filter((c) => c[0] === "agent").map((c) => c[c.indexOf("--host") + 1]!);

  it("overrides only services of docker-compose.yml, every one of them, and declares the same volumes", () => {
    expect(Object.keys(overrideServices).sort()).toEqual(Object.keys(base).sort());
    const baseVolumes = Object.keys(asMap(baseDoc.volumes ?? {}, "volumes"));
    for (const v of Object.keys(asMap(override.volumes ?? {}, "override volumes"))) expect(baseVolumes).toContain(v);
  });

  it("every NATS node runs the secure config, which nats-server accepts with secrets made by scripts/compose-secrets.sh", async () => {
    const { mkdtemp, mkdir, copyFile, symlink, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const tmp = await mkdtemp(join(tmpdir(), "gangway-compose-"));
    try {
      const secrets = join(tmp, "secrets");
      const made = spawnSync("bash", [resolve(ROOT, "scripts/compose-secrets.sh"), secrets, ...agentHosts], { encoding: "utf8" });
      expect(made.status, made.stderr).toBe(0);
      for (const name of natsNames) {
        const m = merged(name);
        const confPath = m.command[m.command.indexOf("-c") + 1]!;
        const conf = m.volumes.find((v) => v.target === confPath)!;
        expect(conf.source).toBe("./infra/compose/nats-cluster-secure.conf");
        const text = readFileSync(resolve(ROOT, conf.source), "utf8");
        // The auth include is relative to the config's directory: the secrets are mounted there.
        const include = /^\s*include\s+"?([^"\s]+)"?/m.exec(text)![1]!;
        const secretsMount = m.volumes.find((v) => v.source === "./secrets")!;
        expect(secretsMount, `${name} mounts ./secrets`).toBeDefined();
        expect(secretsMount.mode).toBe("ro");
        expect(resolve("/etc/nats", include).startsWith(secretsMount.target + "/")).toBe(true);
        expect(resolve(confPath, "..")).toBe("/etc/nats");
        // TLS on clients and routes, with files from the mounted secrets.
        expect(text).toMatch(/^tls\s*\{/m);
        expect(text).toMatch(/cluster\s*\{[\s\S]*tls\s*\{[\s\S]*verify:\s*true/);
        for (const k of ["NATS_TLS_CERT", "NATS_TLS_KEY", "NATS_TLS_CA"]) expect(m.env[k]!.startsWith(secretsMount.target + "/"), `${name} ${k}`).toBe(true);
        // Its own data volume still.
        expect(m.volumes.some((v) => v.target === "/data" && v.source === name)).toBe(true);
        // nats-server -t, laid out as the container sees it (config dir with secrets/ in it).
        const etc = join(tmp, `etc-${name}`);
        await mkdir(etc);
        await copyFile(resolve(ROOT, conf.source), join(etc, "nats.conf"));
        await symlink(secrets, join(etc, include.split("/")[0]!));
        const env = Object.fromEntries(Object.entries(m.env).map(([k, v]) => [k, v.replace(secretsMount.target, secrets)]));
        const t = spawnSync("nats-server", ["-t", "-c", join(etc, "nats.conf")], { encoding: "utf8", env: { ...process.env, ...env } });
        expect(t.status, `nats-server -t: ${t.stderr}`).toBe(0);
      }
      // Every gangway process authenticates with its own seed and trusts the CA.
      const files = new Set(readdirSync(secrets));
      for (const name of gangwayNames) {
        const m = merged(name);
        const arg = (flag: string) => m.command[m.command.indexOf(flag) + 1]!;
        const mount = m.volumes.find((v) => v.source === "./secrets")!;
        expect(mount, `${name} mounts ./secrets`).toBeDefined();
        expect(mount.mode).toBe("ro");
        const inSecrets = (p: string) => (expect(p.startsWith(mount.target + "/"), `${p} is in ${mount.target}`).toBe(true), p.slice(mount.target.length + 1));
        const seed = inSecrets(arg("--nkey"));
        expect(seed).toBe(m.command[0] === "agent" ? `agent-${arg("--host")}.nk` : "functions.nk");
        expect(files.has(seed), `${seed} is made by the script`).toBe(true);
        expect(files.has(inSecrets(arg("--tls-ca")))).toBe(true);
        const help = gangwayHelp(m.command[0]!);
        for (const flag of m.command.filter((a) => a.startsWith("--"))) expect(help, `gangway ${m.command[0]} takes ${flag}`).toContain(flag);
        // The agents keep what docker-compose.yml gave them (the RAM files' mount).
        if (m.command[0] === "agent") expect(m.volumes.some((v) => v.target === "/dev/shm")).toBe(true);
      }
      expect(readFileSync(resolve(ROOT, ".gitignore"), "utf8")).toMatch(/^secrets\/$/m);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 60_000);
});
