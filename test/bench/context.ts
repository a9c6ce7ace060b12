// Shared by the bench areas: a scratch database (embedded PostgreSQL in a temporary folder, or
// BENCH_DATABASE_URL's server as superuser) seeded like `seed:demo --scale`, sessions for a Sales
// Manager and a Sales Representative, the real server, and the measuring tools: autocannon for the
// HTTP side, the same number of pg connections for the SQL side, both for a fixed time.
import crypto from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import autocannon from "autocannon";
import pg from "pg";
import { ensureDatabase, ensureRoles, migrate, applyCurrentMigration, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import { seedDemoData, settleAfterBulkLoad, SCALE_VOLUME, DEFAULT_VOLUME } from "../../src/db/seed-demo.ts";
import { authSettings } from "../../src/auth/context.ts";
import { loadConfig } from "../../src/config.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import type { TestDb } from "../helpers/db.ts";
import { startSession } from "../helpers/identity.ts";

export const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
export const CLIENTS = (process.env.BENCH_CLIENTS ?? "1,8").split(",").map(Number);

export interface Caller {
  name: string;
  userId: string;
  sessionId: string;
  /** A fresh session's access token (they last 15 minutes; the bench runs longer). */
  token: () => Promise<string>;
}

export interface Stats {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  errors: number;
}

export interface BenchContext {
  db: TestDb;
  rootUrl: string;
  orgId: string;
  small: boolean;
  callers: Caller[];
  server: () => Promise<TestServer>;
  /** Start another server (other settings), stopped by the caller. */
  startServer: (env?: Record<string, string>) => Promise<TestServer>;
  someCustomer: { id: string; name: string };
  sqlPool: pg.Pool;
  close: () => Promise<void>;
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function stats(latencies: number[], seconds: number, errors: number): Stats {
  latencies.sort((a, b) => a - b);
  return { rps: latencies.length / seconds, p50: percentile(latencies, 50), p95: percentile(latencies, 95), p99: percentile(latencies, 99), errors };
}

/** GraphQL over HTTP with autocannon: `clients` connections for SECONDS, every response timed. */
export async function httpLoad(url: string, token: string, query: string, variables: Record<string, unknown>, clients: number, seconds = SECONDS): Promise<Stats> {
  const latencies: number[] = [];
  // One request first: an autocannon run started before this process has made any HTTP request of
  // its own was seen to send nothing at all.
  await fetch(`${url}/graphql`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` }, body: JSON.stringify({ query, variables }) });
  const instance = autocannon({
    url: `${url}/graphql`,
    connections: clients,
    duration: seconds,
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  instance.on("response", (_client: unknown, _status: number, _bytes: number, ms: number) => latencies.push(ms));
  const result = await instance;
  return stats(latencies, result.duration || seconds, result.non2xx + result.errors);
}

/** The API's request settings for a caller (what src/auth/context.ts builds from the token). */
export function settingsFor(orgId: string, caller: Caller): string {
  const config = loadConfig({ NODE_ENV: "test", DATABASE_URL: "x", AUTH_DATABASE_URL: "x", JWT_SECRET: "x".repeat(32) });
  const settings: Record<string, string> = {
    role: "crm_anonymous",
    ...authSettings(config),
    "cairn.request_id": crypto.randomUUID(),
    "cairn.client_ip": "127.0.0.1",
    "cairn.user_agent": "bench",
    "cairn.pending_claims": JSON.stringify({ sub: caller.userId, org: orgId, sid: caller.sessionId }),
  };
  return JSON.stringify(Object.entries(settings));
}

/**
 * One hand-written statement run the way the API runs a request: begin with the same settings
 * statement (session check included) in one message, the statement, commit; `clients` connections
 * for SECONDS.
 */
export async function sqlLoad(pool: pg.Pool, settings: string, sql: string, params: () => unknown[], clients: number, seconds = SECONDS): Promise<Stats> {
  const latencies: number[] = [];
  let errors = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      const client = await pool.connect();
      try {
        while (performance.now() < until) {
          const t0 = performance.now();
          try {
            // As the API sends them: begin and the settings in one message (src/auth/request-settings.ts).
            await client.query(`begin; select crm_private.begin_request(${client.escapeLiteral(settings)}::json)`);
            await client.query(sql, params());
            await client.query("commit");
            latencies.push(performance.now() - t0);
          } catch {
            errors++;
            await client.query("rollback").catch(() => undefined);
          }
        }
      } finally {
        client.release();
      }
    }),
  );
  return stats(latencies, seconds, errors);
}

/** Resident memory of a process, in MB (Linux). */
export async function rssMb(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return Math.round(kb / 1024);
}

/** Statements the server sent on its API connections (cairn_pg_statements_total). */
export async function statementsSoFar(url: string): Promise<number> {
  return (await countersSoFar(url)).statements;
}

/** Statements and round trips (messages) the server sent on its API connections. */
export async function countersSoFar(url: string): Promise<{ statements: number; roundTrips: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return {
    statements: Number(/^cairn_pg_statements_total (\d+)/m.exec(text)?.[1] ?? NaN),
    roundTrips: Number(/^cairn_pg_round_trips_total (\d+)/m.exec(text)?.[1] ?? NaN),
  };
}

export const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "–");

export async function createBenchContext(small: boolean): Promise<BenchContext> {
  const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };
  let embedded: EmbeddedServer | undefined;
  let dataDir: string | undefined;
  let rootUrl = process.env.BENCH_DATABASE_URL;
  if (!rootUrl) {
    dataDir = path.join(os.tmpdir(), `cairn-bench-${process.pid}`);
    embedded = await startEmbeddedPostgres({ dataDir, port: 56000 + (process.pid % 3000), durable: false });
    rootUrl = embedded.superuserUrl();
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        void embedded!.stop().finally(() => process.exit(130));
      });
    }
  }
  const name = "cairn_bench";
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.end();
  await ensureRoles(rootUrl, passwords);
  await ensureDatabase(rootUrl, name);
  const dbUrl = withDatabase(rootUrl, name);
  const ownerUrl = withCredentials(dbUrl, "crm_owner", passwords.owner);
  const authUrl = withCredentials(dbUrl, "crm_authenticator", passwords.authenticator);
  await migrate(ownerUrl);
  await applyCurrentMigration(ownerUrl, { info: () => undefined, warn: (m) => process.stderr.write(`${m}\n`) });
  const owner = new pg.Pool({ connectionString: ownerUrl, max: 4 });
  const db = { ownerUrl, authUrl, owner, rootUrl, name } as unknown as TestDb;

  const { rows } = await owner.query<{ id: string }>("insert into crm.organizations (name, slug) values ('Bench Corp', 'bench') returning id");
  const orgId = rows[0]!.id;
  process.stdout.write(`seeding ${small ? "the default volume" : "--scale"}…\n`);
  const seeded = await seedDemoData(owner, orgId, { volume: small ? DEFAULT_VOLUME : SCALE_VOLUME });
  process.stdout.write(`seeded in ${(seeded.durationMs / 1000).toFixed(1)} s: ${seeded.counts.customers} customers, ${seeded.counts.contacts} contacts, ${seeded.counts.deals} deals\n`);
  await settleAfterBulkLoad(owner);

  const caller = async (role: string): Promise<Caller> => {
    const userId = (
      await owner.query<{ user_id: string }>(
        `select m.user_id from crm.organization_memberships m join crm.roles r on r.id = m.role_id
          where m.organization_id = $1 and r.name = $2 and m.is_active order by m.created_at limit 1`,
        [orgId, role],
      )
    ).rows[0]!.user_id;
    const session = await startSession(db, userId, orgId);
    return { name: role, userId, sessionId: session.sessionId, token: async () => (await startSession(db, userId, orgId)).accessToken };
  };
  const callers = [await caller("Sales Manager"), await caller("Sales Representative")];
  const someCustomer = (
    await owner.query<{ id: string; name: string }>(
      "select id, name from crm.customers where organization_id = $1 order by id limit 1 offset (select count(*) / 2 from crm.customers)",
      [orgId],
    )
  ).rows[0]!;
  const sqlPool = new pg.Pool({ connectionString: authUrl, max: 16 });
  // The production log level (one line per request); the lines are drained, not kept.
  const start = async (env: Record<string, string> = {}) => {
    const server = await startServer(db, { LOG_LEVEL: "info", PAGE_SIZE_MAX: "100", GRAPHILE_ENV: "production", ...env });
    server.process.stdout!.removeAllListeners("data");
    server.process.stdout!.resume();
    return server;
  };
  let main: TestServer | undefined;
  return {
    db,
    rootUrl,
    orgId,
    small,
    callers,
    someCustomer,
    sqlPool,
    server: async () => (main ??= await start()),
    startServer: start,
    close: async () => {
      await main?.stop();
      await sqlPool.end();
      await owner.end();
      const cleanup = new pg.Client({ connectionString: rootUrl });
      await cleanup.connect();
      await cleanup.query(`drop database if exists ${name} with (force)`);
      await cleanup.end();
      if (embedded) await embedded.stop();
      if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}
