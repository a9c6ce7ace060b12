// Tenant admins act on memberships, never on accounts. Carol belongs to A and to B; for every mutation
// that touches users, memberships or sessions, B's Administrator acts on Carol and A sees nothing
// change: Carol's account, her membership of A, her sessions in A, and her sign-in to A.
// Also: sign-in and switchOrganization by slug and by id; tokens without `exp` are refused.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { signTestToken, startServer, type TestServer } from "../helpers/server.ts";
import { createOrg, createUser, startSession, TEST_PASSWORD, type TestOrg } from "../helpers/identity.ts";

let db: TestDb;
let server: TestServer;
let a: TestOrg;
let b: TestOrg;
let carol: string;
let carolInA: string;
let carolInB: string;
let adminB: string;

const ME = `{ currentUser { username } currentOrganization { slug } }`;
const code = (r: { body: { errors?: { extensions?: Record<string, unknown> }[] } }) => r.body.errors?.[0]?.extensions?.code;

/** What A sees of Carol, read as the owner: her account, her membership of A, her A sessions. */
async function whatASees(): Promise<unknown> {
  const { rows } = await db.owner.query(
    `select to_jsonb(u) - 'updated_at' as account,
            (select to_jsonb(m) - 'updated_at' from crm.organization_memberships m where m.user_id = u.id and m.organization_id = $2) as membership,
            (select jsonb_agg(jsonb_build_object('id', s.id, 'revoked', s.revoked_at is not null) order by s.id)
               from crm_private.sessions s where s.user_id = u.id and s.organization_id = $2) as sessions
       from crm.users u where u.id = $1`,
    [carol, a.id],
  );
  return rows[0];
}

async function carolStillWorksInA(session: { accessToken: string }) {
  const me = await server.gql<any>(ME, {}, { token: session.accessToken });
  expect(me.status).toBe(200);
  expect(me.body.data.currentOrganization.slug).toBe(a.slug);
  const login = await server.gql<any>(`mutation ($o: String) { login(input: { login: "carol", password: "${TEST_PASSWORD}", organization: $o }) { session { organizationId } } }`, { o: a.slug });
  expect(login.body.data?.login?.session?.organizationId).toBe(a.id);
}

beforeAll(async () => {
  db = await createTestDb();
  a = await createOrg(db, "tenant-a");
  b = await createOrg(db, "tenant-b");
  carol = await createUser(db, "carol", { email: "carol@example.test" });
  const m = async (org: TestOrg, role: string) =>
    (await db.owner.query<{ id: string }>("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3) returning id", [org.id, carol, org.roles[role]])).rows[0]!.id;
  carolInA = await m(a, "Sales Representative");
  carolInB = await m(b, "Viewer");
  adminB = (await startSession(db, b.adminId, b.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("B's Administrator acting on a member who also belongs to A changes nothing A sees", () => {
  const cases: { mutation: string; query: string; variables: () => Record<string, unknown>; inB?: (r: any) => void }[] = [
    {
      mutation: "setUserActive (no longer exists)",
      query: `mutation ($u: UUID!) { setUserActive(input: { userId: $u, active: false }) { clientMutationId } }`,
      variables: () => ({ u: carol }),
      inB: (r) => expect(code(r)).toBe("GRAPHQL_VALIDATION"),
    },
    {
      mutation: "updateUser (another person's account)",
      query: `mutation ($u: UUID!) { updateUser(input: { rowId: $u, patch: { fullName: "Hijacked", locale: "fr" } }) { user { rowId } } }`,
      variables: () => ({ u: carol }),
      inB: (r) => expect(code(r)).toBe("NOT_FOUND"),
    },
    {
      mutation: "changeMemberRole",
      query: `mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { roleId } } }`,
      variables: () => ({ m: carolInB, r: b.roles["Sales Manager"] }),
      inB: (r) => expect(r.body.data.changeMemberRole.result.roleId).toBe(b.roles["Sales Manager"]),
    },
    {
      mutation: "changeMemberRole on her membership of A",
      query: `mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { roleId } } }`,
      variables: () => ({ m: carolInA, r: b.roles.Viewer }),
      inB: (r) => expect(code(r)).toBe("NOT_FOUND"),
    },
    {
      mutation: "setMemberActive (deactivate)",
      query: `mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`,
      variables: () => ({ m: carolInB }),
      inB: (r) => expect(r.body.data.setMemberActive.result.isActive).toBe(false),
    },
    {
      mutation: "setMemberActive on her membership of A",
      query: `mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`,
      variables: () => ({ m: carolInA }),
      inB: (r) => expect(code(r)).toBe("NOT_FOUND"),
    },
    {
      mutation: "removeMember",
      query: `mutation ($m: UUID!) { removeMember(input: { membershipId: $m }) { result { rowId } } }`,
      variables: () => ({ m: carolInB }),
      inB: (r) => expect(r.body.data.removeMember.result.rowId).toBe(carolInB),
    },
    {
      mutation: "removeMember on her membership of A",
      query: `mutation ($m: UUID!) { removeMember(input: { membershipId: $m }) { result { rowId } } }`,
      variables: () => ({ m: carolInA }),
      inB: (r) => expect(code(r)).toBe("NOT_FOUND"),
    },
    {
      mutation: "addMember (she is already a member of B)",
      query: `mutation ($r: UUID!) { addMember(input: { login: "carol", roleId: $r }) { result { rowId username email } } }`,
      variables: () => ({ r: b.roles.Viewer }),
      inB: (r) => expect(code(r)).toBe("CONFLICT"),
    },
    {
      mutation: "inviteMember",
      query: `mutation ($r: UUID!) { inviteMember(input: { email: "carol@example.test", roleId: $r }) { result { rowId } } }`,
      variables: () => ({ r: b.roles.Viewer }),
    },
    {
      mutation: "revokeInvitation",
      query: `mutation ($i: UUID!) { revokeInvitation(input: { invitationId: $i }) { result { revokedAt } } }`,
      variables: () => ({ i: "00000000-0000-4000-8000-000000000000" }),
      inB: (r) => expect(code(r)).toBe("NOT_FOUND"),
    },
    { mutation: "logoutAll (the admin's own sessions)", query: `mutation { logoutAll { sessionsEnded } }`, variables: () => ({}) },
  ];

  for (const c of cases) {
    test(c.mutation, async () => {
      const session = await startSession(db, carol, a.id);
      const before = await whatASees();
      const r = await server.gql<any>(c.query, c.variables(), { token: adminB });
      c.inB?.(r);
      expect(await whatASees()).toEqual(before);
      await carolStillWorksInA(session);
      // Restore B for the next case (the admin's own session may have ended).
      await db.owner.query(
        "insert into crm.organization_memberships (id, organization_id, user_id, role_id) values ($1, $2, $3, $4) on conflict (organization_id, user_id) do update set is_active = true, role_id = excluded.role_id",
        [carolInB, b.id, carol, b.roles.Viewer],
      );
      adminB = (await startSession(db, b.adminId, b.id)).accessToken;
    });
  }

  test("deactivating her in B ends her B sessions only", async () => {
    const inA = await startSession(db, carol, a.id);
    const inB = await startSession(db, carol, b.id);
    await server.gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`, { m: carolInB }, { token: adminB });
    expect((await server.gql(ME, {}, { token: inB.accessToken })).status).toBe(401);
    expect((await server.gql(ME, {}, { token: inA.accessToken })).status).toBe(200);
    const revoked = await db.owner.query("select organization_id, revoked_reason from crm_private.sessions where id = any ($1::uuid[])", [[inA.sessionId, inB.sessionId]]);
    expect(revoked.rows.find((r) => r.organization_id === b.id).revoked_reason).toBe("membership_deactivated");
    expect(revoked.rows.find((r) => r.organization_id === a.id).revoked_reason).toBeNull();
  });

  test("what B's admin reads about her: the profile, not her settings or activity", async () => {
    await db.owner.query("update crm.organization_memberships set is_active = true where id = $1", [carolInB]);
    await db.owner.query("update crm.users set preferences = '{\"theme\":\"dark\"}', last_login_at = now() where id = $1", [carol]);
    const r = await server.gql<any>(`query ($u: UUID!) { user(rowId: $u) { username email fullName preferences lastLoginAt emailConfirmedAt } }`, { u: carol }, { token: adminB });
    expect(r.body.data.user).toEqual({ username: "carol", email: "carol@example.test", fullName: "carol Name", preferences: null, lastLoginAt: null, emailConfirmedAt: null });
    const self = await server.gql<any>(`{ currentUser { preferences lastLoginAt } }`, {}, { token: (await startSession(db, carol, b.id)).accessToken });
    expect(self.body.data.currentUser.preferences).toEqual({ theme: "dark" });
    expect(self.body.data.currentUser.lastLoginAt).not.toBeNull();
  });

  test("the account is disabled only through the operator path, which no request role can execute", async () => {
    const { rows } = await db.owner.query(
      "select has_function_privilege(r, 'crm_private.set_account_active(uuid, boolean)', 'execute') as can from unnest(array['crm_user', 'crm_anonymous', 'crm_authenticator']) r",
    );
    expect(rows.map((r) => r.can)).toEqual([false, false, false]);
  });
});

describe("sign-in and switchOrganization name the organization by slug or by id", () => {
  const login = (org: string) =>
    server.gql<any>(`mutation ($o: String) { login(input: { login: "carol", password: "${TEST_PASSWORD}", organization: $o }) { session { accessToken organizationId } } }`, { o: org });

  test("login by slug and by id", async () => {
    for (const key of [a.slug, a.id, b.slug, b.id.toUpperCase()]) {
      const r = await login(key);
      expect(r.body.errors).toBeUndefined();
      expect(r.body.data.login.session.organizationId).toBe(key.toLowerCase() === b.id || key === b.slug ? b.id : a.id);
    }
    expect(code(await login("no-such-org"))).toBe("FORBIDDEN");
  });

  test("switchOrganization by slug and by id", async () => {
    const s = await startSession(db, carol, a.id);
    for (const [key, want] of [[b.slug, b.id], [a.id, a.id]] as const) {
      const r = await server.gql<any>(`mutation ($o: String!) { switchOrganization(input: { organization: $o }) { session { organizationId } } }`, { o: key }, { token: s.accessToken });
      expect(r.body.errors).toBeUndefined();
      expect(r.body.data.switchOrganization.session.organizationId).toBe(want);
    }
  });
});

describe("tokens", () => {
  test("a correctly signed token without exp is refused", async () => {
    const s = await startSession(db, carol, a.id);
    const jwt = await import("jsonwebtoken");
    const claims = jwt.default.decode(s.accessToken) as Record<string, unknown>;
    delete claims.exp;
    delete claims.iat;
    const { TEST_JWT_SECRET, TEST_JWT_ISSUER, TEST_JWT_AUDIENCE } = await import("../helpers/server.ts");
    const { iss: _i, aud: _a, ...rest } = claims;
    const noExp = jwt.default.sign(rest, TEST_JWT_SECRET, { algorithm: "HS256", issuer: TEST_JWT_ISSUER, audience: TEST_JWT_AUDIENCE, noTimestamp: true });
    const r = await server.gql(ME, {}, { token: noExp });
    expect(r.status).toBe(401);
    expect(code(r)).toBe("UNAUTHENTICATED");
    // The same claims with exp work.
    expect((await server.gql(ME, {}, { token: signTestToken(rest) })).status).toBe(200);
  });
});
