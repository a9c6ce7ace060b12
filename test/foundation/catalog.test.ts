// The catalog rules (test/helpers/catalog.ts) hold for the migrated schema, and each rule does catch
// what it is meant to catch.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { catalogRules } from "../helpers/catalog.ts";
import pg from "pg";
import { withDatabase } from "../../src/db/bootstrap.ts";

let db: TestDb;
beforeAll(async () => {
  db = await createTestDb();
});
afterAll(async () => {
  await db.drop();
});

describe("catalog rules hold for the migrated schema", () => {
  for (const [rule, check] of Object.entries(catalogRules)) {
    test(rule, async () => {
      expect(await check(db.owner)).toEqual([]);
    });
  }
});

describe("catalog rules catch violations", () => {
  // Each case builds a violation in a rolled-back transaction and expects its rule to name it.
  const cases: [keyof typeof catalogRules, string, string][] = [
    ["tablesWithoutRls", "create table crm.zz_bad (id int primary key, organization_id uuid not null); create index on crm.zz_bad (organization_id)", "crm.zz_bad"],
    ["tenantTablesWithoutIndexedOrganization", "create table crm.zz_bad (id int primary key, organization_id uuid)", "crm.zz_bad"],
    ["foreignKeysWithoutIndex", "create table crm.zz_bad (id int primary key, org uuid references crm.organizations(id))", "zz_bad_org_fkey"],
    [
      "tenantForeignKeysNotComposite",
      "create table crm.zz_parent (id int primary key, organization_id uuid not null); create table crm.zz_child (id int primary key, organization_id uuid not null, parent_id int references crm.zz_parent(id))",
      "zz_child_parent_id_fkey",
    ],
    ["securityDefinerUnpinned", "create function crm_private.zz_bad() returns int language sql security definer as 'select 1'", "zz_bad"],
    ["securityDefinerUnpinned", "create function crm.zz_bad() returns int language sql security definer set search_path = pg_catalog as 'select 1'", "zz_bad"],
    [
      "policyColumnsWithoutIndex",
      "create table crm.zz_bad (id int primary key, organization_id uuid not null, owner uuid); create index on crm.zz_bad (organization_id); alter table crm.zz_bad enable row level security; create policy p on crm.zz_bad using (owner = crm.current_user_id())",
      "crm.zz_bad.owner",
    ],
    ["viewsNotSecurityInvoker", "create view crm.zz_bad as select 1 as x", "crm.zz_bad"],
    ["tenantJobFunctionsNotInvoker", "create function crm_jobs.zz_bad() returns int language sql security definer set search_path = pg_catalog as 'select 1'", "zz_bad"],
    [
      "referencesUnguarded",
      "create table crm.zz_bad (id uuid primary key, organization_id uuid not null, customer_id uuid, foreign key (organization_id, customer_id) references crm.customers (organization_id, id))",
      "crm_private.guard_references('crm.zz_bad')",
    ],
    ["grantedToPublic", "create function crm.zz_pub() returns int language sql as 'select 1'; grant execute on function crm.zz_pub() to public", "zz_pub"],
  ];
  for (const [rule, ddl, expected] of cases) {
    test(`${rule} flags: ${ddl.slice(0, 70)}…`, async () => {
      const client = await db.owner.connect();
      try {
        await client.query("begin");
        await client.query(ddl);
        const offenders = await catalogRules[rule]!(client);
        expect(offenders.join("\n")).toContain(expected);
      } finally {
        await client.query("rollback");
        client.release();
      }
    });
  }

  test("requestRolesCanBypassRls flags a request role that owns a table", async () => {
    // As the superuser, in a transaction that is rolled back (role and ownership changes are transactional).
    const client = new pg.Client({ connectionString: withDatabase(db.rootUrl, db.name) });
    await client.connect();
    try {
      await client.query("begin");
      await client.query("create table crm_private.zz_owned (id int)");
      await client.query("alter table crm_private.zz_owned owner to crm_user");
      await client.query("alter role crm_anonymous bypassrls");
      const problems = (await catalogRules.requestRolesCanBypassRls!(client)).join("\n");
      expect(problems).toContain("crm_user owns 1 relations");
      expect(problems).toContain("crm_anonymous is superuser or BYPASSRLS");
    } finally {
      await client.query("rollback");
      await client.end();
    }
  });
});
