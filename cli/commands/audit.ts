/** `gangway audit MIGRATION_ID`: replay and re-verify a migration from the retained stream. */
import { auditMigration, isMigrationNotFound, listMigrations } from "../../infra/audit/audit.ts";
import { formatAuditReport, formatMigrationList } from "../../infra/audit/format.ts";
import { parseCommandArgs, printJson } from "../args.ts";
import { CheckFailedError, UsageError } from "../errors.ts";
import { connectFromFlags, natsFlagHelp, natsFlagSpec } from "../natsFlags.ts";

const help = `usage: gangway audit MIGRATION_ID [--json]
       gangway audit --host HOST [--since TIME] [--json]

Replays a migration from the retained event stream: who requested it and why, each phase,
rounds, bytes, dedup, commit or rollback per VM. Then re-verifies it: every manifest entry
must resolve to a page pack whose page hashes to the entry's key (needs the cluster secret,
GANGWAY_KEY_SECRET), and each VM's image digest rebuilt from its manifest must equal the
digests recorded by the source and at commit. Exits 1 naming what does not verify.
With --host, lists the migrations that involved HOST (since TIME, ISO 8601).

  --json            one JSON object on stdout
${natsFlagHelp}`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(argv, { ...natsFlagSpec, host: { type: "string" }, since: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean" } });
  if (values.help) return void process.stdout.write(help + "\n");
  if (positionals.length > 1) throw new UsageError(`audit takes one migration id, got ${positionals.length}`);
  if (positionals.length === 0 && !values.host) throw new UsageError("name a MIGRATION_ID, or --host HOST to list migrations");
  if (values.since && Number.isNaN(Date.parse(values.since))) throw new UsageError(`--since must be a time (ISO 8601), got "${values.since}"`);
  if (positionals.length === 1 && (values.host || values.since)) throw new UsageError("--host and --since list migrations; not with a MIGRATION_ID");
  const id = positionals[0];
  if (id !== undefined && !/^[A-Za-z0-9_-]{1,128}$/.test(id)) throw new UsageError(`MIGRATION_ID must be letters, digits, _ or -, got "${id}"`);
  if (values.host !== undefined && !/^[A-Za-z0-9_-]{1,128}$/.test(values.host)) throw new UsageError(`--host must be letters, digits, _ or -, got "${values.host}"`);

  const nc = await connectFromFlags(values, "gangway-audit");
  try {
    if (id === undefined) {
      const host = values.host!;
      const migrations = await listMigrations(nc, { host, ...(values.since ? { since: new Date(values.since) } : {}) });
      if (values.json) printJson({ host, ...(values.since ? { since: new Date(values.since).toISOString() } : {}), migrations });
      else process.stdout.write(formatMigrationList(host, migrations) + "\n");
      return;
    }
    const report = await auditMigration(nc, id).catch((err: unknown) => {
      if (isMigrationNotFound(err)) throw new CheckFailedError(err.message, { cause: err });
      throw err;
    });
    if (values.json) printJson(report);
    else process.stdout.write(formatAuditReport(report) + "\n");
    if (!report.verified) throw new CheckFailedError(`migration ${id} does not verify: ${report.failures.map((f) => f.message).join("; ")}`);
  } finally {
    await nc.close();
  }
}
