/**
 * `gangway auth HOST...`: the NATS identities of a cluster. Writes an authorization
 * include for nats-server (one nkey user per host agent, one for the functions, one for
 * the operator's CLI, each with the allow-lists of infra/nats/auth.ts) and one seed file
 * per identity (mode 0600). Seeds already in the directory are kept, so adding a host
 * does not rotate the others' keys; --rotate makes new ones.
 */
import { createUser } from "@nats-io/nkeys";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { allFunctions } from "../../functions/index.ts";
import { durableName } from "../../infra/runtime/functionHost.ts";
import {
  agentPermissions, functionsPermissions, IdentityRole, operatorPermissions, renderAuthorization, type IdentityPlan, type PermissionContext,
} from "../../infra/nats/auth.ts";
import { readNkeySeed } from "../../infra/nats/connect.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { UsageError } from "../errors.ts";

const help = `usage: gangway auth HOST... --out DIR [--rotate] [--json]

Writes the NATS identities of a gangway cluster into DIR:
  DIR/auth.conf           include it in nats-server's config (include "auth.conf")
  DIR/agent-HOST.nk       seed of HOST's agent:   gangway agent --host HOST --nkey DIR/agent-HOST.nk
  DIR/functions.nk        seed of the functions:  gangway up --nats URL --nkey DIR/functions.nk
  DIR/operator.nk         seed of the operator:   gangway migrate … --nkey DIR/operator.nk
Each agent may only take its own host's commands and answer its own services; see the
README's "Security" section for what the permissions cannot confine.

  --out DIR         where to write (created, mode 0700)
  --rotate          make new keys even where seed files exist
  --json            print the identities (names, roles, public keys, files; never seeds)`;

export interface AuthOptions {
  hosts: string[];
  outDir: string;
  /** Make new keys even where seed files exist. @default false */
  rotate?: boolean;
}

export interface AuthIdentity {
  name: string;
  role: IdentityRole;
  host?: string;
  publicKey: string;
  seedFile: string;
}

export interface AuthResult {
  config: string;
  identities: AuthIdentity[];
}

const HOST = /^[A-Za-z0-9_-]{1,128}$/;

/** Loads the identity's seed from its file, or makes a new one (mode 0600). */
async function identityKey(seedFile: string, rotate: boolean): Promise<string> {
  if (!rotate) {
    const existing = await readNkeySeed(seedFile).catch(() => undefined);
    if (existing) return existing.publicKey;
  }
  const kp = createUser();
  // Created with mode 0600 and chmod-ed again: an existing file keeps its old mode on write.
  await writeFile(seedFile, new TextDecoder().decode(kp.getSeed()) + "\n", { mode: 0o600 });
  await chmod(seedFile, 0o600);
  return kp.getPublicKey();
}

export async function writeAuth(o: AuthOptions): Promise<AuthResult> {
  const hosts = [...new Set(o.hosts)];
  if (hosts.length === 0) throw new UsageError("name at least one host");
  for (const h of hosts) if (!HOST.test(h)) throw new UsageError(`host must be letters, digits, _ or - (a NATS subject token), got "${h}"`);
  const dir = resolve(o.outDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // The functions' durable consumers, by id: no agent or operator may pull from them. The
  // dedup index is not used to list ids, so a stub stands in for it.
  const stubIndex = { sync: async () => undefined, get: () => undefined };
  const ctx: PermissionContext = { hosts, functionDurables: allFunctions({ dedupIndex: stubIndex }).map((f) => durableName(f.id)) };

  const plans: IdentityPlan[] = [];
  const identities: AuthIdentity[] = [];
  const add = async (name: string, role: IdentityRole, host: string | undefined, perms: (publicKey: string) => IdentityPlan["permissions"]) => {
    const seedFile = join(dir, `${name}.nk`);
    const publicKey = await identityKey(seedFile, Boolean(o.rotate));
    plans.push({ name, role, ...(host ? { host } : {}), publicKey, permissions: perms(publicKey) });
    identities.push({ name, role, ...(host ? { host } : {}), publicKey, seedFile });
  };
  for (const h of hosts) await add(`agent-${h}`, IdentityRole.agent, h, (pk) => agentPermissions(h, pk, ctx));
  await add("functions", IdentityRole.functions, undefined, (pk) => functionsPermissions(pk));
  await add("operator", IdentityRole.operator, undefined, (pk) => operatorPermissions(pk, ctx));

  const config = join(dir, "auth.conf");
  // Public keys and permissions only; still not for everyone's eyes (it maps the cluster).
  await writeFile(config, renderAuthorization(plans), { mode: 0o640 });
  return { config, identities };
}

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { out: { type: "string" }, rotate: { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  if (!values.out) throw new UsageError("--out DIR is required");
  const r = await writeAuth({ hosts: positionals, outDir: values.out, rotate: Boolean(values.rotate) });
  if (values.json) return printJson(r);
  process.stdout.write(`wrote ${r.config} and ${r.identities.length} seed files:\n${r.identities.map((i) => `  ${i.seedFile}  ${i.publicKey}`).join("\n")}\n`);
}
