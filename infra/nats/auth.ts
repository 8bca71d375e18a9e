/**
 * Who may say what on the bus. One nkey identity per host agent, one for the functions,
 * one for the operator's CLI, each with publish/subscribe allow-lists derived from the
 * subjects in schemas/ and the JetStream API calls each role makes (nats-server 2.9).
 *
 * What NATS subject permissions can and cannot confine (see README "Security"):
 * - Everything named by host is confined to that host: an agent receives only its own
 *   commands (its durable consumer is created with the filter gw.cmd.agent.<host>.>, and
 *   the create subject carries that filter, so it cannot make one for another host), answers
 *   only its own liveness/console requests, publishes only its own inventory and scans, and
 *   cannot publish any command at all.
 * - Replies go to per-identity inboxes (_INBOX.<public key>.>), so no identity can read
 *   another's request replies or JetStream deliveries.
 * - Not confinable with static permissions: data keyed by migration id (manifests, packs,
 *   hash look-ups and resolutions, commit facts). Migration ids are made at run time, so an
 *   agent may read any migration's manifests and publish facts about any migration id, and
 *   the page packs live in one shared object store (gw-packs) that any agent can read whole.
 *   Confining those needs per-migration credentials (an auth callout, nats-server ≥ 2.10,
 *   or accounts per tenant), which 2.9.10 cannot do. What keeps tenants apart there is the
 *   keyed content addressing (adapters/dataplane/contentKey.ts), not the bus.
 */
import { agentConsole, agentManifest, agentStatus } from "../../schemas/agentService.ts";
import { dirtyRound, migrationCancelled, migrationFailed, migrationProgress, migrationSucceeded } from "../../schemas/index.ts";
import { EVENTS_STREAM, PACK_STORE, RUNS_BUCKET, STATE_BUCKET, DEDUP_BUCKET } from "./resources.ts";

const METRICS_FACTS = [migrationProgress, dirtyRound, migrationSucceeded, migrationFailed, migrationCancelled];

export const IdentityRole = {
  agent: "agent",
  functions: "functions",
  operator: "operator",
} as const;
export type IdentityRole = (typeof IdentityRole)[keyof typeof IdentityRole];

/** Allow and deny lists of one direction; deny wins over allow (nats-server semantics). */
export interface SubjectRules {
  allow: string[];
  /** @default [] */
  deny?: string[];
}

export interface Permissions {
  publish: SubjectRules;
  subscribe: SubjectRules;
  /** May reply to the requests it receives (request-reply services). @default false */
  allowResponses: boolean;
}

export interface IdentityPlan {
  /** "agent-<host>", "functions" or "operator": also the seed file's base name. */
  name: string;
  role: IdentityRole;
  host?: string;
  /** The nkey user's public key (U…). */
  publicKey: string;
  permissions: Permissions;
}

/**
 * The inbox prefix of an identity: its public key under _INBOX, so replies to one identity
 * never match another's subscribe permission. Clients derive it from their own seed.
 */
export const inboxPrefixFor = (publicKey: string): string => `_INBOX.${publicKey}`;

const OBJ_STREAM = `OBJ_${PACK_STORE}`;
const API = "$JS.API";

export interface PermissionContext {
  /** Every host of the cluster (to deny an agent the other agents' durables). */
  hosts: readonly string[];
  /** The durable consumers of the functions (fn-<id>), which no agent may pull from. */
  functionDurables: readonly string[];
}

export const agentDurable = (host: string): string => `agent-${host}`;

/**
 * A host agent: its own commands and services, the events it reports, the data plane
 * (manifests, packs, hash look-ups) of any migration (see the module comment for why).
 */
export function agentPermissions(host: string, publicKey: string, ctx: PermissionContext): Permissions {
  const own = agentDurable(host);
  const others = [...ctx.hosts.filter((h) => h !== host).map(agentDurable), ...ctx.functionDurables];
  // Consumers this agent must never pull from, delete or pre-create under their name (the
  // allow-list admits any ordered-consumer name): the other agents' and the functions'.
  const foreignConsumers = others.flatMap((d) => [
    `${API}.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.${d}`,
    `${API}.CONSUMER.DELETE.${EVENTS_STREAM}.${d}`,
    `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.${d}.>`,
  ]);
  return {
    publish: {
      allow: [
        // Facts this host reports (schemas/host.ts, scan.ts): only under its own name.
        `gw.host.${host}.inventory`,
        `gw.host.${host}.heartbeat`,
        `gw.scan.${host}.*.>`,
        // Facts about migrations it plays in (migration.ts, commit.ts, dirty.ts, page.ts).
        "gw.migration.*.started",
        "gw.migration.*.progress",
        "gw.migration.*.switchover",
        "gw.commit.*.ready",
        "gw.commit.*.postcopy-ready",
        "gw.commit.*.resumed",
        "gw.commit.*.abort",
        "gw.dirty.*.round",
        "gw.page.*.requested",
        "gw.page.*.served",
        "gw.page.*.missing",
        // Data plane (manifest.ts, hash.ts).
        "gw.manifest.*.*.>",
        "gw.pack.*.stored",
        "gw.pack.*.corrupt",
        "gw.hash.*.lookup.*",
        // Dead letters of what its readers refused (a migration's malformed or foreign messages).
        "gw.dlq.*",
        // Liveness of the peer host during a migration, and how far its rebuild got.
        agentStatus.filter,
        agentManifest.filter,
        // JetStream: account info, the two streams' info.
        `${API}.INFO`,
        `${API}.STREAM.INFO.${EVENTS_STREAM}`,
        `${API}.STREAM.INFO.${OBJ_STREAM}`,
        // Its command consumer: created with its own filter only, read, pulled, acked.
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.${own}.gw.cmd.agent.${host}.>`,
        `${API}.CONSUMER.INFO.${EVENTS_STREAM}.${own}`,
        `${API}.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.${own}`,
        `$JS.ACK.${EVENTS_STREAM}.${own}.>`,
        // Ordered (ephemeral, random-named) readers of manifests and pack announcements (stored
        // and corrupt); the filter is part of the create subject, so only these kinds can be made.
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.*.gw.manifest.*.*.>`,
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.*.gw.pack.*.*`,
        // The scan-content follower: which keys each VM's latest scan holds (content prefetch).
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.*.gw.scan.*.*.batch`,
        // A restarted agent asks whether a destination already runs a VM it adopted mid-migration.
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.*.gw.commit.*.resumed`,
        `${API}.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.*`,
        `${API}.CONSUMER.INFO.${EVENTS_STREAM}.*`,
        `${API}.CONSUMER.DELETE.${EVENTS_STREAM}.*`,
        // Page packs: put (chunks + meta) and get (meta look-up, then direct gets of the chunks:
        // the last by subject, and for a larger object the next by subject).
        `$O.${PACK_STORE}.C.*`,
        `$O.${PACK_STORE}.M.*`,
        `${API}.STREAM.MSG.GET.${OBJ_STREAM}`,
        `${API}.DIRECT.GET.${OBJ_STREAM}`,
        `${API}.DIRECT.GET.${OBJ_STREAM}.>`,
        // The object store purges an object's old chunks when it is written again (a pack
        // repaired after a corrupt copy): the purge API takes any filter, a known limit.
        `${API}.STREAM.PURGE.${OBJ_STREAM}`,
      ],
      deny: foreignConsumers,
    },
    subscribe: {
      allow: [
        `${inboxPrefixFor(publicKey)}.>`,
        agentStatus.subject({ host }),
        agentConsole.subject({ host }),
        agentManifest.subject({ host }),
        // The dedup index's answers (all shards, all migrations: see the module comment).
        "gw.hash.resolved.*",
        // Damaged packs anywhere: the host forgets the keys it knew stored (storedKeys.ts).
        "gw.pack.*.corrupt",
      ],
    },
    allowResponses: true,
  };
}

/**
 * The functions: the control plane. They consume every family, emit commands to every
 * agent and keep their state in KV; `gangway up --nats` also provisions the streams and
 * stores, so they get the JetStream API whole. What they do not get: anyone's inbox, and
 * the agents' services (they never call them).
 */
export function functionsPermissions(publicKey: string): Permissions {
  return {
    publish: {
      allow: ["gw.>", `${API}.>`, `$JS.ACK.${EVENTS_STREAM}.>`, "$JS.FC.>", `$KV.${RUNS_BUCKET}.>`, `$KV.${STATE_BUCKET}.>`, `$KV.${DEDUP_BUCKET}.>`, `$O.${PACK_STORE}.>`],
    },
    // The migration metrics (infra/migrationMetrics.ts) listen to these facts directly; the
    // functions read them all from the stream anyway, so this shows them nothing new.
    subscribe: { allow: [`${inboxPrefixFor(publicKey)}.>`, ...METRICS_FACTS.map((d) => d.filter)] },
    allowResponses: false,
  };
}

/**
 * The operator's CLI: requests and commands (vm start/stop, migrate, cancel, evacuate),
 * the agents' status and console services, and reading the stream (watch, audit) with
 * ordered consumers. It cannot pose as a host or a function: no facts, no data plane, and
 * no pulling from the agents' or functions' durables.
 */
export function operatorPermissions(publicKey: string, ctx: PermissionContext): Permissions {
  const durables = [...ctx.hosts.map(agentDurable), ...ctx.functionDurables];
  return {
    publish: {
      allow: [
        "gw.cmd.>",
        "gw.migration.*.requested",
        agentStatus.filter,
        agentConsole.filter,
        // How far a paused VM's destination got (the progress view during a switch-over).
        agentManifest.filter,
        `${API}.INFO`,
        `${API}.STREAM.INFO.*`,
        `${API}.STREAM.NAMES`,
        `${API}.STREAM.LIST`,
        `${API}.STREAM.MSG.GET.*`,
        `${API}.DIRECT.GET.>`,
        `${API}.CONSUMER.CREATE.*.*.>`,
        `${API}.CONSUMER.CREATE.*.*`,
        `${API}.CONSUMER.MSG.NEXT.*.*`,
        `${API}.CONSUMER.INFO.*.*`,
        `${API}.CONSUMER.DELETE.*.*`,
        `${API}.CONSUMER.NAMES.*`,
        `${API}.CONSUMER.LIST.*`,
        // Flow control of ordered push consumers (object reads in `gangway audit`).
        "$JS.FC.>",
      ],
      deny: durables.flatMap((d) => [
        `${API}.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.${d}`,
        `${API}.CONSUMER.DELETE.${EVENTS_STREAM}.${d}`,
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.${d}`,
        `${API}.CONSUMER.CREATE.${EVENTS_STREAM}.${d}.>`,
      ]),
    },
    subscribe: { allow: [`${inboxPrefixFor(publicKey)}.>`] },
    allowResponses: false,
  };
}

/** The nats-server `authorization { users = [...] }` block for these identities. */
export function renderAuthorization(identities: readonly IdentityPlan[]): string {
  // JSON strings are valid nats-server config strings, and quoting keeps "$JS…" from
  // being read as a variable reference.
  const q = (s: string) => JSON.stringify(s);
  const list = (xs: readonly string[]) => `[${xs.map(q).join(", ")}]`;
  const rules = (r: SubjectRules) => `{ allow: ${list(r.allow)}${r.deny?.length ? `, deny: ${list(r.deny)}` : ""} }`;
  const users = identities.map((i) =>
    [
      `    # ${i.name} (${i.role}${i.host ? ` of host ${i.host}` : ""})`,
      `    {`,
      `      nkey: ${q(i.publicKey)}`,
      `      permissions: {`,
      `        publish: ${rules(i.permissions.publish)}`,
      `        subscribe: ${rules(i.permissions.subscribe)}`,
      i.permissions.allowResponses ? `        allow_responses: true` : "",
      `      }`,
      `    }`,
    ].filter(Boolean).join("\n"),
  );
  return [`# Written by \`gangway auth\`: one nkey user per identity; regenerate to add hosts.`, `authorization {`, `  users = [`, users.join("\n"), `  ]`, `}`, ""].join("\n");
}
