// The rules Citus needs to distribute the tenant tables by organization_id (docs/scaling.md, "Citus"),
// checked on the catalog so that a change cannot silently close that path: every tenant table
// carries organization_id, every unique constraint of a tenant table but the primary key includes it
// (the `id` primary keys are what would change, see the document), every foreign key
// between tenant tables includes it on both sides, tenant tables reference global tables only (which
// would become reference tables), and every policy of a tenant table filters on the tenant.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type pg from "pg";
import { GLOBAL_TABLES } from "../helpers/catalog.ts";
import { createTestDb, type TestDb } from "../helpers/db.ts";

type Rule = (db: pg.ClientBase | pg.Pool) => Promise<string[]>;
const GLOBAL = Object.keys(GLOBAL_TABLES);

const rules: Record<string, Rule> = {
  async tenantTablesWithoutOrganizationId(db) {
    const { rows } = await db.query<{ name: string }>(
      `select c.oid::regclass::text as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'crm' and c.relkind in ('r', 'p') and not (c.oid::regclass::text = any ($1))
          and not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'organization_id'
                                                       and a.attnotnull and not a.attisdropped)`,
      [GLOBAL],
    );
    return rows.map((r) => r.name);
  },
  async uniqueConstraintsWithoutOrganizationId(db) {
    const { rows } = await db.query<{ name: string }>(
      `select x.indrelid::regclass::text || ' ' || i.relname as name
         from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class c on c.oid = x.indrelid
         join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'crm' and x.indisunique and not x.indisprimary and not (c.oid::regclass::text = any ($1))
          and not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'organization_id'
                                                       and a.attnum = any (x.indkey::int2[]))`,
      [GLOBAL],
    );
    return rows.map((r) => r.name);
  },
  async tenantForeignKeysWithoutOrganizationId(db) {
    const { rows } = await db.query<{ name: string }>(
      `select con.conrelid::regclass::text || ' ' || con.conname as name
         from pg_constraint con join pg_namespace n on n.oid = con.connamespace
        where con.contype = 'f' and n.nspname = 'crm'
          and not (con.conrelid::regclass::text = any ($1)) and not (con.confrelid::regclass::text = any ($1))
          and not exists (select 1 from unnest(con.conkey, con.confkey) k(child, parent)
                            join pg_attribute ca on ca.attrelid = con.conrelid and ca.attnum = k.child
                            join pg_attribute pa on pa.attrelid = con.confrelid and pa.attnum = k.parent
                           where ca.attname = 'organization_id' and pa.attname = 'organization_id')`,
      [GLOBAL],
    );
    return rows.map((r) => r.name);
  },
  async tenantTablesReferencingOutsideCrm(db) {
    const { rows } = await db.query<{ name: string }>(
      `select con.conrelid::regclass::text || ' → ' || con.confrelid::regclass::text as name
         from pg_constraint con join pg_namespace n on n.oid = con.connamespace
         join pg_class p on p.oid = con.confrelid join pg_namespace pn on pn.oid = p.relnamespace
        where con.contype = 'f' and n.nspname = 'crm' and pn.nspname <> 'crm'`,
    );
    return rows.map((r) => r.name);
  },
  async tenantPoliciesWithoutTenantFilter(db) {
    const { rows } = await db.query<{ name: string }>(
      `select p.polrelid::regclass::text || ' ' || p.polname as name
         from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'crm' and not (c.oid::regclass::text = any ($1))
          and not (coalesce(pg_get_expr(p.polqual, p.polrelid), '') || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
                   ~ 'organization_id = \\( SELECT crm\\.current_org_id\\(\\)')`,
      [GLOBAL],
    );
    return rows.map((r) => r.name);
  },
};

let db: TestDb;
beforeAll(async () => {
  db = await createTestDb();
});
afterAll(async () => {
  await db.drop();
});

describe.each(Object.entries(rules))("%s", (_name, rule) => {
  test("the schema meets it", async () => {
    expect(await rule(db.owner)).toEqual([]);
  });
});

test("the rules catch a table that would not distribute", async () => {
  const client = await db.owner.connect();
  try {
    await client.query("begin");
    await client.query(`create table crm.citus_probe (id uuid primary key, customer_id uuid references crm.customers (id), note text)`);
    await client.query("alter table crm.citus_probe enable row level security");
    await client.query("create policy citus_probe_select on crm.citus_probe for select using (true)");
    expect(await rules.tenantTablesWithoutOrganizationId!(client)).toContain("crm.citus_probe");
    await client.query("create unique index citus_probe_note_key on crm.citus_probe (note)");
    expect(await rules.uniqueConstraintsWithoutOrganizationId!(client)).toContain("crm.citus_probe citus_probe_note_key");
    expect(await rules.tenantForeignKeysWithoutOrganizationId!(client)).toContain("crm.citus_probe citus_probe_customer_id_fkey");
    expect(await rules.tenantPoliciesWithoutTenantFilter!(client)).toContain("crm.citus_probe citus_probe_select");
  } finally {
    await client.query("rollback");
    client.release();
  }
});
