// Cluster and database bootstrap (roles, database, extensions) and migrations.
// Roles need a superuser once (`npm run db:init`, or automatically on the embedded server); the
// running service only ever uses the owner (migrations, worker) and the authenticator (API).
import fs from "node:fs/promises";
import path from "node:path";
import pg from "pg";
import { Logger as GmLogger } from "graphile-migrate";
import { Logger as WorkerLogger } from "graphile-worker";
import { ROOT_DIR } from "../config.ts";

export interface RolePasswords {
  owner: string;
  authenticator: string;
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export function withCredentials(url: string, user: string, password: string | undefined): string {
  const u = new URL(url);
  u.username = encodeURIComponent(user);
  u.password = password ? encodeURIComponent(password) : "";
  return u.toString();
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Create (or update) the cluster-wide roles. Safe to run concurrently and repeatedly. */
export async function ensureRoles(superuserUrl: string, passwords?: RolePasswords): Promise<void> {
  const sql = await fs.readFile(path.join(ROOT_DIR, "db", "roles.sql"), "utf8");
  await withClient(superuserUrl, async (client) => {
    // Role DDL is not transactional across sessions: serialise concurrent bootstraps.
    await client.query("select pg_advisory_lock(4727445306447284)");
    try {
      await client.query(sql);
      if (passwords) {
        await client.query(`alter role crm_owner password ${client.escapeLiteral(passwords.owner)}`);
        await client.query(`alter role crm_authenticator password ${client.escapeLiteral(passwords.authenticator)}`);
      }
    } finally {
      await client.query("select pg_advisory_unlock(4727445306447284)");
    }
  });
}

/** Create the application database owned by crm_owner (if missing) and apply db/database.sql to it. */
export async function ensureDatabase(superuserUrl: string, database: string): Promise<void> {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(database)) throw new Error(`Unsupported database name "${database}"`);
  await withClient(superuserUrl, async (client) => {
    const { rowCount } = await client.query("select 1 from pg_database where datname = $1", [database]);
    if (!rowCount) {
      await client.query(`create database ${client.escapeIdentifier(database)} owner crm_owner encoding 'UTF8' template template0`).catch((e: { code?: string }) => {
        if (e.code !== "42P04") throw e; // created concurrently
      });
    }
  });
  const sql = (await fs.readFile(path.join(ROOT_DIR, "db", "database.sql"), "utf8")).replaceAll(":DATABASE_NAME", `"${database}"`);
  await withClient(withDatabase(superuserUrl, database), (client) => client.query(sql));
}

export interface MigrateLogger {
  info: (msg: string) => void;
  warn: (msg: string) => void;
}

/**
 * graphile-worker's schema, then the committed graphile-migrate migrations, as the owner.
 * Several instances may start at once: graphile-migrate holds an advisory lock and refuses a second
 * caller, so we wait and retry; the loser then finds nothing left to do.
 */
export async function migrate(ownerUrl: string, log?: MigrateLogger): Promise<void> {
  const { runMigrations } = await import("graphile-worker");
  const { migrate: gmMigrate } = await import("graphile-migrate");
  const settings = {
    connectionString: ownerUrl,
    migrationsFolder: path.join(ROOT_DIR, "migrations"),
    manageGraphileMigrateSchema: true,
    logger: quietMigrateLogger(log),
  };
  const deadline = Date.now() + 120_000;
  for (let attempt = 1; ; attempt++) {
    try {
      await runMigrations({ connectionString: ownerUrl, logger: quietWorkerLogger() });
      await gmMigrate(settings as never);
      // graphile-migrate keeps its pool for 200 ms after use and calls process.exit(1) if an idle
      // connection of it is terminated (e.g. DROP DATABASE … WITH (FORCE)): let it close first.
      await new Promise((r) => setTimeout(r, 300));
      return;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const transient = /exclusive lock|deadlock|could not serialize|already exists/i.test(message);
      if (!transient || Date.now() > deadline) throw e;
      log?.warn(`migrations are being applied by another process; retrying (attempt ${attempt})`);
      await new Promise((r) => setTimeout(r, Math.min(250 * attempt, 2000)));
    }
  }
}

/** The uncommitted migration's text: `migrations/current.sql`, or the files of `migrations/current/` in order. */
export async function readCurrentMigration(): Promise<string> {
  const dir = path.join(ROOT_DIR, "migrations", "current");
  const files = await fs.readdir(dir).catch(() => null);
  if (!files) return fs.readFile(path.join(ROOT_DIR, "migrations", "current.sql"), "utf8").catch(() => "");
  const sql = files.filter((f) => /^\d+(-[-_a-zA-Z0-9]+)?\.sql$/.test(f)).sort((a, b) => parseInt(a, 10) - parseInt(b, 10));
  return (await Promise.all(sql.map((f) => fs.readFile(path.join(dir, f), "utf8")))).join("\n");
}

/** Whether a migration text holds any statement (not only blank lines and `--` comments). */
export function hasStatements(body: string): boolean {
  return body.split("\n").some((l) => l.trim() && !l.trim().startsWith("--"));
}

/**
 * Development only: apply the uncommitted migration (`migrations/current/`, one file per concern)
 * on top (graphile-migrate `watch --once`). Used by the test setup so work in progress can be tested
 * before it is committed; CI refuses uncommitted statements.
 */
export async function applyCurrentMigration(ownerUrl: string, log?: MigrateLogger): Promise<boolean> {
  if (!hasStatements(await readCurrentMigration())) return false;
  const { watch } = await import("graphile-migrate");
  await watch(
    { connectionString: ownerUrl, migrationsFolder: path.join(ROOT_DIR, "migrations"), logger: quietMigrateLogger(log) } as never,
    true,
    false,
  );
  await new Promise((r) => setTimeout(r, 300));
  return true;
}

function quietMigrateLogger(log?: MigrateLogger): InstanceType<typeof import("graphile-migrate").Logger> {
  return new GmLogger(() => (level: string, message: string) => {
    if (level === "error" || level === "warning") log?.warn(message);
    else if (level === "info") log?.info(message);
  });
}

function quietWorkerLogger() {
  return new WorkerLogger(() => (level: string, message: string) => {
    if (level === "error") process.stderr.write(`graphile-worker: ${message}\n`);
  });
}
