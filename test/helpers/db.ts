// Per-test-file databases cloned from the migrated template, and SQL as crm_user with claims.
import crypto from "node:crypto";
import pg from "pg";
import { withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { ROOT_URL_ENV, TEMPLATE_DB, TEST_PASSWORDS } from "./state.ts";

export interface TestDb {
  name: string;
  rootUrl: string;
  ownerUrl: string;
  authUrl: string;
  /** Owner connection: fixtures and assertions that must see every tenant. Bypasses RLS. */
  owner: pg.Pool;
  /** Authenticator connection: everything a request would do (SET LOCAL ROLE per transaction). */
  auth: pg.Pool;
  drop: () => Promise<void>;
}

export function rootUrl(): string {
  const url = process.env[ROOT_URL_ENV];
  if (!url) throw new Error(`${ROOT_URL_ENV} is not set: run the tests with npm test`);
  return url;
}

export async function createTestDb(): Promise<TestDb> {
  const root = rootUrl();
  const name = `cairn_test_${process.env.JEST_WORKER_ID ?? "0"}_${crypto.randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: root });
  await admin.connect();
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.query(`create database ${name} template ${TEMPLATE_DB} owner crm_owner`);
        break;
      } catch (e) {
        // "source database … is being accessed by other users": another worker is cloning right now.
        if ((e as { code?: string }).code !== "55006" || attempt > 50) throw e;
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
      }
    }
    await admin.query(`revoke all on database ${name} from public`);
    await admin.query(`grant connect, temporary on database ${name} to crm_authenticator`);
  } finally {
    await admin.end();
  }
  const dbUrl = withDatabase(root, name);
  const ownerUrl = withCredentials(dbUrl, "crm_owner", TEST_PASSWORDS.owner);
  const authUrl = withCredentials(dbUrl, "crm_authenticator", TEST_PASSWORDS.authenticator);
  const owner = new pg.Pool({ connectionString: ownerUrl, max: 4 });
  const auth = new pg.Pool({ connectionString: authUrl, max: 4 });
  owner.on("error", () => undefined);
  owner.on("connect", (c) => c.on("error", () => undefined));
  auth.on("error", () => undefined);
  return {
    name,
    rootUrl: root,
    ownerUrl,
    authUrl,
    owner,
    auth,
    drop: async () => {
      await Promise.all([owner.end(), auth.end()]);
      const c = new pg.Client({ connectionString: root });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

export interface Claims {
  sub?: string | null;
  org?: string | null;
  sid?: string | null;
  requestId?: string;
  clientIp?: string;
}

/**
 * Run `fn` in one transaction as crm_user (or crm_anonymous when `sub` is absent) with the given
 * claims — exactly what the API does per request. Rolled back unless `commit` is set.
 */
export async function asRole<T>(
  db: TestDb,
  claims: Claims | null,
  fn: (client: pg.PoolClient) => Promise<T>,
  opts: { commit?: boolean; role?: "crm_user" | "crm_anonymous" } = {},
): Promise<T> {
  const client = await db.auth.connect();
  try {
    await client.query("begin");
    const role = opts.role ?? (claims?.sub ? "crm_user" : "crm_anonymous");
    const settings: [string, string][] = [
      ["role", role],
      ["jwt.claims.sub", claims?.sub ?? ""],
      ["jwt.claims.org", claims?.org ?? ""],
      ["jwt.claims.sid", claims?.sid ?? ""],
      ["cairn.request_id", claims?.requestId ?? crypto.randomUUID()],
      ["cairn.client_ip", claims?.clientIp ?? "127.0.0.1"],
    ];
    await client.query("select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el", [JSON.stringify(settings)]);
    const result = await fn(client);
    await client.query(opts.commit ? "commit" : "rollback");
    return result;
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
}

export const asUser = <T>(db: TestDb, claims: Claims, fn: (client: pg.PoolClient) => Promise<T>, opts: { commit?: boolean } = {}) =>
  asRole(db, claims, fn, { ...opts, role: "crm_user" });

export const asAnonymous = <T>(db: TestDb, fn: (client: pg.PoolClient) => Promise<T>, opts: { commit?: boolean } = {}) =>
  asRole(db, null, fn, { ...opts, role: "crm_anonymous" });

/** The SQLSTATE and message of a rejected query (fails the test if it succeeded). */
export async function sqlError(p: Promise<unknown>): Promise<{ code: string; message: string; column?: string; constraint?: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as { code: string; message: string; column?: string; constraint?: string };
    return { code: err.code, message: err.message, column: err.column, constraint: err.constraint };
  }
  throw new Error("expected the query to fail, but it succeeded");
}
