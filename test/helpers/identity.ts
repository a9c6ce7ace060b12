// Identity fixtures written as the owner (the way migrations and the demo seed do), and tokens for
// real sessions, signed as the server signs them.
import crypto from "node:crypto";
import { signAccessToken } from "../../src/graphql/plugins/auth.ts";
import type { TestDb } from "./db.ts";
import { TEST_JWT_AUDIENCE, TEST_JWT_ISSUER, TEST_JWT_SECRET } from "./server.ts";

export const TEST_PASSWORD = "correct horse battery staple";

export interface TestOrg {
  id: string;
  slug: string;
  adminId: string;
  roles: Record<string, string>;
}

export async function createUser(db: TestDb, username: string, opts: { email?: string; password?: string; confirmed?: boolean } = {}): Promise<string> {
  const client = await db.owner.connect();
  try {
    await client.query("begin");
    await client.query("select set_config('cairn.auth.bcrypt_cost', '4', true)");
    const { rows } = await client.query<{ id: string }>(
      "insert into crm.users (username, email, full_name, email_confirmed_at) values ($1, $2, $3, case when $4 then now() end) returning id",
      [username, opts.email ?? `${username}@example.test`, `${username} Name`, opts.confirmed ?? true],
    );
    const id = rows[0]!.id;
    await client.query("insert into crm_private.user_secrets (user_id, password_hash) values ($1, crm_private.hash_password($2))", [
      id,
      opts.password ?? TEST_PASSWORD,
    ]);
    await client.query("commit");
    return id;
  } finally {
    client.release();
  }
}

export async function createOrg(db: TestDb, slug: string): Promise<TestOrg> {
  const adminId = await createUser(db, `${slug}-admin`);
  const { rows } = await db.owner.query<{ id: string }>("select crm_private.create_organization($1, $2, $3) as id", [
    adminId,
    `${slug} Inc`,
    slug,
  ]);
  const orgId = rows[0]!.id;
  const roles = await db.owner.query<{ name: string; id: string }>("select name::text, id from crm.roles where organization_id = $1", [orgId]);
  return { id: orgId, slug, adminId, roles: Object.fromEntries(roles.rows.map((r) => [r.name, r.id])) };
}

export async function addMember(db: TestDb, org: TestOrg, username: string, roleName: string): Promise<string> {
  const userId = await createUser(db, username);
  await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [
    org.id,
    userId,
    org.roles[roleName],
  ]);
  return userId;
}

export interface TestSession {
  accessToken: string;
  refreshToken: string;
  sessionId: string;
  userId: string;
  orgId: string | null;
}

/** Starts a real session in the database and signs its access token like the server does. */
export async function startSession(db: TestDb, userId: string, orgId: string | null): Promise<TestSession> {
  const { rows } = await db.owner.query<{ s: { session: Parameters<typeof signAccessToken>[1] } }>(
    "select crm_private.start_session($1, $2) as s",
    [userId, orgId],
  );
  const s = rows[0]!.s.session;
  const signed = signAccessToken({ jwtSecret: TEST_JWT_SECRET, issuer: TEST_JWT_ISSUER, audience: TEST_JWT_AUDIENCE, accessTokenTtlSeconds: 900 }, s);
  return { accessToken: signed.accessToken, refreshToken: signed.refreshToken, sessionId: s.session_id, userId, orgId };
}

export function uniqueName(prefix: string): string {
  return `${prefix}-${crypto.randomBytes(3).toString("hex")}`;
}
