// Wires the service together: database (embedded or configured), migrations, pools, the worker, the
// HTTP app, and a bounded graceful shutdown.
import fs from "node:fs/promises";
import path from "node:path";
import crypto from "node:crypto";
import pg from "pg";
import type { Runner } from "graphile-worker";
import type { Config } from "./config.ts";
import type { Logger } from "./logger.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "./db/embedded.ts";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "./db/bootstrap.ts";
import { createApp, type App } from "./http/app.ts";
import { startWorker } from "../worker/runner.ts";
import { makePrincipalResolver } from "./auth/principal.ts";
import { migrationsCurrent } from "./db/migrations.ts";
import { ensureDemoTenant, type DemoAccess } from "./db/demo.ts";
import { seedDemoData } from "./db/seed-demo.ts";
import { applyRfmDefaults } from "./db/rfm-defaults.ts";
import { makeDemoSignIn } from "./auth/demo-sign-in.ts";
import { withSessionCheck } from "./auth/request-settings.ts";

export interface Connections {
  ownerUrl: string;
  authUrl: string;
  embedded?: EmbeddedServer;
}

async function readOrCreateSecret(file: string, make: () => string): Promise<string> {
  try {
    const value = (await fs.readFile(file, "utf8")).trim();
    if (value) return value;
  } catch {
    // first start
  }
  const value = make();
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, value + "\n", { mode: 0o600 });
  return value;
}

/** The configured database, or the embedded one (roles and database created on first start). */
export async function resolveConnections(config: Config, logger: Logger): Promise<Connections> {
  if (config.databaseUrl && config.authDatabaseUrl) {
    return { ownerUrl: config.databaseUrl, authUrl: config.authDatabaseUrl };
  }
  const log = logger.child({ component: "embedded-postgres" });
  log.info({ dataDir: config.embedded.dataDir, port: config.embedded.port }, "starting embedded PostgreSQL");
  const embedded = await startEmbeddedPostgres({
    dataDir: config.embedded.dataDir,
    port: config.embedded.port,
    log: (line) => log.debug(line),
  });
  try {
    const credentialsFile = path.join(config.embedded.dataDir, "credentials.json");
    const passwords = JSON.parse(
      await readOrCreateSecret(credentialsFile, () =>
        JSON.stringify({
          owner: crypto.randomBytes(18).toString("base64url"),
          authenticator: crypto.randomBytes(18).toString("base64url"),
        }),
      ),
    ) as { owner: string; authenticator: string };
    const su = embedded.superuserUrl();
    await ensureRoles(su, passwords);
    await ensureDatabase(su, config.embedded.databaseName);
    const dbUrl = withDatabase(su, config.embedded.databaseName);
    return {
      ownerUrl: withCredentials(dbUrl, "crm_owner", passwords.owner),
      authUrl: withCredentials(dbUrl, "crm_authenticator", passwords.authenticator),
      embedded,
    };
  } catch (e) {
    await embedded.stop();
    throw e;
  }
}

async function seedDemoOrganization(ownerPool: pg.Pool, slug: string, logger: Logger): Promise<void> {
  try {
    const { rows } = await ownerPool.query<{ id: string | null }>(
      "select case when to_regclass('crm.customers') is not null then (select id from crm.organizations where slug = $1) end as id",
      [slug],
    );
    if (!rows[0]?.id) return;
    const summary = await seedDemoData(ownerPool, rows[0].id);
    logger.info({ organization: slug, ...summary.counts, ms: summary.durationMs }, "demo organization filled with demo data");
  } catch (err) {
    logger.error({ err, organization: slug }, "could not fill the demo organization; run npm run seed:demo");
  }
}

export async function resolveJwtSecret(config: Config): Promise<string> {
  if (config.jwt.secret) return config.jwt.secret;
  // Development only (production refuses to start without JWT_SECRET): generated once, kept in .data.
  return readOrCreateSecret(path.join(config.embedded.dataDir, "jwt-secret"), () => crypto.randomBytes(48).toString("base64url"));
}

/** statement_timeout for the worker's (owner) connections: JOB_STATEMENT_TIMEOUT_MS, 0 = none. */
export function jobStatementTimeout(config: Config): { options?: string } {
  const ms = config.hardening.jobStatementTimeoutMs;
  return ms > 0 ? { options: `-c statement_timeout=${ms}` } : {};
}

export interface Service {
  /** Absent in a cluster primary, which serves no HTTP itself. */
  app?: App;
  demo?: DemoAccess;
  address?: { host: string; port: number };
  connections: Connections;
  stop: (reason?: string) => Promise<void>;
}

export interface StartOptions {
  /** false: database, migrations, demo organization and worker only (the cluster primary). */
  http?: boolean;
}

export async function startService(config: Config, logger: Logger, opts: StartOptions = {}): Promise<Service> {
  const connections = await resolveConnections(config, logger);
  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn().catch((e) => logger.error({ err: e }, "shutdown step failed"));
    cleanups.length = 0;
  };
  if (connections.embedded) cleanups.push(() => connections.embedded!.stop());
  try {
    if (config.migrateOnStart) {
      const log = { info: (m: string) => logger.info(m), warn: (m: string) => logger.warn(m) };
      await migrate(connections.ownerUrl, log);
      // On the embedded development database, the migration being written (migrations/current/) is
      // applied on top, as the tests do, so `npm start` runs the work in progress. Never in production.
      if (connections.embedded && !config.isProduction && (await applyCurrentMigration(connections.ownerUrl, log))) {
        logger.info("migrations/current/ (uncommitted) applied");
      }
    }
    const ownerPool = new pg.Pool({
      connectionString: connections.ownerUrl,
      max: config.worker === "inline" ? config.workerConcurrency + 3 : 3,
      // The jobs' time budget (the API's requests have their own, per transaction).
      ...jobStatementTimeout(config),
    });
    ownerPool.on("error", (err) => logger.error({ err }, "owner pool error"));
    ownerPool.on("connect", (client) => client.on("error", (err) => logger.warn({ err }, "owner connection error")));
    cleanups.push(() => ownerPool.end());
    const authPool = new pg.Pool({ connectionString: connections.authUrl, max: config.pgPoolMax });
    authPool.on("error", (err) => logger.error({ err }, "authenticator pool error"));
    authPool.on("connect", (client) => {
      client.on("error", (err) => logger.warn({ err }, "authenticator connection error"));
      withSessionCheck(client as pg.PoolClient);
    });
    cleanups.push(() => authPool.end());

    // The RFM settings new organizations start with (RFM_DEFAULT_*), checked by the database.
    await applyRfmDefaults(ownerPool, config);
    const jwtSecret = await resolveJwtSecret(config);
    // The demo tenant: on the embedded development database only (DEMO_DATA), never in production.
    const demo =
      config.demo && !config.isProduction && connections.embedded
        ? await ensureDemoTenant(ownerPool, config.embedded.dataDir, config.auth.bcryptCost)
        : undefined;
    // A demo organization created now is filled with demo data (the default volume, under a second),
    // so GraphiQL has something to show. A failure is logged and the service starts anyway.
    if (demo?.created) await seedDemoOrganization(ownerPool, demo.organizationSlug, logger);

    let runner: Runner | undefined;
    let app: App | undefined;
    const hooks = {
      onJobComplete: (task: string) => app?.metrics.jobsCompleted.inc({ task }),
      onJobFailed: (task: string) => app?.metrics.jobsFailed.inc({ task }),
      onJobStart: (task: string) => app?.metrics.jobsStarted.inc({ task }),
      onJobPermanentlyFailed: (task: string) => app?.metrics.jobsPermanentlyFailed.inc({ task }),
      onJobFinished: (task: string, outcome: string, seconds: number) => app?.metrics.jobDuration.observe({ task, outcome }, seconds),
    };
    if (config.worker === "inline") {
      runner = await startWorker({ config, logger, ownerPool, authPool, hooks });
      const r = runner;
      cleanups.push(() => r.stop());
    }
    let stopping: Promise<void> | undefined;
    const stop = (reason?: string) =>
      (stopping ??= (async () => {
        logger.info({ reason }, "shutting down");
        await cleanup();
        logger.info("shutdown complete");
      })());
    if (opts.http === false) return { demo, connections, stop };
    let workerAlive = !!runner;
    runner?.promise.then(
      () => (workerAlive = false),
      (err) => {
        workerAlive = false;
        logger.error({ err }, "worker stopped unexpectedly");
      },
    );

    app = await createApp({
      config,
      logger,
      authPool,
      ownerPool,
      jwtSecret,
      resolvePrincipal: makePrincipalResolver(config, authPool),
      readiness: [
        { name: "database", check: async () => (await authPool.query("select 1")).rowCount === 1 },
        { name: "migrations", check: () => migrationsCurrent(ownerPool) },
        ...(config.worker === "inline" ? [{ name: "worker", check: async () => workerAlive }] : []),
      ],
      queueDepth: async () => {
        const { rows } = await ownerPool.query<{ n: string }>(
          "select count(*)::text as n from graphile_worker._private_jobs where locked_at is null and attempts < max_attempts",
        );
        return Number(rows[0]?.n ?? 0);
      },
      ...(demo && config.graphiql && config.graphiqlDemoSignIn ? demoSignIn(config, authPool, jwtSecret, demo) : {}),
    });
    const theApp = app;
    // The HTTP server closes first so in-flight requests finish, then the worker, pools, database.
    cleanups.push(() => theApp.close());
    const address = await app.listen();
    return { app, demo, address, connections, stop };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

function demoSignIn(config: Config, authPool: pg.Pool, jwtSecret: string, demo: DemoAccess) {
  const admin = demo.accounts.find((a) => a.username === "demo-admin");
  return admin ? { graphiqlHeaders: makeDemoSignIn(config, authPool, jwtSecret, admin) } : {};
}
