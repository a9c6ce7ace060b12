// Every authentication flow through GraphQL over HTTP, against a real server.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import jwt from "jsonwebtoken";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, TEST_JWT_SECRET, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, createUser, TEST_PASSWORD, type TestOrg } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let other: TestOrg;

const LOGIN = `mutation ($login: String!, $password: String!, $organization: String) {
  login(input: { login: $login, password: $password, organization: $organization }) {
    session { accessToken refreshToken userId organizationId role accessTokenExpiresAt refreshTokenExpiresAt }
  }
}`;
const REFRESH = `mutation ($t: String!) { refreshToken(input: { refreshToken: $t }) { session { accessToken refreshToken } } }`;
const ME = `{ currentUser { rowId username } currentOrganization { slug } currentPermissions }`;

type Session = { accessToken: string; refreshToken: string; userId: string; organizationId: string | null; role: string | null };

async function login(login: string, password = TEST_PASSWORD, organization?: string) {
  const res = await server.gql<{ login: { session: Session } | null }>(LOGIN, { login, password, organization }, { headers: { "x-forwarded-for": "" } });
  return { session: res.body.data?.login?.session ?? null, error: res.body.errors?.[0], res };
}

async function loggedIn(username: string, organization?: string): Promise<Session> {
  const { session, error } = await login(username, TEST_PASSWORD, organization);
  if (!session) throw new Error(`login failed: ${JSON.stringify(error)}`);
  return session;
}

/** The raw token of the last email job for an address (the worker would mail it). */
async function tokenFromEmail(to: string, template: string): Promise<string> {
  const queued = (await jobs(db, "email:send")).filter((j) => j.payload.to === to && j.payload.template === template);
  const last = queued[queued.length - 1];
  if (!last) throw new Error(`no ${template} email to ${to}`);
  return String((last.payload.data as { token: string }).token);
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "acme");
  other = await createOrg(db, "globex");
  server = await startServer(db, { LOGIN_MAX_FAILURES: "3", LOGIN_LOCK_SECONDS: "2", LOGIN_IP_MAX_FAILURES: "1000" });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("register", () => {
  test("creates the user and an organization with them as Administrator, queues a confirmation email", async () => {
    const res = await server.gql(
      `mutation { register(input: { username: "newbie", email: "newbie@example.test", password: "a-long-enough-pass", fullName: "New Bie", organizationName: "Newbie & Co" }) {
        userId organizationId emailConfirmationRequired session { accessToken role organizationId } } }`,
    );
    expect(res.body.errors).toBeUndefined();
    const r = res.body.data!.register;
    expect(r.emailConfirmationRequired).toBe(false);
    expect(r.session.role).toBe("Administrator");
    expect(r.session.organizationId).toBe(r.organizationId);
    const me = await server.gql(ME, {}, { token: r.session.accessToken });
    expect(me.body.data!.currentUser.username).toBe("newbie");
    expect(me.body.data!.currentOrganization.slug).toBe("newbie-co");
    expect(me.body.data!.currentPermissions).toContain("roles:manage");
    const decoded = jwt.decode(r.session.accessToken) as Record<string, unknown>;
    expect(decoded).toMatchObject({ sub: r.userId, org: r.organizationId, role: "Administrator", iss: "cairn", aud: "cairn-api" });
    expect(typeof decoded.sid).toBe("string");
    expect(Number(decoded.exp) - Number(decoded.iat)).toBe(900);
    const token = await tokenFromEmail("newbie@example.test", "confirm_email");
    expect(token.length).toBeGreaterThan(30);
    // The token is stored hashed only.
    const { rows } = await db.owner.query("select count(*)::int as n from crm_private.one_time_tokens where token_hash = digest($1, 'sha256')", [token]);
    expect(rows[0].n).toBe(1);
    const raw = await db.owner.query("select count(*)::int as n from crm_private.one_time_tokens where encode(token_hash, 'escape') like '%' || $1 || '%'", [token]);
    expect(raw.rows[0].n).toBe(0);
  });

  test.each([
    [{ username: "newbie", email: "x@example.test" }, "CONFLICT", "username"],
    [{ username: "someone", email: "NEWBIE@example.test" }, "CONFLICT", "email"],
    [{ username: "x", email: "ok@example.test" }, "VALIDATION", "username"],
    [{ username: "valid-name", email: "not-an-email" }, "VALIDATION", "email"],
    [{ username: "valid-name", email: "ok@example.test", password: "short" }, "VALIDATION", "password"],
    [{ username: "valid-name", email: "ok@example.test", password: "valid-name-123456" }, "VALIDATION", "password"],
  ])("refuses %j with %s on %s, writing nothing", async (input, code, field) => {
    const before = await db.owner.query("select count(*)::int as n from crm.users");
    const res = await server.gql(`mutation ($i: RegisterInput!) { register(input: $i) { userId } }`, {
      i: { password: "a-long-enough-pass", ...input },
    });
    expect(res.body.errors?.[0]?.extensions).toMatchObject({ code, field });
    const after = await db.owner.query("select count(*)::int as n from crm.users");
    expect(after.rows[0].n).toBe(before.rows[0].n);
  });

  test("confirmEmail confirms once; the token is single use", async () => {
    const token = await tokenFromEmail("newbie@example.test", "confirm_email");
    const ok = await server.gql(`mutation ($t: String!) { confirmEmail(input: { token: $t }) { success } }`, { t: token });
    expect(ok.body.data).toEqual({ confirmEmail: { success: true } });
    const { rows } = await db.owner.query("select email_confirmed_at from crm.users where username = 'newbie'");
    expect(rows[0].email_confirmed_at).not.toBeNull();
    const again = await server.gql(`mutation ($t: String!) { confirmEmail(input: { token: $t }) { success } }`, { t: token });
    expect(again.body.errors?.[0]?.extensions?.code).toBe("INVALID_TOKEN");
  });

  test("the confirmation email is delivered by the worker", async () => {
    await runJobs(db, { PUBLIC_APP_URL: "https://app.example.test" });
    const { rows } = await db.owner.query("select to_address, subject, body from crm_private.email_outbox where template = 'confirm_email'");
    expect(rows.find((r) => r.to_address === "newbie@example.test")?.body).toContain("https://app.example.test/confirm-email?token=");
    expect(await jobs(db, "email:send")).toEqual([]);
  });
});

describe("login", () => {
  test("a user with one membership lands in it; username or email both work", async () => {
    const byName = await loggedIn("acme-admin");
    expect(byName.organizationId).toBe(org.id);
    expect(byName.role).toBe("Administrator");
    const byEmail = await loggedIn("ACME-ADMIN@example.test");
    expect(byEmail.userId).toBe(byName.userId);
  });

  test("with several memberships: the one asked for, else the last used one", async () => {
    const multi = await addMember(db, org, "multi", "Viewer");
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [
      other.id,
      multi,
      other.roles["Sales Manager"],
    ]);
    const inOther = await loggedIn("multi", "globex");
    expect(inOther).toMatchObject({ organizationId: other.id, role: "Sales Manager" });
    const last = await loggedIn("multi");
    expect(last.organizationId).toBe(other.id);
    const byId = await loggedIn("multi", org.id);
    expect(byId).toMatchObject({ organizationId: org.id, role: "Viewer" });
    expect((await loggedIn("multi")).organizationId).toBe(org.id);
  });

  test("wrong password and unknown user answer the same", async () => {
    const wrong = await login("acme-admin", "not the password");
    const unknown = await login("nobody-at-all", "not the password");
    expect(wrong.session).toBeNull();
    expect(wrong.error?.extensions?.code).toBe("INVALID_CREDENTIALS");
    expect(unknown.error?.extensions?.code).toBe("INVALID_CREDENTIALS");
    expect(unknown.error?.message).toBe(wrong.error?.message);
    await db.owner.query("delete from crm_private.login_throttle");
  });

  test("a disabled account, a disabled membership and a non-member organization have their own codes", async () => {
    await createUser(db, "disabled-user");
    await db.owner.query("update crm.users set is_active = false where username = 'disabled-user'");
    expect((await login("disabled-user")).error?.extensions?.code).toBe("ACCOUNT_DISABLED");
    // …but only with the right password: a wrong one reveals nothing.
    expect((await login("disabled-user", "wrong password")).error?.extensions?.code).toBe("INVALID_CREDENTIALS");
    const m = await addMember(db, org, "benched", "Viewer");
    await db.owner.query("update crm.organization_memberships set is_active = false where user_id = $1", [m]);
    expect((await login("benched")).error?.extensions?.code).toBe("MEMBERSHIP_DISABLED");
    expect((await login("acme-admin", TEST_PASSWORD, "globex")).error?.extensions?.code).toBe("FORBIDDEN");
    await db.owner.query("delete from crm_private.login_throttle");
  });

  test("unconfirmed emails cannot log in when confirmation is required", async () => {
    const strict = await startServer(db, { REQUIRE_EMAIL_CONFIRMATION: "true" });
    try {
      await createUser(db, "unconfirmed", { confirmed: false });
      const r = await strict.gql(LOGIN, { login: "unconfirmed", password: TEST_PASSWORD });
      expect(r.body.errors?.[0]?.extensions?.code).toBe("EMAIL_NOT_CONFIRMED");
      const reg = await strict.gql(
        `mutation { register(input: { username: "strict-new", email: "strict@example.test", password: "a-long-enough-pass" }) { emailConfirmationRequired session { accessToken } } }`,
      );
      expect(reg.body.data?.register).toEqual({ emailConfirmationRequired: true, session: null });
      const token = await tokenFromEmail("strict@example.test", "confirm_email");
      await strict.gql(`mutation ($t: String!) { confirmEmail(input: { token: $t }) { success } }`, { t: token });
      const after = await strict.gql(LOGIN, { login: "strict-new", password: "a-long-enough-pass" });
      expect(after.body.data?.login?.session?.accessToken).toBeTruthy();
    } finally {
      await strict.stop();
    }
  });
});

describe("throttling", () => {
  test("repeated failures lock the account with RATE_LIMITED, even for the right password, then it recovers", async () => {
    await createUser(db, "target");
    for (let i = 0; i < 3; i++) expect((await login("target", "wrong")).error?.extensions?.code).toBe("INVALID_CREDENTIALS");
    expect((await login("target")).error?.extensions?.code).toBe("RATE_LIMITED");
    await new Promise((r) => setTimeout(r, 2200));
    expect((await login("target")).session).not.toBeNull();
  });

  test("a success resets the account counter", async () => {
    await createUser(db, "forgetful");
    await login("forgetful", "wrong");
    await login("forgetful", "wrong");
    expect((await login("forgetful")).session).not.toBeNull();
    await login("forgetful", "wrong");
    await login("forgetful", "wrong");
    expect((await login("forgetful")).session).not.toBeNull();
  });

  test("one client address failing against many accounts is locked out too, across server instances", async () => {
    // A window long enough for two fresh servers to plan their first login on a busy machine.
    const second = await startServer(db, { LOGIN_IP_MAX_FAILURES: "4", LOGIN_LOCK_SECONDS: "30" });
    const first = await startServer(db, { LOGIN_IP_MAX_FAILURES: "4", LOGIN_LOCK_SECONDS: "30" });
    try {
      // Plan the login once on each server first: the four failures must fall inside one 2 s window.
      for (const s of [first, second]) await s.gql(LOGIN, { login: "warm-up", password: "x" });
      await db.owner.query("delete from crm_private.login_throttle");
      for (let i = 0; i < 4; i++) {
        const s = i % 2 ? first : second;
        const r = await s.gql(LOGIN, { login: `no-such-user-${i}`, password: "x" });
        expect(r.body.errors?.[0]?.extensions?.code).toBe("INVALID_CREDENTIALS");
      }
      const blocked = await first.gql(LOGIN, { login: "acme-admin", password: TEST_PASSWORD });
      expect(blocked.body.errors?.[0]?.extensions?.code).toBe("RATE_LIMITED");
    } finally {
      await Promise.all([first.stop(), second.stop()]);
      await db.owner.query("delete from crm_private.login_throttle");
    }
  });
});

describe("tokens and sessions", () => {
  test("refresh rotates: the new pair works and the old refresh token is spent", async () => {
    const s = await loggedIn("acme-admin");
    const r1 = await server.gql(REFRESH, { t: s.refreshToken });
    const next = r1.body.data!.refreshToken.session;
    expect(next.refreshToken).not.toBe(s.refreshToken);
    expect((await server.gql(ME, {}, { token: next.accessToken })).body.data!.currentUser.username).toBe("acme-admin");
    const r2 = await server.gql(REFRESH, { t: next.refreshToken });
    expect(r2.body.data!.refreshToken.session.accessToken).toBeTruthy();
  });

  test("reusing a rotated refresh token revokes the whole family, including its live access token", async () => {
    const s = await loggedIn("acme-admin");
    const rotated = (await server.gql(REFRESH, { t: s.refreshToken })).body.data!.refreshToken.session;
    const reuse = await server.gql(REFRESH, { t: s.refreshToken });
    expect(reuse.body.errors?.[0]?.extensions?.code).toBe("INVALID_TOKEN");
    // The newest refresh token of the family is dead too…
    const newest = await server.gql(REFRESH, { t: rotated.refreshToken });
    expect(newest.body.errors?.[0]?.extensions?.code).toBe("INVALID_TOKEN");
    // …and so is the unexpired access token.
    const me = await server.gql(ME, {}, { token: rotated.accessToken });
    expect(me.status).toBe(401);
  });

  test("logout kills the unexpired access token on the next request; other sessions live on", async () => {
    const a = await loggedIn("acme-admin");
    const b = await loggedIn("acme-admin");
    expect((await server.gql(ME, {}, { token: a.accessToken })).status).toBe(200);
    const out = await server.gql(`mutation { logout { success } }`, {}, { token: a.accessToken });
    expect(out.body.data).toEqual({ logout: { success: true } });
    expect((await server.gql(ME, {}, { token: a.accessToken })).status).toBe(401);
    expect((await server.gql(REFRESH, { t: a.refreshToken })).body.errors?.[0]?.extensions?.code).toBe("INVALID_TOKEN");
    expect((await server.gql(ME, {}, { token: b.accessToken })).status).toBe(200);
  });

  test("logoutAll ends every session of the user", async () => {
    await createUser(db, "everywhere");
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) select $1, id, $2 from crm.users where username = 'everywhere'", [org.id, org.roles.Viewer]);
    const a = await loggedIn("everywhere");
    const b = await loggedIn("everywhere");
    const res = await server.gql(`mutation { logoutAll { success sessionsEnded } }`, {}, { token: a.accessToken });
    expect(res.body.data).toEqual({ logoutAll: { success: true, sessionsEnded: 2 } });
    expect((await server.gql(ME, {}, { token: b.accessToken })).status).toBe(401);
  });

  test("deactivating the user or the membership kills the token on the next request", async () => {
    const userId = await addMember(db, org, "soon-gone", "Sales Representative");
    const s = await loggedIn("soon-gone");
    const admin = await loggedIn("acme-admin");
    const membership = (await db.owner.query("select id from crm.organization_memberships where user_id = $1", [userId])).rows[0].id;
    const off = await server.gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`, { m: membership }, { token: admin.accessToken });
    expect(off.body.data).toEqual({ setMemberActive: { result: { isActive: false } } });
    expect((await server.gql(ME, {}, { token: s.accessToken })).status).toBe(401);
    await server.gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: true }) { result { isActive } } }`, { m: membership }, { token: admin.accessToken });
    const s2 = await loggedIn("soon-gone");
    // Account-wide state is not a tenant admin's to change: only the operator path (owner SQL) disables an account.
    const tenant = await server.gql(`mutation ($u: UUID!) { setUserActive(input: { userId: $u, active: false }) { clientMutationId } }`, { u: userId }, { token: admin.accessToken });
    expect(tenant.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
    await db.owner.query("select crm_private.set_account_active($1, false)", [userId]);
    expect((await server.gql(ME, {}, { token: s2.accessToken })).status).toBe(401);
    expect((await login("soon-gone")).error?.extensions?.code).toBe("ACCOUNT_DISABLED");
  });

  test("switchOrganization returns tokens for another organization of the user, and only such", async () => {
    const s = await loggedIn("multi", "acme");
    const res = await server.gql(`mutation { switchOrganization(input: { organization: "globex" }) { session { accessToken organizationId role } } }`, {}, { token: s.accessToken });
    const next = res.body.data!.switchOrganization.session;
    expect(next).toMatchObject({ organizationId: other.id, role: "Sales Manager" });
    expect((await server.gql(ME, {}, { token: next.accessToken })).body.data!.currentOrganization.slug).toBe("globex");
    const admin = await loggedIn("acme-admin");
    const denied = await server.gql(`mutation { switchOrganization(input: { organization: "globex" }) { session { accessToken } } }`, {}, { token: admin.accessToken });
    expect(denied.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });
});

describe("passwords", () => {
  test("requestPasswordReset answers the same for known and unknown addresses", async () => {
    const q = `mutation ($e: String!) { requestPasswordReset(input: { email: $e }) { success } }`;
    const known = await server.gql(q, { e: "acme-admin@example.test" });
    const unknown = await server.gql(q, { e: "nobody@nowhere.test" });
    expect(known.body).toEqual(unknown.body);
    expect(known.body).toEqual({ data: { requestPasswordReset: { success: true } } });
    expect((await jobs(db, "email:send")).filter((j) => j.payload.to === "nobody@nowhere.test")).toEqual([]);
  });

  test("resetPassword sets the password once and ends every session", async () => {
    await addMember(db, org, "resetter", "Viewer");
    const s = await loggedIn("resetter");
    await server.gql(`mutation { requestPasswordReset(input: { email: "resetter@example.test" }) { success } }`);
    const token = await tokenFromEmail("resetter@example.test", "password_reset");
    const weak = await server.gql(`mutation ($t: String!) { resetPassword(input: { token: $t, newPassword: "short" }) { success } }`, { t: token });
    expect(weak.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "password" });
    const ok = await server.gql(`mutation ($t: String!) { resetPassword(input: { token: $t, newPassword: "brand-new-secret-9" }) { success } }`, { t: token });
    expect(ok.body.data).toEqual({ resetPassword: { success: true } });
    expect((await server.gql(ME, {}, { token: s.accessToken })).status).toBe(401);
    expect((await login("resetter")).error?.extensions?.code).toBe("INVALID_CREDENTIALS");
    expect((await login("resetter", "brand-new-secret-9")).session).not.toBeNull();
    const again = await server.gql(`mutation ($t: String!) { resetPassword(input: { token: $t, newPassword: "another-secret-99" }) { success } }`, { t: token });
    expect(again.body.errors?.[0]?.extensions?.code).toBe("INVALID_TOKEN");
    await db.owner.query("delete from crm_private.login_throttle");
  });

  test("changePassword needs the current password and keeps only this session", async () => {
    await addMember(db, org, "changer", "Viewer");
    const a = await loggedIn("changer");
    const b = await loggedIn("changer");
    const q = `mutation ($c: String!, $n: String!) { changePassword(input: { currentPassword: $c, newPassword: $n }) { success } }`;
    const wrong = await server.gql(q, { c: "nope", n: "fresh-password-123" }, { token: a.accessToken });
    expect(wrong.body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_CREDENTIALS", field: "currentPassword" });
    const ok = await server.gql(q, { c: TEST_PASSWORD, n: "fresh-password-123" }, { token: a.accessToken });
    expect(ok.body.data).toEqual({ changePassword: { success: true } });
    expect((await server.gql(ME, {}, { token: a.accessToken })).status).toBe(200);
    expect((await server.gql(ME, {}, { token: b.accessToken })).status).toBe(401);
  });
});

describe("anonymous callers", () => {
  test("can call the auth mutations but nothing else", async () => {
    expect((await server.gql(ME)).body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const create = await server.gql(`mutation { createRole(input: { role: { name: "Hacker" } }) { role { rowId } } }`);
    expect(create.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const grant = await server.gql(`mutation ($r: UUID!) { grantPermission(input: { roleId: $r, permissionCode: "roles:manage" }) { result { rowId } } }`, { r: org.roles.Viewer });
    expect(grant.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect((await server.gql(`mutation { logout { success } }`)).body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });
});

describe("external issuer", () => {
  const EXT = "external-shared-secret-external-shared-secret";
  let ext: TestServer;
  beforeAll(async () => {
    ext = await startServer(db, { EXTERNAL_JWT_SECRET: EXT, EXTERNAL_JWT_ISSUER: "console.example", EXTERNAL_JWT_ORGANIZATION: "acme" });
  });
  afterAll(async () => {
    await ext?.stop();
  });
  const extToken = (claims: Record<string, unknown>, secret = EXT) =>
    jwt.sign({ iss: "console.example", ...claims }, secret, { algorithm: "HS256", expiresIn: 300 });

  test("an HS256 token from the issuer provisions the user and a membership with the mapped role", async () => {
    const token = extToken({ sub: "console-42", role: "manager", email: "ext42@example.test" });
    const res = await ext.gql(ME, {}, { token });
    expect(res.status).toBe(200);
    expect(res.body.data!.currentOrganization.slug).toBe("acme");
    expect(res.body.data!.currentPermissions).toContain("tasks:assign");
    expect(res.body.data!.currentPermissions).not.toContain("roles:manage");
    const { rows } = await db.owner.query(
      `select r.name::text as role from crm_private.external_identities e
         join crm.organization_memberships m on m.user_id = e.user_id join crm.roles r on r.id = m.role_id
        where e.subject = 'console-42'`,
    );
    expect(rows).toEqual([{ role: "Sales Manager" }]);
    // The role follows the issuer's claim on later requests; user_id works as the subject too.
    const again = await ext.gql(ME, {}, { token: extToken({ user_id: "console-42", role: "agent" }) });
    expect(again.body.data!.currentPermissions).not.toContain("tasks:assign");
    expect(again.body.data!.currentUser.rowId).toBe(res.body.data!.currentUser.rowId);
  });

  test("own tokens keep working next to external ones", async () => {
    const s = await loggedIn("acme-admin");
    expect((await ext.gql(ME, {}, { token: s.accessToken })).status).toBe(200);
  });

  test.each([
    ["signed with another secret", () => extToken({ sub: "x", role: "admin" }, "some-other-secret-some-other-secret")],
    ["from another issuer", () => jwt.sign({ iss: "evil", sub: "x", role: "admin" }, EXT, { algorithm: "HS256", expiresIn: 300 })],
    ["claiming a database role", () => extToken({ sub: "x", role: "crm_owner" })],
    ["claiming the postgres role", () => extToken({ sub: "x", role: "postgres" })],
    ["with an unmapped role", () => extToken({ sub: "x", role: "superhero" })],
    ["without an expiry", () => jwt.sign({ iss: "console.example", sub: "x", role: "admin" }, EXT, { algorithm: "HS256" })],
    ["expired", () => jwt.sign({ iss: "console.example", sub: "x", role: "admin", exp: Math.floor(Date.now() / 1000) - 120 }, EXT, { algorithm: "HS256" })],
    ["alg none", () => jwt.sign({ iss: "console.example", sub: "x", role: "admin" }, "", { algorithm: "none" })],
    ["our own secret but no session", () => jwt.sign({ sub: org.adminId, org: org.id, role: "Administrator" }, TEST_JWT_SECRET, { algorithm: "HS256", expiresIn: 300, issuer: "cairn", audience: "cairn-api" })],
  ])("a token %s gets 401", async (_name, make) => {
    const res = await ext.gql(ME, {}, { token: make() });
    expect(res.status).toBe(401);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
  });

  test("a deactivated external user is refused", async () => {
    await db.owner.query("update crm.users set is_active = false where id = (select user_id from crm_private.external_identities where subject = 'console-42')");
    const res = await ext.gql(ME, {}, { token: extToken({ sub: "console-42", role: "manager" }) });
    expect(res.status).toBe(401);
  });
});
