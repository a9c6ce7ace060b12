// Tenant administration through GraphQL: roles, grants, members, invitations, teams, guard rails and
// the audit trail.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, createUser, startSession, type TestOrg } from "../helpers/identity.ts";
import { jobs } from "../helpers/worker.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let admin: string;
let manager: string;
let managerId: string;

const gql = (query: string, variables: Record<string, unknown>, token: string) => server.gql<any>(query, variables, { token });
const code = (r: { body: { errors?: { extensions?: Record<string, unknown> }[] } }) => r.body.errors?.[0]?.extensions?.code;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "admins");
  managerId = await addMember(db, org, "the-manager", "Sales Manager");
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  manager = (await startSession(db, managerId, org.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("default roles", () => {
  test("every new organization gets the six default roles with their grants", async () => {
    const res = await gql(`{ roles(orderBy: NAME_ASC) { nodes { name isSystem permissionCount } } }`, {}, admin);
    const roles = res.body.data.roles.nodes as { name: string; isSystem: boolean; permissionCount: number }[];
    expect(roles.map((r) => r.name)).toEqual(["Administrator", "Client Viewer", "Finance", "Sales Manager", "Sales Representative", "Viewer"]);
    expect(roles.every((r) => r.isSystem)).toBe(true);
    const all = (await db.owner.query("select count(*)::int as n from crm.permissions")).rows[0].n;
    expect(roles.find((r) => r.name === "Administrator")!.permissionCount).toBe(all);
    const rep = await db.owner.query(
      "select array_agg(permission_code order by permission_code) as codes from crm.role_permissions where role_id = $1",
      [org.roles["Sales Representative"]],
    );
    expect(rep.rows[0].codes).toEqual([
      "ai:use",
      "customers:create", "customers:read_own", "customers:update_own", "deals:create", "deals:read_own", "deals:update_own",
      "notes:create", "orders:create", "projects:read_own",
      "tasks:read_own", "tasks:update_status_own", "teams:read", "worklogs:create", "worklogs:read_own",
    ]);
  });
});

describe("roles and grants", () => {
  let roleId: string;

  test("an admin creates, renames and grants a custom role", async () => {
    const created = await gql(`mutation { createRole(input: { role: { name: "Support", description: "Helps customers" } }) { role { rowId name organizationId } } }`, {}, admin);
    expect(created.body.errors).toBeUndefined();
    roleId = created.body.data.createRole.role.rowId;
    expect(created.body.data.createRole.role.organizationId).toBe(org.id);
    const renamed = await gql(`mutation ($id: UUID!) { updateRole(input: { rowId: $id, patch: { name: "Customer Support" } }) { role { name } } }`, { id: roleId }, admin);
    expect(renamed.body.data.updateRole.role.name).toBe("Customer Support");
    const granted = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "customers:read_team" }) { result { permissionCount } } }`, { id: roleId }, admin);
    expect(granted.body.data.grantPermission.result.permissionCount).toBe(1);
    const dup = await gql(`mutation { createRole(input: { role: { name: "customer support" } }) { role { rowId } } }`, {}, admin);
    expect(dup.body.errors?.[0]?.extensions).toMatchObject({ code: "CONFLICT", field: "name" });
  });

  test("unknown codes and other organizations' roles are refused", async () => {
    const unknown = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "nuclear:launch" }) { result { rowId } } }`, { id: roleId }, admin);
    expect(unknown.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "permissionCode" });
    const otherOrg = await createOrg(db, "elsewhere");
    const foreign = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "teams:read" }) { result { rowId } } }`, { id: otherOrg.roles.Viewer }, admin);
    expect(code(foreign)).toBe("NOT_FOUND");
  });

  test("without roles:manage nothing can be changed", async () => {
    const create = await gql(`mutation { createRole(input: { role: { name: "Mine" } }) { role { rowId } } }`, {}, manager);
    expect(code(create)).toBe("FORBIDDEN");
    const grant = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "tasks:assign" }) { result { rowId } } }`, { id: roleId }, manager);
    expect(code(grant)).toBe("FORBIDDEN");
  });

  test("nobody can grant a code they do not hold", async () => {
    // A role manager without settings:manage.
    await db.owner.query("insert into crm.roles (organization_id, name) values ($1, 'Role Manager')", [org.id]);
    const rm = (await db.owner.query("select id from crm.roles where organization_id = $1 and name = 'Role Manager'", [org.id])).rows[0].id;
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'roles:manage'), ($1, $2, 'customers:read_all')", [org.id, rm]);
    const rmUser = await createUser(db, "role-manager");
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [org.id, rmUser, rm]);
    const token = (await startSession(db, rmUser, org.id)).accessToken;
    const ok = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "customers:read_all" }) { result { rowId } } }`, { id: roleId }, token);
    expect(ok.body.errors).toBeUndefined();
    const escalate = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "settings:manage" }) { result { rowId } } }`, { id: roleId }, token);
    expect(escalate.body.errors?.[0]?.extensions).toMatchObject({ code: "FORBIDDEN", field: "permissionCode" });
    const self = await gql(`mutation ($id: UUID!) { grantPermission(input: { roleId: $id, permissionCode: "users:delete" }) { result { rowId } } }`, { id: rm }, token);
    expect(code(self)).toBe("FORBIDDEN");
  });

  test("default roles cannot be renamed or deleted; a role with members cannot be deleted", async () => {
    const rename = await gql(`mutation ($id: UUID!) { updateRole(input: { rowId: $id, patch: { name: "Boss" } }) { role { name } } }`, { id: org.roles.Administrator }, admin);
    expect(rename.body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_STATE", field: "name" });
    const del = await gql(`mutation ($id: UUID!) { deleteRole(input: { rowId: $id }) { role { rowId } } }`, { id: org.roles.Viewer }, admin);
    expect(code(del)).toBe("INVALID_STATE");
    const used = (await db.owner.query("select id from crm.roles where organization_id = $1 and name = 'Role Manager'", [org.id])).rows[0].id;
    const delUsed = await gql(`mutation ($id: UUID!) { deleteRole(input: { rowId: $id }) { role { rowId } } }`, { id: used }, admin);
    expect(code(delUsed)).toBe("INVALID_STATE");
    const delFree = await gql(`mutation ($id: UUID!) { deleteRole(input: { rowId: $id }) { role { rowId } } }`, { id: roleId }, admin);
    expect(delFree.body.data.deleteRole.role.rowId).toBe(roleId);
  });

  test("the organization always keeps an active member who can manage roles", async () => {
    const revoke = await gql(`mutation ($id: UUID!) { revokePermission(input: { roleId: $id, permissionCode: "roles:manage" }) { result { rowId } } }`, { id: org.roles.Administrator }, admin);
    // The Role Manager member above still holds roles:manage, so this is allowed…
    expect(revoke.body.errors).toBeUndefined();
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'roles:manage')", [org.id, org.roles.Administrator]);
    // …but once only one holder is left, removing the right, the role or the person is refused.
    await db.owner.query("delete from crm.organization_memberships where user_id = (select id from crm.users where username = 'role-manager')");
    const lastRevoke = await gql(`mutation ($id: UUID!) { revokePermission(input: { roleId: $id, permissionCode: "roles:manage" }) { result { rowId } } }`, { id: org.roles.Administrator }, admin);
    expect(code(lastRevoke)).toBe("INVALID_STATE");
    const me = (await db.owner.query("select id from crm.organization_memberships where user_id = $1 and organization_id = $2", [org.adminId, org.id])).rows[0].id;
    const benchSelf = await gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`, { m: me }, admin);
    expect(code(benchSelf)).toBe("INVALID_STATE");
    const demote = await gql(`mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { roleId } } }`, { m: me, r: org.roles.Viewer }, admin);
    expect(code(demote)).toBe("INVALID_STATE");
    const still = await db.owner.query("select count(*)::int as n from crm.role_permissions where role_id = $1 and permission_code = 'roles:manage'", [org.roles.Administrator]);
    expect(still.rows[0].n).toBe(1);
  });
});

describe("members", () => {
  test("add an existing user (they accept), change their role (no escalation), deactivate and remove them", async () => {
    const joiner = await createUser(db, "joiner", { email: "joiner@example.test" });
    const added = await gql(`mutation ($r: UUID!) { addMember(input: { login: "joiner@example.test", roleId: $r }) { result { rowId email roleId } } }`, { r: org.roles["Sales Representative"] }, admin);
    expect(added.body.errors).toBeUndefined();
    // Membership by consent: the person accepts the invitation after signing in.
    const joinerSession = await startSession(db, joiner, null);
    const accepted = await server.gql<any>(`mutation ($i: UUID!) { acceptInvitation(input: { invitationId: $i }) { session { organizationId } } }`, { i: added.body.data.addMember.result.rowId }, { token: joinerSession.accessToken });
    expect(accepted.body.data.acceptInvitation.session.organizationId).toBe(org.id);
    const m = (await gql(`query ($u: UUID!) { organizationMemberships(condition: { userId: $u }) { nodes { rowId isActive } } }`, { u: joiner }, admin)).body.data.organizationMemberships.nodes[0];
    expect(m.isActive).toBe(true);
    const again = await gql(`mutation ($r: UUID!) { addMember(input: { login: "joiner", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, admin);
    expect(code(again)).toBe("CONFLICT");
    const nobody = await gql(`mutation ($r: UUID!) { addMember(input: { login: "nobody-here", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, admin);
    expect(nobody.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "login" });
    // A manager with users:update would still be unable to hand out the Administrator role.
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'users:update')", [org.id, org.roles["Sales Manager"]]);
    const escalate = await gql(`mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { roleId } } }`, { m: m.rowId, r: org.roles.Administrator }, manager);
    expect(escalate.body.errors?.[0]?.extensions).toMatchObject({ code: "FORBIDDEN", field: "roleId" });
    const ok = await gql(`mutation ($m: UUID!, $r: UUID!) { changeMemberRole(input: { membershipId: $m, roleId: $r }) { result { roleId } } }`, { m: m.rowId, r: org.roles.Viewer }, manager);
    expect(ok.body.data.changeMemberRole.result.roleId).toBe(org.roles.Viewer);
    const off = await gql(`mutation ($m: UUID!) { setMemberActive(input: { membershipId: $m, active: false }) { result { isActive } } }`, { m: m.rowId }, admin);
    expect(off.body.data.setMemberActive.result.isActive).toBe(false);
    const removed = await gql(`mutation ($m: UUID!) { removeMember(input: { membershipId: $m }) { result { rowId } } }`, { m: m.rowId }, admin);
    expect(removed.body.data.removeMember.result.rowId).toBe(m.rowId);
  });

  test("members are visible with users:read, other users never", async () => {
    const stranger = await createUser(db, "stranger");
    const list = await gql(`{ users { nodes { username } } organizationMemberships { totalCount } }`, {}, admin);
    const names = (list.body.data.users.nodes as { username: string }[]).map((u) => u.username);
    expect(names).toContain("the-manager");
    expect(names).not.toContain("stranger");
    const direct = await gql(`query ($id: UUID!) { user(rowId: $id) { username } }`, { id: stranger }, admin);
    expect(direct.body.data.user).toBeNull();
    // A Sales Representative has no users:read: they see themselves only.
    await addMember(db, org, "lonely-rep", "Sales Representative");
    const rep = await startSession(db, (await db.owner.query("select id from crm.users where username = 'lonely-rep'")).rows[0].id, org.id);
    const repView = await gql(`{ users { nodes { username } } }`, {}, rep.accessToken);
    expect(repView.body.data.users.nodes).toEqual([{ username: "lonely-rep" }]);
  });

  test("a user edits their own profile but not someone else's", async () => {
    const mine = await gql(`mutation ($id: UUID!) { updateUser(input: { rowId: $id, patch: { fullName: "Max M.", preferences: { theme: "dark" } } }) { user { fullName preferences } } }`, { id: managerId }, manager);
    expect(mine.body.data.updateUser.user).toEqual({ fullName: "Max M.", preferences: { theme: "dark" } });
    const theirs = await gql(`mutation ($id: UUID!) { updateUser(input: { rowId: $id, patch: { fullName: "Hacked" } }) { user { fullName } } }`, { id: org.adminId }, manager);
    expect(theirs.body.data?.updateUser?.user ?? null).toBeNull();
    const isActive = await gql(`mutation ($id: UUID!) { updateUser(input: { rowId: $id, patch: { isActive: false } }) { user { isActive } } }`, { id: managerId }, manager);
    expect(code(isActive)).toBe("GRAPHQL_VALIDATION");
  });
});

describe("invitations", () => {
  test("invite by email; the newcomer accepts with a single-use token and lands in the organization", async () => {
    const inv = await gql(`mutation ($r: UUID!) { inviteMember(input: { email: "new.hire@example.test", roleId: $r }) { result { rowId email expiresAt } } }`, { r: org.roles["Sales Representative"] }, admin);
    expect(inv.body.errors).toBeUndefined();
    const job = (await jobs(db, "email:send")).find((j) => j.payload.to === "new.hire@example.test" && j.payload.template === "invitation");
    const token = (job!.payload.data as { token: string }).token;
    const accept = await server.gql<any>(
      `mutation ($t: String!) { acceptInvitation(input: { token: $t, username: "new-hire", password: "hired-and-happy-1", fullName: "New Hire" }) { session { accessToken role organizationId } } }`,
      { t: token },
    );
    expect(accept.body.errors).toBeUndefined();
    expect(accept.body.data.acceptInvitation.session).toMatchObject({ role: "Sales Representative", organizationId: org.id });
    const reuse = await server.gql(`mutation ($t: String!) { acceptInvitation(input: { token: $t, username: "again", password: "hired-and-happy-2" }) { session { accessToken } } }`, { t: token });
    expect(code(reuse)).toBe("INVALID_TOKEN");
    const listed = await gql(`{ invitations { nodes { email acceptedAt } } }`, {}, admin);
    expect(listed.body.data.invitations.nodes.find((i: { email: string }) => i.email === "new.hire@example.test").acceptedAt).not.toBeNull();
  });

  test("an existing user accepts while signed in; a revoked invitation cannot be used", async () => {
    const existing = await createUser(db, "existing", { email: "existing@example.test" });
    await gql(`mutation ($r: UUID!) { inviteMember(input: { email: "existing@example.test", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, admin);
    const job = (await jobs(db, "email:send")).filter((j) => j.payload.to === "existing@example.test").pop();
    const token = (job!.payload.data as { token: string }).token;
    const session = await startSession(db, existing, null);
    const accepted = await server.gql<any>(`mutation ($t: String!) { acceptInvitation(input: { token: $t }) { session { role } } }`, { t: token }, { token: session.accessToken });
    expect(accepted.body.data.acceptInvitation.session.role).toBe("Viewer");

    const inv = await gql(`mutation ($r: UUID!) { inviteMember(input: { email: "revoked@example.test", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, admin);
    const revokedToken = ((await jobs(db, "email:send")).filter((j) => j.payload.to === "revoked@example.test").pop()!.payload.data as { token: string }).token;
    await gql(`mutation ($id: UUID!) { revokeInvitation(input: { invitationId: $id }) { result { revokedAt } } }`, { id: inv.body.data.inviteMember.result.rowId }, admin);
    const late = await server.gql(`mutation ($t: String!) { acceptInvitation(input: { token: $t, username: "too-late", password: "too-late-password" }) { session { role } } }`, { t: revokedToken });
    expect(code(late)).toBe("INVALID_TOKEN");
  });

  test("inviting needs users:create", async () => {
    const r = await gql(`mutation ($r: UUID!) { inviteMember(input: { email: "x@example.test", roleId: $r }) { result { rowId } } }`, { r: org.roles.Viewer }, manager);
    expect(code(r)).toBe("FORBIDDEN");
  });
});

describe("teams and visible_owner_ids", () => {
  test("managers manage teams; team scope sees the teams' members", async () => {
    const t = await gql(`mutation { createTeam(input: { team: { name: "North" } }) { team { rowId } } }`, {}, manager);
    expect(t.body.errors).toBeUndefined();
    const teamId = t.body.data.createTeam.team.rowId;
    const rep1 = await addMember(db, org, "north-1", "Sales Representative");
    const rep2 = await addMember(db, org, "north-2", "Sales Representative");
    const outsider = await addMember(db, org, "south-1", "Sales Representative");
    for (const u of [rep1, rep2]) {
      const r = await gql(`mutation ($t: UUID!, $u: UUID!) { createTeamMember(input: { teamMember: { teamId: $t, userId: $u } }) { teamMember { userId } } }`, { t: teamId, u }, manager);
      expect(r.body.errors).toBeUndefined();
    }
    const stranger = await createUser(db, "not-a-member");
    const bad = await gql(`mutation ($t: UUID!, $u: UUID!) { createTeamMember(input: { teamMember: { teamId: $t, userId: $u } }) { teamMember { userId } } }`, { t: teamId, u: stranger }, manager);
    expect(code(bad)).toBe("VALIDATION");
    const repNoManage = await gql(`mutation { createTeam(input: { team: { name: "Rogue" } }) { team { rowId } } }`, {}, (await startSession(db, rep1, org.id)).accessToken);
    expect(code(repNoManage)).toBe("FORBIDDEN");
    // A custom role with customers:read_team sees exactly its teams' members; _own sees only itself.
    await db.owner.query("insert into crm.roles (organization_id, name) values ($1, 'Team Lead')", [org.id]);
    const lead = (await db.owner.query("select id from crm.roles where organization_id = $1 and name = 'Team Lead'", [org.id])).rows[0].id;
    await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'customers:read_team')", [org.id, lead]);
    await db.owner.query("update crm.organization_memberships set role_id = $1 where user_id = $2", [lead, rep1]);
    const team = await asUser(db, { sub: rep1, org: org.id }, (c) => c.query("select crm.visible_owner_ids('customers') as ids"));
    expect([...team.rows[0].ids].sort()).toEqual([rep1, rep2].sort());
    const own = await asUser(db, { sub: outsider, org: org.id }, (c) => c.query("select crm.visible_owner_ids('customers') as ids"));
    expect(own.rows[0].ids).toEqual([outsider]);
    const none = await asUser(db, { sub: outsider, org: org.id }, (c) => c.query("select crm.visible_owner_ids('invoices') as ids"));
    expect(none.rows[0].ids).toEqual([]);
  });
});

describe("audit", () => {
  test("every access change is in the audit log with the acting user, readable with audit:read only", async () => {
    const res = await gql(
      `{ auditLogs(first: 100, orderBy: ROW_ID_ASC, filter: { tableName: { in: ["role_permissions", "organization_memberships", "teams"] }, actorId: { isNull: false } }) {
          nodes { tableName operation actorId changes requestId } } }`,
      {},
      admin,
    );
    expect(res.body.errors).toBeUndefined();
    const entries = res.body.data.auditLogs.nodes as { tableName: string; operation: string; actorId: string | null; changes: any; requestId: string | null }[];
    // The grant made through grantPermission (the default grants were written by the system: no actor).
    const grants = entries.filter((e) => e.tableName === "role_permissions" && e.operation === "INSERT" && e.changes.permission_code?.new === "customers:read_team");
    expect(grants.map((g) => g.actorId)).toContain(org.adminId);
    const grant = grants.find((g) => g.actorId === org.adminId);
    expect(grant?.requestId).toBeTruthy();
    const roleChange = entries.find((e) => e.tableName === "organization_memberships" && e.operation === "UPDATE" && e.changes.role_id);
    expect(roleChange?.actorId).toBe(managerId);
    expect(entries.some((e) => e.tableName === "teams" && e.actorId === managerId)).toBe(true);
    const denied = await gql(`{ auditLogs { totalCount } }`, {}, manager);
    expect(denied.body.data.auditLogs.totalCount).toBe(0);
  });

  test("the audit log is append-only, even for the owner", async () => {
    await expect(db.owner.query("update crm.audit_log set operation = 'DELETE'")).rejects.toMatchObject({ code: "42501" });
    await expect(db.owner.query("delete from crm.audit_log")).rejects.toMatchObject({ code: "42501" });
  });
});
