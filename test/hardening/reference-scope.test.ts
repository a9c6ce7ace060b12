// Every reference a caller sets must point at a row the caller can see. Generated from the catalog:
// for every foreign key into a tenant-owned table whose column crm_user may write, a member with
// scoped rights (every permission except the organization-wide `_all`/`_team` ones and users:read)
// tries, through GraphQL, to point one of their own rows at a same-tenant row outside their scope.
// A control request with an allowed value must succeed first, so the test cannot pass by accident.
import crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let server: TestServer;
let t: SeededTenant;
let token: string;

interface Fk {
  child: string;
  parent: string;
  column: string;
  insertable: boolean;
  updatable: boolean;
}

const camel = (s: string) => s.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
/** crm.task_dependencies → TaskDependency (the type PostGraphile names after the table). */
function typeName(table: string): string {
  const words = table.replace(/^crm\./, "").split("_");
  const last = words.pop()!;
  words.push(last.endsWith("ies") ? `${last.slice(0, -3)}y` : last.endsWith("s") ? last.slice(0, -1) : last);
  return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("");
}

/** Columns of a table: name, type, whether crm_user may insert it, whether it is required. */
async function columns(table: string) {
  const { rows } = await db.owner.query<{ name: string; type: string; insertable: boolean; required: boolean }>(
    `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
            has_column_privilege('crm_user', $1::regclass, a.attname, 'INSERT') as insertable,
            a.attnotnull and not a.atthasdef as required
       from pg_attribute a where a.attrelid = $1::regclass and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' and a.attidentity = ''`,
    [table],
  );
  return rows;
}

const hidden = new Map<string, string | null>();

/** A same-tenant row of `table` the caller cannot see: a copy of the fixture row, owned by the admin. */
async function outOfScopeRow(table: string): Promise<string | null> {
  if (hidden.has(table)) return hidden.get(table)!;
  hidden.set(table, null); // guards recursion through self-references
  let id: string | null = null;
  if (table === "crm.organization_memberships") {
    id = (await db.owner.query("select id from crm.organization_memberships where organization_id = $1 and user_id = $2", [t.id, t.adminId])).rows[0].id;
  } else {
    const row = (await db.owner.query(`select to_jsonb(x) as j from ${table} x where organization_id = $1 limit 1`, [t.id])).rows[0]?.j as Record<string, unknown> | undefined;
    if (row && typeof row.id === "string") {
      const cols = await columns(table);
      const fks = (
        await db.owner.query<{ col: string; parent: string }>(
          `select a.attname as col, con.confrelid::regclass::text as parent
             from pg_constraint con cross join lateral unnest(con.conkey) k(n)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n
            where con.conrelid = $1::regclass and con.contype = 'f' and a.attname <> 'organization_id'`,
          [table],
        )
      ).rows;
      const unique = (
        await db.owner.query<{ col: string; type: string }>(
          `select distinct a.attname as col, format_type(a.atttypid, null) as type from pg_index i cross join lateral unnest(i.indkey) k(n)
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n
            where i.indrelid = $1::regclass and i.indisunique and a.attname not in ('id', 'organization_id')`,
          [table],
        )
      ).rows;
      const uniqueText = unique.filter((u) => u.type === "text" || u.type === "citext").map((u) => u.col);
      // Unique numbers (a level's rank): the next free value of the organization.
      const uniqueInt = unique.filter((u) => u.type === "integer" || u.type === "smallint").map((u) => u.col);
      const copy: Record<string, unknown> = { ...row, id: crypto.randomUUID() };
      for (const fk of fks) {
        if (fk.parent === "crm.users" || fk.parent === "crm.organization_memberships") copy[fk.col] = t.adminId;
        else if (copy[fk.col] != null && fk.parent !== table) copy[fk.col] = (await outOfScopeRow(fk.parent)) ?? copy[fk.col];
      }
      for (const c of uniqueText) if (typeof copy[c] === "string") copy[c] = `${copy[c]}-oos`;
      for (const c of uniqueInt) {
        if (typeof copy[c] !== "number") continue;
        copy[c] = (await db.owner.query(`select coalesce(max("${c}"), 0) + 1 as n from ${table} where organization_id = $1`, [t.id])).rows[0].n;
      }
      // "One default / one primary per …" flags: the copy is an ordinary row.
      for (const flag of ["is_default", "is_primary"]) if (flag in copy) copy[flag] = false;
      const list = cols.map((c) => `"${c.name}"`).join(", ");
      await db.owner.query(`insert into ${table} (${list}) select ${list} from jsonb_populate_record(null::${table}, $1)`, [copy]);
      id = copy.id as string;
    }
  }
  if (id) {
    const seen = await asUser(db, { sub: t.memberId, org: t.id }, (c) => c.query(`select count(*)::int as n from ${table} where id = $1`, [id]));
    if (seen.rows[0].n !== 0) id = null; // every row of this table is visible to members: nothing to try
  }
  hidden.set(table, id);
  return id;
}

function graphqlValue(type: string, v: unknown): unknown {
  if (v == null) return v;
  return /^(numeric|bigint)/.test(type) ? String(v) : v;
}

let fks: Fk[] = [];

beforeAll(async () => {
  db = await createTestDb();
  t = await seedTenant(db, "scoped");
  // The fixture's Sales Representative owns every fixture row; give them a role with every right
  // except organization-wide visibility, so that only scope stands between them and other rows.
  const role = (
    await db.owner.query<{ id: string }>(
      `insert into crm.roles (organization_id, name) values ($1, 'Scoped writer') returning id`,
      [t.id],
    )
  ).rows[0]!.id;
  await db.owner.query(
    `insert into crm.role_permissions (organization_id, role_id, permission_code)
     select $1, $2, code from crm.permissions where code !~ '_(all|team)$' and code <> 'users:read'`,
    [t.id, role],
  );
  await db.owner.query("update crm.organization_memberships set role_id = $1 where organization_id = $2 and user_id = $3", [role, t.id, t.memberId]);
  token = (await startSession(db, t.memberId, t.id)).accessToken;
  fks = (
    await db.owner.query<Fk>(`
      select con.conrelid::regclass::text as child, con.confrelid::regclass::text as parent,
             (array_agg(a.attname::text order by k.i desc) filter (where a.attname <> 'organization_id'))[1] as column,
             bool_or(has_column_privilege('crm_user', con.conrelid, a.attname, 'INSERT')) filter (where a.attname <> 'organization_id') as insertable,
             bool_or(has_column_privilege('crm_user', con.conrelid, a.attname, 'UPDATE')) filter (where a.attname <> 'organization_id') as updatable
        from pg_constraint con join pg_namespace n on n.oid = con.connamespace
        cross join lateral unnest(con.conkey) with ordinality k(n, i)
        join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n
       where con.contype = 'f' and n.nspname = 'crm'
         and exists (select 1 from pg_attribute x where x.attrelid = con.confrelid and x.attname = 'organization_id' and not x.attisdropped)
       group by con.oid, con.conrelid, con.confrelid
       order by 1, 3`)
  ).rows.filter((f) => f.insertable || f.updatable);
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("references point only at rows the caller can see", () => {
  test("the catalog has caller-settable foreign keys (referredById among them)", () => {
    expect(fks.map((f) => `${f.child}.${f.column}`)).toContain("crm.customers.referred_by_id");
    expect(fks.length).toBeGreaterThan(15);
  });

  test("each foreign key refuses a same-tenant row outside the caller's scope", async () => {
    const findings: string[] = [];
    const tried: string[] = [];
    for (const fk of fks) {
      const target = await outOfScopeRow(fk.parent);
      if (!target) continue; // every row of the parent is visible to members
      const label = `${fk.child}.${fk.column} → ${fk.parent}`;
      const copies = [...hidden.values()].filter((v): v is string => !!v);
      const row = (
        await db.owner.query(`select to_jsonb(x) as j from ${fk.child} x where organization_id = $1 and coalesce(to_jsonb(x)->>'id', '') <> all ($2::text[]) limit 1`, [t.id, copies])
      ).rows[0]?.j;
      if (!row) {
        findings.push(`${label}: no fixture row in ${fk.child} (add one to seedTenant)`);
        continue;
      }
      const type = typeName(fk.child);
      const field = camel(fk.column);
      const snapshot = async () => (await db.owner.query(`select count(*)::int as n, md5(string_agg(to_jsonb(x)::text, ',' order by to_jsonb(x)::text)) as h from ${fk.child} x where organization_id = $1`, [t.id])).rows[0];
      let attack: { body: { errors?: { extensions?: Record<string, unknown>; message: string }[] } } | undefined;
      let control: typeof attack;
      if (fk.updatable && typeof row.id === "string") {
        const q = `mutation ($id: UUID!, $v: UUID) { m: update${type}(input: { rowId: $id, patch: { ${field}: $v } }) { clientMutationId } }`;
        control = await server.gql(q, { id: row.id, v: row[fk.column] }, { token });
        const after = await snapshot();
        attack = await server.gql(q, { id: row.id, v: target }, { token });
        const final = await snapshot();
        if (final.h !== after.h) findings.push(`${label}: the update was written`);
      } else if (fk.insertable) {
        const cols = await columns(fk.child);
        const input: Record<string, unknown> = {};
        for (const c of cols) if (c.insertable && (c.required || /_id$/.test(c.name)) && row[c.name] != null) input[camel(c.name)] = graphqlValue(c.type, row[c.name]);
        const inputName = type.charAt(0).toLowerCase() + type.slice(1);
        const q = `mutation ($v: ${type}Input!) { m: create${type}(input: { ${inputName}: $v }) { clientMutationId } }`;
        control = await server.gql(q, { v: input }, { token });
        const after = await snapshot();
        attack = await server.gql(q, { v: { ...input, [field]: target } }, { token });
        const final = await snapshot();
        if (final.n !== after.n) findings.push(`${label}: the row was inserted`);
      }
      if (!attack || !control) continue;
      const controlCode = control.body.errors?.[0]?.extensions?.code;
      if (controlCode === "GRAPHQL_VALIDATION") continue; // the API does not let anyone set this column
      if (controlCode && controlCode !== "CONFLICT") {
        findings.push(`${label}: the control request failed (${controlCode}: ${control.body.errors?.[0]?.message}) — the fixture row of ${fk.child} must be writable by its owner`);
        continue;
      }
      const code = attack.body.errors?.[0]?.extensions?.code;
      // A column the API hides from this input (e.g. set only by a job) cannot be pointed anywhere.
      if (code === "GRAPHQL_VALIDATION" && /is not defined by type/.test(attack.body.errors?.[0]?.message ?? "")) continue;
      tried.push(label);
      if (!code) findings.push(`${label}: accepted a row the caller cannot see`);
      else if (!["FORBIDDEN", "NOT_FOUND", "VALIDATION"].includes(String(code))) findings.push(`${label}: ${code} ${attack.body.errors?.[0]?.message}`);
    }
    expect(findings).toEqual([]);
    expect(tried).toContain("crm.customers.referred_by_id → crm.customers");
    expect(tried.length).toBeGreaterThan(10);
  });
});
