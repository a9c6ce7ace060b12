// npm run seed:demo [-- --org <slug>] [--scale] [--append] [--seed <n>] [--force]: fills an
// organization with demo CRM data (src/db/seed-demo.ts), on the configured or the embedded database.
import { parseArgs } from "node:util";
import pg from "pg";
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../logger.ts";
import { migrate } from "../db/bootstrap.ts";
import { DEFAULT_VOLUME, SCALE_VOLUME, SeedRefusedError, seedDemoData, settleAfterBulkLoad } from "../db/seed-demo.ts";

const USAGE = `Usage: npm run seed:demo -- [options]

Fills an organization with demo CRM data: members and teams, customers, contacts, tags, deals in every
stage with their history, projects, tasks, work logs and notes, a product catalogue, promotions and an
order history with payments and loyalty points. The same --seed gives the same data.

  --org <slug>     organization to fill (default: demo; created with its demo users if missing)
  --scale          ${SCALE_VOLUME.customers.toLocaleString("en")} customers with contacts, deals and tasks, ${SCALE_VOLUME.orders.toLocaleString("en")} orders
                   (default: ${DEFAULT_VOLUME.customers} customers, ${DEFAULT_VOLUME.tasks.toLocaleString("en")} tasks, ${DEFAULT_VOLUME.orders.toLocaleString("en")} orders)
  --append         add to an organization that already has customers
  --seed <n>       PRNG seed (default: 20240601)
  --force          allow NODE_ENV=production
  -h, --help       this text
`;

let args;
try {
  args = parseArgs({
    options: {
      org: { type: "string", default: "demo" },
      scale: { type: "boolean", default: false },
      append: { type: "boolean", default: false },
      seed: { type: "string" },
      force: { type: "boolean", default: false },
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
const seed = args.seed === undefined ? undefined : Number(args.seed);
if (seed !== undefined && (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)) {
  process.stderr.write(`--seed must be an integer between 0 and ${0xffffffff}\n`);
  process.exit(2);
}

const config = loadConfigOrExit();
if (config.isProduction && !args.force) {
  process.stderr.write("Refusing to write demo data with NODE_ENV=production; pass --force if you really mean it.\n");
  process.exit(2);
}
const logger = createLogger(config.logLevel);
process.env.GRAPHILE_ENV ??= "production";
const { resolveConnections } = await import("../service.ts");
const { ensureDemoTenant, DEMO_ORGANIZATION } = await import("../db/demo.ts");

const connections = await resolveConnections(config, logger);
let exitCode = 0;
const pool = new pg.Pool({ connectionString: connections.ownerUrl, max: 2 });
pool.on("error", (err) => logger.error({ err }, "owner pool error"));
try {
  await migrate(connections.ownerUrl, { info: (m) => logger.info(m), warn: (m) => logger.warn(m) });
  const { rows: schema } = await pool.query<{ ok: boolean }>("select to_regclass('crm.customers') is not null and to_regclass('crm.orders') is not null as ok");
  if (!schema[0]?.ok) {
    throw new SeedRefusedError("The CRM tables are not in this database yet: apply migrations/current/ first (npm run gm -- watch --once).");
  }
  const slug = args.org;
  let org = (await pool.query<{ id: string }>("select id from crm.organizations where slug = $1", [slug])).rows[0];
  if (!org && slug === DEMO_ORGANIZATION.slug) {
    const demo = await ensureDemoTenant(pool, config.embedded.dataDir, config.auth.bcryptCost);
    logger.info({ credentials: demo.credentialsFile }, "demo organization created");
    org = (await pool.query<{ id: string }>("select id from crm.organizations where slug = $1", [slug])).rows[0];
  }
  if (!org) throw new SeedRefusedError(`No organization with the slug "${slug}".`);
  const summary = await seedDemoData(pool, org.id, {
    volume: args.scale ? SCALE_VOLUME : DEFAULT_VOLUME,
    seed,
    append: args.append,
    log: (m) => logger.info(m),
  });
  await settleAfterBulkLoad(pool);
  const width = Math.max(...Object.keys(summary.counts).map((k) => k.length));
  process.stdout.write(
    [
      "",
      `  Organization "${slug}" filled in ${(summary.durationMs / 1000).toFixed(1)} s (seed ${summary.seed}); ${summary.members} active members in ${summary.teams} teams.`,
      ...Object.entries(summary.counts).map(([k, v]) => `    ${k.padEnd(width)}  ${v.toLocaleString("en").padStart(9)}`),
      "",
    ].join("\n") + "\n",
  );
} catch (e) {
  if (e instanceof SeedRefusedError) {
    process.stderr.write(`${e.message}\n`);
    exitCode = 1;
  } else {
    logger.error({ err: e }, "seeding failed");
    exitCode = 1;
  }
} finally {
  await pool.end();
  await connections.embedded?.stop();
}
process.exit(exitCode);
