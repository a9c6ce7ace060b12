// A scratch database and a running server for the hardening benchmarks (memory, abuse): embedded
// PostgreSQL (or BENCH_DATABASE_URL's server as superuser), every migration including
// migrations/current/, one seeded organization, and an Administrator's token.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import type { TestDb } from "../helpers/db.ts";

process.env.GRAPHILE_ENV ??= "production";

export interface Scratch {
  server: TestServer;
  token: string;
  stop: () => Promise<void>;
}

export async function startScratch(name: string, env: Record<string, string> = {}): Promise<Scratch> {
  const { seedTenant } = await import("../helpers/tenant.ts");
  const { startSession } = await import("../helpers/identity.ts");
  const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };
  let embedded: EmbeddedServer | undefined;
  let dataDir: string | undefined;
  let rootUrl = process.env.BENCH_DATABASE_URL;
  if (!rootUrl) {
    dataDir = path.join(os.tmpdir(), `cairn-bench-${name}-${process.pid}`);
    embedded = await startEmbeddedPostgres({ dataDir, port: 57000 + (process.pid % 3000), durable: false });
    rootUrl = embedded.superuserUrl();
  }
  const database = `cairn_bench_${name}`;
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${database} with (force)`);
  await admin.end();
  await ensureRoles(rootUrl, passwords);
  await ensureDatabase(rootUrl, database);
  const dbUrl = withDatabase(rootUrl, database);
  const ownerUrl = withCredentials(dbUrl, "crm_owner", passwords.owner);
  const authUrl = withCredentials(dbUrl, "crm_authenticator", passwords.authenticator);
  await migrate(ownerUrl);
  await applyCurrentMigration(ownerUrl);
  const owner = new pg.Pool({ connectionString: ownerUrl, max: 4 });
  const db = { ownerUrl, authUrl, owner } as unknown as TestDb;
  const tenant = await seedTenant(db, "bench");
  const token = (await startSession(db, tenant.adminId, tenant.id)).accessToken;
  // Limits and cache sizes given to the benchmark apply to the server it starts.
  const settings = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => /^(GRAPHQL_|RATE_LIMIT|STATEMENT_TIMEOUT|NODE_OPTIONS$|MALLOC_ARENA_MAX$)/.test(e[0]) && !!e[1]));
  const server = await startServer(db, { ...settings, ...env });
  return {
    server,
    token,
    stop: async () => {
      await server.stop();
      await owner.end();
      const c = new pg.Client({ connectionString: rootUrl });
      await c.connect();
      await c.query(`drop database if exists ${database} with (force)`);
      await c.end();
      await embedded?.stop();
      if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Resident set size of a process in MB (Linux /proc). */
export async function rssMb(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return Math.round(kb / 1024);
}
