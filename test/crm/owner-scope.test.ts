// Owner-scoped reads after the select policies of customers gained an owner range (an index in list
// order skips other owners' rows): the range only narrows, the scope rule decides. A team lead's range
// holds owners outside the team, whose customers stay hidden; null owners are visible with _all only.
// Also search's e-mail prefixes, which now come from a btree range instead of the trigram index.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { addMember } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let org: SeededTenant;
const reps: string[] = [];
let manager: string;
let lead: string;
let team: string[];
let outside: string[];
const owned = new Map<string, string[]>();

const claims = (sub: string) => ({ sub, org: org.id });
const visibleOwners = async (sub: string, sql = "select owner_id from crm.customers order by name, id") =>
  asUser(db, claims(sub), async (c) => (await c.query(sql)).rows.map((r) => r.owner_id as string | null));

beforeAll(async () => {
  db = await createTestDb();
  org = await seedTenant(db, "scope");
  manager = await addMember(db, org, "scope-manager", "Sales Manager");
  for (let i = 0; i < 6; i++) reps.push(await addMember(db, org, `scope-rep${i}`, "Sales Representative"));
  // The team: the lowest and the highest rep id, so every other rep lies inside the team's range.
  const sorted = [...reps].sort();
  team = [sorted[0]!, sorted[5]!];
  outside = sorted.slice(1, 5);
  lead = await addMember(db, org, "scope-lead", "Sales Representative");
  const teamId = (await db.owner.query("insert into crm.teams (organization_id, name) values ($1, 'Range') returning id", [org.id])).rows[0].id;
  for (const u of [...team, lead]) await db.owner.query("insert into crm.team_members (organization_id, team_id, user_id) values ($1, $2, $3)", [org.id, teamId, u]);
  const role = (await db.owner.query("insert into crm.roles (organization_id, name) values ($1, 'Scope Lead') returning id", [org.id])).rows[0].id;
  await db.owner.query("insert into crm.role_permissions (organization_id, role_id, permission_code) values ($1, $2, 'customers:read_team')", [org.id, role]);
  await db.owner.query("update crm.organization_memberships set role_id = $1 where organization_id = $2 and user_id = $3", [role, org.id, lead]);
  for (const [i, u] of [...reps, lead].entries()) {
    const { rows } = await db.owner.query(
      "insert into crm.customers (organization_id, name, owner_id, email) select $1, 'Scope ' || $3 || '-' || g, $2, 'Desk' || $3 || '.' || g || '@Scope.example' from generate_series(1, 3) g returning id",
      [org.id, u, i],
    );
    owned.set(u, rows.map((r) => r.id));
  }
  // A removed member's customer (no owner) and a deleted one.
  await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Scope orphan', null)", [org.id]);
  await db.owner.query("update crm.customers set deleted_at = now() where id = $1", [owned.get(team[0]!)![2]]);
});
afterAll(async () => {
  await db?.drop();
});

describe("owner-scoped customer reads", () => {
  test("a team lead sees the team's customers and their own, never those of owners inside the team's id range", async () => {
    const seen = await visibleOwners(lead, "select owner_id from crm.customers where name like 'Scope %' order by name, id");
    expect(new Set(seen)).toEqual(new Set([...team, lead]));
    expect(seen).toHaveLength(2 + 3 + 3); // one of the first team member's customers is deleted
    for (const u of outside) expect(seen).not.toContain(u);
  });

  test("a Sales Representative sees their own customers only, in list order", async () => {
    const rep = outside[1]!;
    const rows = await asUser(db, claims(rep), async (c) => (await c.query("select id, owner_id from crm.customers order by name, id limit 20")).rows);
    expect(rows.map((r) => r.id)).toEqual(owned.get(rep));
    expect(await asUser(db, claims(rep), async (c) => (await c.query("select count(*)::int as n from crm.customers where owner_id is null")).rows[0].n)).toBe(0);
  });

  test("a Sales Manager sees every live customer, those without an owner included", async () => {
    const seen = await visibleOwners(manager, "select owner_id from crm.customers where name like 'Scope %' order by name, id");
    expect(seen).toHaveLength(7 * 3 - 1 + 1);
    expect(seen).toContain(null);
    const live = (await db.owner.query("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [org.id])).rows[0].n;
    expect(await asUser(db, claims(manager), async (c) => (await c.query("select count(*)::int as n from crm.customers")).rows[0].n)).toBe(live);
  });
});

describe("search by e-mail prefix", () => {
  const search = (sub: string, q: string) =>
    asUser(db, claims(sub), async (c) => (await c.query("select entity, record_id from crm.search($1, array['customer'])", [q])).rows.map((r) => r.record_id as string));

  test("matches the start of an address in any case, within what the caller can see", async () => {
    const rep = outside[0]!;
    const i = reps.indexOf(rep);
    const mine = owned.get(rep)!;
    expect(await search(rep, `desk${i}.`)).toEqual(expect.arrayContaining(mine));
    expect(await search(rep, `DESK${i}.2@scope`)).toContain(mine[1]);
    expect(await search(manager, `Desk${i}.`)).toEqual(expect.arrayContaining(mine));
    expect(await search(outside[2]!, `desk${i}.`)).toEqual([]);
  });

  test("a fragment from the middle of an address is not a prefix match", async () => {
    // "esk3." occurs inside the addresses, never at their start; names do not contain it either.
    expect(await search(manager, "esk3.")).toEqual([]);
  });
});
