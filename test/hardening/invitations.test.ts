// Membership by consent: adding an existing account is an invitation; the person sees it under
// myInvitations and accepts or declines it; until then the inviting organization sees only the
// address it typed, never the account's profile.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { createOrg, createUser, startSession, TEST_PASSWORD, type TestOrg } from "../helpers/identity.ts";
import { jobs } from "../helpers/worker.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let admin: string;

const code = (r: { body: { errors?: { extensions?: Record<string, unknown> }[] } }) => r.body.errors?.[0]?.extensions?.code;
const MY = `{ myInvitations { nodes { rowId organizationName organizationSlug roleName invitedByName expiresAt } } }`;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "inviters");
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const invite = (login: string, role = "Sales Representative") =>
  server.gql<any>(`mutation ($l: String!, $r: UUID!) { addMember(input: { login: $l, roleId: $r }) { result { rowId email username acceptedAt } } }`, { l: login, r: org.roles[role] }, { token: admin });

describe("adding an existing account is an invitation", () => {
  test("by username: the organization sees the username only, not the account", async () => {
    const dana = await createUser(db, "dana", { email: "dana@private.test" });
    const res = await invite("dana");
    expect(res.body.errors).toBeUndefined();
    expect(res.body.data.addMember.result).toMatchObject({ username: "dana", email: null, acceptedAt: null });
    // No membership yet, and the profile stays out of reach.
    expect((await db.owner.query("select count(*)::int as n from crm.organization_memberships where user_id = $1", [dana])).rows[0].n).toBe(0);
    const profile = await server.gql<any>(`query ($u: UUID!) { user(rowId: $u) { email } }`, { u: dana }, { token: admin });
    expect(profile.body.data.user).toBeNull();
    const listed = await server.gql<any>(`{ invitations { nodes { username email } } users { nodes { username } } }`, {}, { token: admin });
    expect(listed.body.data.invitations.nodes).toContainEqual({ username: "dana", email: null });
    expect(listed.body.data.users.nodes.map((u: { username: string }) => u.username)).not.toContain("dana");
  });

  test("the person lists it and accepts it; then they are a member with the invited role", async () => {
    const dana = (await db.owner.query("select id from crm.users where username = 'dana'")).rows[0].id;
    const s = await startSession(db, dana, null);
    const mine = await server.gql<any>(MY, {}, { token: s.accessToken });
    expect(mine.body.data.myInvitations.nodes).toEqual([
      expect.objectContaining({ organizationName: "inviters Inc", organizationSlug: "inviters", roleName: "Sales Representative", invitedByName: "inviters-admin Name" }),
    ]);
    const id = mine.body.data.myInvitations.nodes[0].rowId;
    const accepted = await server.gql<any>(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId role accessToken } } }`, { i: id }, { token: s.accessToken });
    expect(accepted.body.data.acceptInvitation.session).toMatchObject({ organizationId: org.id, role: "Sales Representative" });
    expect((await server.gql<any>(MY, {}, { token: s.accessToken })).body.data.myInvitations.nodes).toEqual([]);
    const profile = await server.gql<any>(`query ($u: UUID!) { user(rowId: $u) { username } }`, { u: dana }, { token: admin });
    expect(profile.body.data.user).toEqual({ username: "dana" });
    const again = await server.gql(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId } } }`, { i: id }, { token: s.accessToken });
    expect(code(again)).toBe("NOT_FOUND");
  });

  test("by e-mail address; the person declines; nothing joins", async () => {
    const eli = await createUser(db, "eli", { email: "eli@example.test" });
    const res = await invite("eli@example.test", "Viewer");
    expect(res.body.data.addMember.result).toMatchObject({ email: "eli@example.test", username: null });
    const s = await startSession(db, eli, null);
    const id = (await server.gql<any>(MY, {}, { token: s.accessToken })).body.data.myInvitations.nodes[0].rowId;
    const declined = await server.gql<any>(`mutation ($i: UUID!) { declineInvitation(input: { invitationId: $i }) { result } }`, { i: id }, { token: s.accessToken });
    expect(declined.body.data.declineInvitation.result).toBe(true);
    const late = await server.gql(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId } } }`, { i: id }, { token: s.accessToken });
    expect(code(late)).toBe("NOT_FOUND");
    expect((await db.owner.query("select count(*)::int as n from crm.organization_memberships where user_id = $1", [eli])).rows[0].n).toBe(0);
    const seen = await server.gql<any>(`{ invitations(condition: { email: "eli@example.test" }) { nodes { declinedAt } } }`, {}, { token: admin });
    expect(seen.body.data.invitations.nodes[0].declinedAt).not.toBeNull();
  });

  test("an invitation is for its addressee only", async () => {
    await createUser(db, "fay", { email: "fay@example.test" });
    const mallory = await createUser(db, "mallory", { email: "mallory@example.test" });
    const id = (await invite("fay")).body.data.addMember.result.rowId;
    const s = await startSession(db, mallory, null);
    expect((await server.gql<any>(MY, {}, { token: s.accessToken })).body.data.myInvitations.nodes).toEqual([]);
    const stolen = await server.gql(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId } } }`, { i: id }, { token: s.accessToken });
    expect(code(stolen)).toBe("NOT_FOUND");
    const declined = await server.gql(`mutation ($i: UUID!) { declineInvitation(input: { invitationId: $i }) { result } }`, { i: id }, { token: s.accessToken });
    expect(code(declined)).toBe("NOT_FOUND");
    const anonymous = await server.gql(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId } } }`, { i: id });
    expect(code(anonymous)).toBe("UNAUTHENTICATED");
  });

  test("signing in to the inviting organization is consent: the invitation is accepted", async () => {
    const fay = (await db.owner.query("select id from crm.users where username = 'fay'")).rows[0].id;
    const login = await server.gql<any>(`mutation { login(input: { login: "fay", password: "${TEST_PASSWORD}", organization: "inviters" }) { session { organizationId role } } }`);
    expect(login.body.data.login.session).toEqual({ organizationId: org.id, role: "Sales Representative" });
    expect((await db.owner.query("select accepted_by from crm.invitations where username = 'fay'")).rows[0].accepted_by).toBe(fay);
    // Without an invitation, signing in to someone else's organization stays refused.
    const other = await server.gql(`mutation { login(input: { login: "mallory", password: "${TEST_PASSWORD}", organization: "inviters" }) { session { organizationId } } }`);
    expect(code(other)).toBe("FORBIDDEN");
  });

  test("the e-mailed token still works for a newcomer", async () => {
    await server.gql(`mutation ($r: UUID!) { inviteMember(input: { email: "newbie@example.test", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, { token: admin });
    const job = (await jobs(db, "email:send")).find((j) => j.payload.to === "newbie@example.test");
    const token = (job!.payload.data as { token: string }).token;
    const r = await server.gql<any>(`mutation ($t: String!) { acceptInvitation(input: { token: $t, username: "newbie", password: "a-long-new-password-1" }) { session { organizationId } } }`, { t: token });
    expect(r.body.data.acceptInvitation.session.organizationId).toBe(org.id);
  });
});
