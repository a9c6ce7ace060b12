// The system principal of an organization: a real user that jobs act as, provisioned with every
// organization, that cannot sign in, is not offered as a member, and that tenant administrators
// cannot change — through the doors they use (GraphQL) and in SQL.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, createUser, startSession, TEST_PASSWORD, type TestOrg } from "../helpers/identity.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let other: TestOrg;
let admin: string;
let principal: string;
let systemRole: string;
let systemMembership: string;

const gql = (query: string, variables: Record<string, unknown>, token?: string) => server.gql<any>(query, variables, { token });
const code = (r: { body: { errors?: { extensions?: Record<string, unknown> }[] } }) => r.body.errors?.[0]?.extensions?.code;
const field = (r: { body: { errors?: { extensions?: Record<string, unknown> }[] } }) => r.body.errors?.[0]?.extensions?.field;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "sys-a");
  other = await createOrg(db, "sys-b");
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  principal = (await db.owner.query("select crm.system_principal_id($1) as id", [org.id])).rows[0].id;
  const m = await db.owner.query("select id, role_id from crm.organization_memberships where organization_id = $1 and user_id = $2", [org.id, principal]);
  systemMembership = m.rows[0].id;
  systemRole = m.rows[0].role_id;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("provisioning", () => {
  test("every organization has one, with the internal System role; it belongs to that organization only", async () => {
    const { rows } = await db.owner.query(
      `select o.slug, u.id = crm.system_principal_id(o.id) as derived, u.full_name, u.email, r.name as role, r.is_internal, m.is_active,
              (select count(*)::int from crm.organization_memberships x where x.user_id = u.id) as memberships,
              exists (select 1 from crm_private.user_secrets s where s.user_id = u.id) as has_password
         from crm.organizations o
         join crm.users u on u.system_organization_id = o.id
         join crm.organization_memberships m on m.user_id = u.id and m.organization_id = o.id
         join crm.roles r on r.id = m.role_id
        where o.id = any ($1::uuid[]) order by o.slug`,
      [[org.id, other.id]],
    );
    expect(rows).toEqual([
      { slug: "sys-a", derived: true, full_name: "System", email: null, role: "System", is_internal: true, is_active: true, memberships: 1, has_password: false },
      { slug: "sys-b", derived: true, full_name: "System", email: null, role: "System", is_internal: true, is_active: true, memberships: 1, has_password: false },
    ]);
  });

  test("an organization created through the API gets one too", async () => {
    const uid = await createUser(db, "founder");
    const s = await startSession(db, uid, null);
    const res = await gql(`mutation { createOrganization(input: { name: "Fresh Co" }) { session { organizationId } } }`, {}, s.accessToken);
    expect(res.body.errors).toBeUndefined();
    const orgId = res.body.data.createOrganization.session.organizationId;
    expect(orgId).toBeTruthy();
    const { rows } = await db.owner.query("select crm_private.system_principal_for($1) = crm.system_principal_id($1) as ok", [orgId]);
    expect(rows[0].ok).toBe(true);
  });

  test("the System role holds every code except those that manage access, including codes registered later", async () => {
    const { rows } = await db.owner.query(
      "select array_agg(code order by code) as missing from crm.permissions p where not exists (select 1 from crm.role_permissions rp where rp.role_id = $1 and rp.permission_code = p.code)",
      [systemRole],
    );
    expect(rows[0].missing).toEqual(["permissions:manage", "roles:manage", "teams:manage", "users:create", "users:delete", "users:update"]);
    await db.owner.query("select crm_private.register_permission('zz_later:do', 'a later module', '{}')");
    const later = await db.owner.query("select count(*)::int as n from crm.role_permissions where role_id = $1 and permission_code = 'zz_later:do'", [systemRole]);
    expect(later.rows[0].n).toBe(1);
  });
});

describe("it cannot sign in", () => {
  test("no password, and no session or password can be made for it", async () => {
    const username = (await db.owner.query("select username from crm.users where id = $1", [principal])).rows[0].username;
    const login = await gql(`mutation ($u: String!, $p: String!) { login(input: { login: $u, password: $p }) { session { accessToken } } }`, { u: username, p: TEST_PASSWORD });
    expect(code(login)).toBe("INVALID_CREDENTIALS");
    expect((await sqlError(db.owner.query("select crm_private.start_session($1, $2)", [principal, org.id]))).code).toBe("CRFBD");
    expect((await sqlError(db.owner.query("insert into crm_private.user_secrets (user_id, password_hash) values ($1, 'x')", [principal]))).code).toBe("CRFBD");
  });
});

describe("it is not offered as a member", () => {
  test("member, role and grant lists leave it out; the users list shows it as isSystem (audit entries name it)", async () => {
    const res = await gql(
      `{ organizationMemberships { nodes { userId } } roles { nodes { name } } rolePermissions(condition: { roleId: "${systemRole}" }) { totalCount }
         users { nodes { rowId fullName isSystem } } }`,
      {},
      admin,
    );
    expect(res.body.errors).toBeUndefined();
    const d = res.body.data;
    expect(d.organizationMemberships.nodes.map((n: { userId: string }) => n.userId)).toEqual([org.adminId]);
    expect(d.roles.nodes.map((n: { name: string }) => n.name)).not.toContain("System");
    expect(d.rolePermissions.totalCount).toBe(0);
    expect(d.users.nodes).toContainEqual({ rowId: principal, fullName: "System", isSystem: true });
    expect(d.users.nodes).toContainEqual({ rowId: org.adminId, fullName: "sys-a-admin Name", isSystem: false });
    // Another organization's system principal is invisible.
    const otherPrincipal = (await db.owner.query("select crm.system_principal_id($1) as id", [other.id])).rows[0].id;
    expect(d.users.nodes.map((n: { rowId: string }) => n.rowId)).not.toContain(otherPrincipal);
  });

  test("it cannot be an assignee or owner, or join a team", async () => {
    const task = (await db.owner.query("insert into crm.tasks (organization_id, title) values ($1, 'Call back') returning id", [org.id])).rows[0].id;
    const assign = await gql(`mutation ($t: UUID!, $u: UUID!) { assignTask(input: { taskId: $t, assigneeId: $u }) { result { rowId } } }`, { t: task, u: principal }, admin);
    expect([code(assign), field(assign)]).toEqual(["VALIDATION", "assigneeId"]);
    const customer = await gql(`mutation ($u: UUID!) { createCustomer(input: { customer: { name: "Acme", ownerId: $u } }) { customer { rowId } } }`, { u: principal }, admin);
    // Its membership is hidden from members, so the reference guard refuses it as out of sight.
    expect([code(customer), field(customer)]).toEqual(["FORBIDDEN", "ownerId"]);
    const team = (await db.owner.query("insert into crm.teams (organization_id, name) values ($1, 'Ops') returning id", [org.id])).rows[0].id;
    const join = await gql(`mutation ($t: UUID!, $u: UUID!) { createTeamMember(input: { teamMember: { teamId: $t, userId: $u } }) { teamMember { userId } } }`, { t: team, u: principal }, admin);
    expect([code(join), field(join)]).toEqual(["VALIDATION", "userId"]);
  });
});

describe("tenant administrators cannot change it", () => {
  test("its membership cannot be changed, deactivated or removed (no tenant role reaches its account)", async () => {
    const viewer = org.roles.Viewer;
    const attempts = await Promise.all([
      gql(`mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { rowId } } }`, { m: systemMembership, r: viewer }, admin),
      gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { rowId } } }`, { m: systemMembership }, admin),
      gql(`mutation ($m: UUID!) { removeMember(input: { membershipId: $m }) { result { rowId } } }`, { m: systemMembership }, admin),
    ]);
    expect(attempts.map(code)).toEqual(["FORBIDDEN", "FORBIDDEN", "FORBIDDEN"]);
    const { rows } = await db.owner.query(
      "select m.is_active, m.role_id, u.is_active as user_active from crm.organization_memberships m join crm.users u on u.id = m.user_id where m.id = $1",
      [systemMembership],
    );
    expect(rows[0]).toEqual({ is_active: true, role_id: systemRole, user_active: true });
  });

  test("the System role cannot be renamed, deleted, granted more or stripped, or given to anyone", async () => {
    const rename = await gql(`mutation ($id: UUID!) { updateRole(input: { rowId: $id, patch: { description: "mine now" } }) { role { rowId } } }`, { id: systemRole }, admin);
    expect(rename.body.data?.updateRole?.role ?? null).toBeNull();
    const del = await gql(`mutation ($id: UUID!) { deleteRole(input: { rowId: $id }) { role { rowId } } }`, { id: systemRole }, admin);
    expect(del.body.data?.deleteRole?.role ?? null).toBeNull();
    const grant = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "roles:manage" }) { result { rowId } } }`, { id: systemRole }, admin);
    expect(code(grant)).toBe("FORBIDDEN");
    const revoke = await gql(`mutation ($id: UUID!) { revokePermission(input: { roleId: $id, permissionCode: "tasks:create" }) { result { rowId } } }`, { id: systemRole }, admin);
    expect(code(revoke)).toBe("FORBIDDEN");
    const rep = await addMember(db, org, "sys-a-rep", "Sales Representative");
    const repMembership = (await db.owner.query("select id from crm.organization_memberships where user_id = $1", [rep])).rows[0].id;
    const give = await gql(`mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { rowId } } }`, { m: repMembership, r: systemRole }, admin);
    expect([code(give), field(give)]).toEqual(["VALIDATION", "roleId"]);
    const invite = await gql(`mutation ($r: UUID!) { inviteMember(input: { email: "someone@example.test", roleId: $r }) { result { rowId } } }`, { r: systemRole }, admin);
    expect([code(invite), field(invite)]).toEqual(["VALIDATION", "roleId"]);
    const role = await db.owner.query("select name, description, (select count(*)::int from crm.role_permissions where role_id = $1) as codes from crm.roles where id = $1", [systemRole]);
    expect(role.rows[0].name).toBe("System");
    expect(role.rows[0].codes).toBeGreaterThan(50);
  });

  test("another organization's system principal cannot be invited: it answers like an unknown name", async () => {
    const otherUsername = (await db.owner.query("select username from crm.users where id = crm.system_principal_id($1)", [other.id])).rows[0].username;
    const add = await gql(`mutation ($l: String!, $r: UUID!) { addMember(input: { login: $l, roleId: $r }) { result { rowId } } }`, { l: otherUsername, r: org.roles.Viewer }, admin);
    expect([code(add), field(add)]).toEqual(["NOT_FOUND", "login"]);
    const invitations = await db.owner.query("select count(*)::int as n from crm.invitations where invitee_id = crm.system_principal_id($1)", [other.id]);
    expect(invitations.rows[0].n).toBe(0);
  });
});
