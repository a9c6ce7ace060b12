// npm run ai:evaluate [-- --org <slug>] [--customers <n>] [--seed <n>]: the lead score model's
// quality, measured on a time-based split. Without --org it generates a labelled history from a
// documented process (worker/ai/synthetic.ts, docs/ai.md) in a scratch database on the embedded
// server (or the server of ROOT_DATABASE_URL), computes the features with the same SQL as scoring,
// trains on the oldest 70 % and reports on the newest 30 %. With --org it does the same with that
// organization's own labelled history, read as its system principal under row-level security.
import crypto from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../logger.ts";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../db/bootstrap.ts";
import { startEmbeddedPostgres } from "../db/embedded.ts";
import { evaluateTimeSplit, MIN_LABELLED, MIN_PER_CLASS, PRIOR_MODEL, probability, type FeatureRow, type LabelledRow } from "../../worker/ai/model.ts";
import { auc, accuracy, brier } from "../../worker/ai/logistic.ts";
import { generateSyntheticHistory } from "../../worker/ai/synthetic.ts";

const USAGE = `Usage: npm run ai:evaluate -- [options]

Measures the local lead score model on a time-based split: trains on the oldest 70 % of the labelled
history and reports, on the newest 30 %, the AUC, the accuracy at the chosen threshold and the Brier
score (docs/ai.md).

  --org <slug>       evaluate this organization's own labelled history (configured or embedded database)
  --customers <n>    size of the generated data set (default 4000; without --org)
  --seed <n>         seed of the generated data set (default 20240601)
  -h, --help         this text
`;

let args;
try {
  args = parseArgs({
    options: {
      org: { type: "string" },
      customers: { type: "string", default: "4000" },
      seed: { type: "string", default: "20240601" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }).values;
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const customers = Number(args.customers);
const seed = Number(args.seed);
if (!Number.isInteger(customers) || customers < 200 || customers > 200_000) {
  process.stderr.write("--customers must be an integer between 200 and 200000\n");
  process.exit(2);
}
if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
  process.stderr.write(`--seed must be an integer between 0 and ${0xffffffff}\n`);
  process.exit(2);
}

const config = loadConfigOrExit();
const logger = createLogger(config.logLevel === "info" ? "warn" : config.logLevel);
process.env.GRAPHILE_ENV ??= "production";
const out = (line = "") => process.stdout.write(line + "\n");
const pct = (v: number) => `${(v * 100).toFixed(1)} %`;

/** The labelled history of an organization, read in a rolled-back transaction as its system principal. */
async function history(client: pg.ClientBase, org: string): Promise<LabelledRow[]> {
  const principal = (await client.query<{ id: string }>("select crm_private.system_principal_for($1) as id", [org])).rows[0]!.id;
  await client.query("begin");
  try {
    await client.query("select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el", [
      JSON.stringify([["role", "crm_user"], ["jwt.claims.sub", principal], ["jwt.claims.org", org], ["jwt.claims.sid", ""], ["cairn.request_id", "ai:evaluate"]]),
    ]);
    const { rows } = await client.query<{ label: number; labelled_at: Date; features: FeatureRow }>(
      "select label, labelled_at, features from crm_jobs.lead_training_set()",
    );
    return rows.map((r) => ({ label: r.label, labelledAt: new Date(r.labelled_at), features: r.features }));
  } finally {
    await client.query("rollback");
  }
}

function report(rows: LabelledRow[], what: string): boolean {
  const positives = rows.filter((r) => r.label === 1).length;
  out(`${what}: ${rows.length.toLocaleString("en")} labelled customers, ${positives.toLocaleString("en")} converted (${pct(positives / Math.max(rows.length, 1))}).`);
  if (rows.length < MIN_LABELLED || positives < MIN_PER_CLASS || rows.length - positives < MIN_PER_CLASS) {
    out(`Too little labelled history to evaluate (at least ${MIN_LABELLED} with ${MIN_PER_CLASS} of each outcome); scoring uses the prior model.`);
    return false;
  }
  const { model, metrics } = evaluateTimeSplit(rows, 0.7);
  const sorted = [...rows].sort((a, b) => a.labelledAt.getTime() - b.labelledAt.getTime());
  const test = sorted.slice(metrics.trainSize);
  const split = sorted[metrics.trainSize]!.labelledAt.toISOString().slice(0, 10);
  out(`Time-based split: trained on the ${metrics.trainSize.toLocaleString("en")} oldest outcomes (before ${split}), held out the ${metrics.testSize.toLocaleString("en")} newest.`);
  const y = test.map((r) => r.label);
  const prior = test.map((r) => probability(PRIOR_MODEL, r.features));
  out(`Prior model on the same held-out part: AUC ${auc(prior, y).toFixed(3)}, accuracy ${pct(accuracy(prior, y, 0.5))} at 0.5, Brier ${brier(prior, y).toFixed(3)}.`);
  out(`Majority-class accuracy on the held-out part: ${pct(Math.max(metrics.baseRate, 1 - metrics.baseRate))}.`);
  const top = Object.entries(model.coefficients)
    .filter(([, c]) => c.weight)
    .sort((a, b) => Math.abs(b[1].weight) - Math.abs(a[1].weight))
    .slice(0, 6)
    .map(([name, c]) => `${name} ${c.weight > 0 ? "+" : ""}${c.weight.toFixed(2)}`);
  out(`Largest standardised weights: ${top.join(", ")}.`);
  const met = metrics.auc >= 0.85 && metrics.accuracy >= 0.8;
  out(`Goal (seed 003): area under the curve at least 0.85 and accuracy at least 80 %: ${met ? "met" : "NOT met"}.`);
  out(`Held-out: accuracy ${pct(metrics.accuracy)} at threshold ${metrics.threshold.toFixed(2)}, Brier ${metrics.brier.toFixed(3)}, AUC ${metrics.auc.toFixed(3)}`);
  return met;
}

async function evaluateOrganization(slug: string): Promise<number> {
  const { resolveConnections } = await import("../service.ts");
  const connections = await resolveConnections(config, logger);
  const client = new pg.Client({ connectionString: connections.ownerUrl });
  try {
    await migrate(connections.ownerUrl);
    if (connections.embedded && !config.isProduction) await applyCurrentMigration(connections.ownerUrl);
    await client.connect();
    const org = (await client.query<{ id: string; name: string }>("select id, name from crm.organizations where slug = $1", [slug])).rows[0];
    if (!org) {
      process.stderr.write(`No organization with the slug "${slug}".\n`);
      return 1;
    }
    const rows = await history(client, org.id);
    report(rows, `Organization "${slug}" (${org.name})`);
    return 0;
  } finally {
    await client.end().catch(() => undefined);
    await connections.embedded?.stop();
  }
}

async function evaluateSynthetic(): Promise<number> {
  const started = Date.now();
  const embedded = process.env.ROOT_DATABASE_URL
    ? undefined
    : await startEmbeddedPostgres({ dataDir: config.embedded.dataDir, port: config.embedded.port, log: (l) => logger.debug(l) });
  const rootUrl = process.env.ROOT_DATABASE_URL ?? embedded!.superuserUrl();
  const scratch = "cairn_ai_evaluate";
  try {
    let ownerUrl: string;
    if (embedded) {
      const saved = await fs.readFile(path.join(config.embedded.dataDir, "credentials.json"), "utf8").catch(() => null);
      const passwords = saved ? (JSON.parse(saved) as { owner: string; authenticator: string }) : { owner: crypto.randomUUID(), authenticator: crypto.randomUUID() };
      await ensureRoles(rootUrl, passwords);
      ownerUrl = withCredentials(withDatabase(rootUrl, scratch), "crm_owner", passwords.owner);
    } else {
      await ensureRoles(rootUrl);
      const u = new URL(withDatabase(rootUrl, scratch));
      u.searchParams.set("options", "-c role=crm_owner");
      ownerUrl = u.toString();
    }
    const admin = new pg.Client({ connectionString: rootUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${scratch} with (force)`);
    await admin.end();
    await ensureDatabase(rootUrl, scratch);
    await migrate(ownerUrl);
    await applyCurrentMigration(ownerUrl);
    const su = new pg.Client({ connectionString: withDatabase(rootUrl, scratch) });
    await su.connect();
    try {
      const org = (await su.query<{ id: string }>("insert into crm.organizations (name, slug) values ('Synthetic leads', 'synthetic-leads') returning id")).rows[0]!.id;
      const summary = await generateSyntheticHistory(su, org, { customers, seed });
      out(`Synthetic history (seed ${seed}, docs/ai.md): ${summary.customers.toLocaleString("en")} leads over two years, ${summary.tasks.toLocaleString("en")} tasks, ${summary.notes.toLocaleString("en")} notes, ${summary.workLogs.toLocaleString("en")} work logs, ${summary.deals.toLocaleString("en")} deals, ${summary.orders.toLocaleString("en")} orders.`);
      const rows = await history(su, org);
      const met = report(rows, "Labelled by the CRM's own rule (crm_jobs.lead_labels)");
      out(`(${((Date.now() - started) / 1000).toFixed(0)} s)`);
      return met ? 0 : 1;
    } finally {
      await su.end();
      const cleanup = new pg.Client({ connectionString: rootUrl });
      await cleanup.connect();
      await cleanup.query(`drop database if exists ${scratch} with (force)`);
      await cleanup.end();
    }
  } finally {
    await embedded?.stop();
  }
}

let code: number;
try {
  code = args.org ? await evaluateOrganization(args.org) : await evaluateSynthetic();
} catch (e) {
  logger.error({ err: e }, "ai:evaluate failed");
  process.stderr.write(`ai:evaluate failed: ${(e as Error).message}\n`);
  code = 1;
}
process.exit(code);
