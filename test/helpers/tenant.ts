// A tenant with at least one row in every tenant-owned table, so generated isolation tests have
// something to try to reach. A new tenant-owned table must be added here: the isolation test fails
// while a table has no fixture rows.
import type { TestDb } from "./db.ts";
import { addMember, createOrg, type TestOrg } from "./identity.ts";

export interface SeededTenant extends TestOrg {
  memberId: string;
  teamId: string;
}

export async function seedTenant(db: TestDb, slug: string): Promise<SeededTenant> {
  const org = await createOrg(db, slug);
  const memberId = await addMember(db, org, `${slug}-rep`, "Sales Representative");
  const q = (sql: string, params: unknown[]) => db.owner.query(sql, params);
  const team = await q("insert into crm.teams (organization_id, name) values ($1, 'Field sales') returning id", [org.id]);
  const teamId = team.rows[0].id as string;
  await q("insert into crm.team_members (organization_id, team_id, user_id, is_lead) values ($1, $2, $3, true)", [org.id, teamId, memberId]);
  await q("insert into crm.roles (organization_id, name, description) values ($1, 'Custom', 'custom role')", [org.id]);
  await q(
    "insert into crm.invitations (organization_id, email, role_id, invited_by, expires_at) values ($1, $2, $3, $4, now() + interval '7 days')",
    [org.id, `invitee@${slug}.test`, org.roles.Viewer, org.adminId],
  );
  // Audit rows come from the triggers above (memberships, teams, roles…).
  return { ...org, memberId, teamId };
}
