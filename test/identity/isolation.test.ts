// Tenant isolation, generated from the catalog: for every table in `crm`, a user of organization A
// (an Administrator, holding every permission) can neither read, insert, update nor delete
// organization B's rows — over SQL as crm_user and over GraphQL — and an anonymous caller can do
// nothing but the auth mutations.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asAnonymous, asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, startSession } from "../helpers/identity.ts";
import { issuedInvoice } from "../helpers/finance.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { GLOBAL_TABLES } from "../helpers/catalog.ts";

let db: TestDb;
let server: TestServer;
let a: SeededTenant;
let b: SeededTenant;
let tokenA: string;
let tenantTables: string[];
let allTables: string[];

/** Functions anonymous callers may execute: the authentication entry points. */
const ANONYMOUS_FUNCTIONS = new Set([
  "crm.login(text,text,text)",
  "crm.refresh_session(text)",
  "crm.register(text,text,text,text,text)",
  "crm.confirm_email(text)",
  "crm.request_password_reset(text)",
  "crm.reset_password(text,text)",
  "crm.accept_invitation(text,text,text,text,uuid)",
  "crm.current_user_id()",
  "crm.current_org_id()",
  "crm.current_session_id()",
]);

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "tenant-a");
  b = await seedTenant(db, "tenant-b");
  const { rows } = await db.owner.query<{ name: string; tenant: boolean }>(`
    select c.oid::regclass::text as name,
           exists (select 1 from pg_attribute x where x.attrelid = c.oid and x.attname = 'organization_id' and not x.attisdropped) as tenant
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'crm' and c.relkind in ('r', 'p') order by 1`);
  allTables = rows.map((r) => r.name);
  tenantTables = rows.filter((r) => r.tenant && !(r.name in GLOBAL_TABLES)).map((r) => r.name);
  tokenA = (await startSession(db, a.adminId, a.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const userA = () => ({ sub: a.adminId, org: a.id });

describe("SQL as crm_user: organization A cannot reach organization B", () => {
  test("the fixture has rows of B in every tenant-owned table (add fixtures for new tables)", async () => {
    expect(tenantTables.length).toBeGreaterThanOrEqual(7);
    const empty: string[] = [];
    for (const t of tenantTables) {
      const { rows } = await db.owner.query(`select count(*)::int as n from ${t} where organization_id = $1`, [b.id]);
      if (rows[0].n === 0) empty.push(t);
    }
    expect(empty).toEqual([]);
  });

  test("read: no row of B is visible, and A sees its own", async () => {
    const leaks: string[] = [];
    for (const t of tenantTables) {
      await asUser(db, userA(), async (c) => {
        const { rows } = await c.query(`select count(*) filter (where organization_id = $1)::int as b, count(*)::int as total from ${t}`, [b.id]);
        if (rows[0].b !== 0) leaks.push(`${t}: ${rows[0].b} rows of B`);
      }).catch((e: { code?: string }) => {
        if (e.code !== "42501") throw e;
      });
    }
    expect(leaks).toEqual([]);
  });

  test("update and delete: B's rows are untouched", async () => {
    const touched: string[] = [];
    for (const t of tenantTables) {
      for (const stmt of [`update ${t} set organization_id = organization_id where organization_id = $1`, `delete from ${t} where organization_id = $1`]) {
        await asUser(db, userA(), async (c) => {
          await c.query("savepoint s");
          try {
            const r = await c.query(stmt, [b.id]);
            if (r.rowCount) touched.push(`${stmt}: ${r.rowCount}`);
          } catch (e) {
            // Refused outright is fine (no grant, append-only, guard rails); anything else is a finding.
            if (!["42501", "CRSTA", "23503"].includes((e as { code: string }).code)) touched.push(`${stmt}: ${(e as Error).message}`);
          }
        });
      }
    }
    expect(touched).toEqual([]);
  });

  test("insert: a copy of B's row, or a row claiming B, is refused", async () => {
    const accepted: string[] = [];
    for (const t of tenantTables) {
      const cols = (
        await db.owner.query<{ attname: string }>(
          `select attname from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped
             and attidentity = '' and attgenerated = '' order by attnum`,
          [t],
        )
      ).rows.map((r) => `"${r.attname}"`);
      const row = (await db.owner.query(`select to_jsonb(x) as j from ${t} x where organization_id = $1 limit 1`, [b.id])).rows[0].j;
      const err = await sqlError(
        asUser(db, userA(), (c) =>
          c.query(`insert into ${t} (${cols.join(", ")}) select ${cols.join(", ")} from jsonb_populate_record(null::${t}, $1)`, [row]),
        ),
      ).catch(() => null);
      if (!err) accepted.push(t);
      else if (err.code !== "42501") accepted.push(`${t}: refused with ${err.code} ${err.message}, expected 42501`);
    }
    expect(accepted).toEqual([]);
  });

  test("global tables: A sees only its own organization and the users of its own organization", async () => {
    await asUser(db, userA(), async (c) => {
      const orgs = await c.query("select id from crm.organizations");
      expect(orgs.rows.map((r) => r.id)).toEqual([a.id]);
      const users = await c.query("select id from crm.users where id = any ($1::uuid[])", [[b.adminId, b.memberId]]);
      expect(users.rows).toEqual([]);
      const upd = await c.query("update crm.users set full_name = 'pwned' where id = $1", [b.adminId]);
      expect(upd.rowCount).toBe(0);
      const orgUpd = await c.query("update crm.organizations set name = 'pwned' where id = $1", [b.id]);
      expect(orgUpd.rowCount).toBe(0);
    });
  });
});

describe("GraphQL as organization A's Administrator", () => {
  let connections: { field: string; type: string; fields: string[] }[];
  beforeAll(async () => {
    const res = await server.gql<any>(`{ __schema { queryType { fields { name type { name kind fields { name type { name kind ofType { name } } } } } } } }`, {}, { token: tokenA });
    const query = res.body.data.__schema.queryType.fields as any[];
    const typeFields = async (name: string) =>
      ((await server.gql<any>(`query ($n: String!) { __type(name: $n) { fields { name } } }`, { n: name }, { token: tokenA })).body.data.__type.fields as { name: string }[]).map((f) => f.name);
    connections = [];
    for (const f of query.filter((f) => f.type?.name?.endsWith("Connection"))) {
      const nodeType = f.type.name.replace(/Connection$/, "");
      connections.push({ field: f.name, type: nodeType, fields: await typeFields(nodeType) });
    }
  });

  test("every table readable over SQL has a list field, and every list shows only A's rows", async () => {
    expect(connections.length).toBeGreaterThanOrEqual(tenantTables.length);
    const leaks: string[] = [];
    for (const c of connections.filter((c) => c.fields.includes("organizationId"))) {
      const res = await server.gql<any>(`{ ${c.field}(first: 100) { nodes { organizationId } } }`, {}, { token: tokenA });
      expect(res.body.errors).toBeUndefined();
      const orgs = new Set((res.body.data[c.field].nodes as { organizationId: string }[]).map((n) => n.organizationId));
      orgs.delete(a.id);
      if (orgs.size) leaks.push(`${c.field}: ${[...orgs].join(", ")}`);
    }
    expect(leaks).toEqual([]);
  });

  test("B's rows cannot be fetched, updated or deleted by id", async () => {
    const findings: string[] = [];
    for (const t of tenantTables) {
      const { rows } = await db.owner.query(`select to_jsonb(x) as j from ${t} x where organization_id = $1 limit 1`, [b.id]);
      const row = rows[0].j;
      // Tables keyed by a composite key or a bigint (history, audit) are covered by the list and SQL tests.
      if (typeof row.id !== "string" || !/^[0-9a-f-]{36}$/.test(row.id)) continue;
      const typeName = connections.find((c) => c.type === tableToTypeName(t))?.type;
      if (!typeName) {
        findings.push(`${t}: no list field`);
        continue;
      }
      const single = typeName.charAt(0).toLowerCase() + typeName.slice(1);
      const get = await server.gql<any>(`query ($id: UUID!) { r: ${single}(rowId: $id) { rowId } }`, { id: row.id }, { token: tokenA });
      if (get.body.data?.r) findings.push(`${single}: B's row visible`);
      // Generated delete mutations, or the soft-delete functions that replace them.
      const del = await server.gql<any>(`mutation ($id: UUID!) { r: delete${typeName}(input: { rowId: $id }) { clientMutationId } }`, { id: row.id }, { token: tokenA });
      const soft = await server.gql<any>(`mutation ($id: UUID!) { r: delete${typeName}(input: { id: $id }) { clientMutationId } }`, { id: row.id }, { token: tokenA });
      for (const r of [del, soft]) {
        const c = r.body.errors?.[0]?.extensions?.code;
        if (!r.body.errors) findings.push(`delete${typeName}: no error`);
        else if (!["NOT_FOUND", "FORBIDDEN", "GRAPHQL_VALIDATION"].includes(String(c))) findings.push(`delete${typeName}: ${c} ${r.body.errors[0]?.message}`);
      }
      if (del.body.errors?.[0]?.extensions?.code === "GRAPHQL_VALIDATION" && soft.body.errors?.[0]?.extensions?.code === "GRAPHQL_VALIDATION") {
        if (!["crm.audit_log"].includes(t) && !(await tableHidesDelete(t))) findings.push(`${t}: no delete mutation at all`);
      }
      const still = await db.owner.query(`select count(*)::int as n from ${t} where id = $1`, [row.id]);
      if (still.rows[0].n !== 1) findings.push(`${t}: B's row was deleted`);
    }
    expect(findings).toEqual([]);
  });

  test("updates through generated mutations cannot move or change B's rows", async () => {
    const role = (await db.owner.query("select id from crm.roles where organization_id = $1 and name = 'Custom'", [b.id])).rows[0].id;
    const team = b.teamId;
    const r1 = await server.gql(`mutation ($id: UUID!) { updateRole(input: { rowId: $id, patch: { name: "pwned" } }) { role { rowId } } }`, { id: role }, { token: tokenA });
    const r2 = await server.gql(`mutation ($id: UUID!) { updateTeam(input: { rowId: $id, patch: { name: "pwned" } }) { team { rowId } } }`, { id: team }, { token: tokenA });
    // A row the caller cannot see is not there for them: the generated mutation updates nothing and says NOT_FOUND.
    for (const [r, field] of [[r1, "updateRole"], [r2, "updateTeam"]] as const) {
      expect(r.body.data).toEqual({ [field]: null });
      expect(r.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    }
    const names = await db.owner.query("select name::text from crm.roles where id = $1 union all select name::text from crm.teams where id = $2", [role, team]);
    expect(names.rows.map((r) => r.name)).toEqual(["Custom", "Field sales"]);
  });
});

/** Tables whose rows are only removed through functions or never (history, memberships). */
async function tableHidesDelete(table: string): Promise<boolean> {
  const { rows } = await db.owner.query("select coalesce(obj_description($1::regclass, 'pg_class'), '') as c", [table]);
  return /@behavior[^\n]*-delete/.test(rows[0].c);
}

/** crm.task_dependencies → TaskDependency (the type PostGraphile names after the table). */
function tableToTypeName(table: string): string {
  const words = table.replace(/^crm\./, "").split("_");
  const last = words.pop()!;
  words.push(last.endsWith("ies") ? `${last.slice(0, -3)}y` : last.endsWith("s") ? last.slice(0, -1) : last);
  return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("");
}

// A client principal of A (seed 002's Client Viewer, "own only"): linked to A's fixture customer, it
// sees that customer, its invoices (and their lines) and its projects, its own membership, and no
// row of any other tenant table — generated over every table, in SQL and over GraphQL.
describe("a Client Viewer of organization A", () => {
  let clientId: string;
  let clientToken: string;
  let expected: Record<string, string[]>;
  beforeAll(async () => {
    clientId = await addMember(db, a, "tenant-a-client", "Client Viewer");
    const membership = (await db.owner.query("select id from crm.organization_memberships where organization_id = $1 and user_id = $2", [a.id, clientId])).rows[0].id;
    // Another customer of A, with a project and an invoice the client must not see.
    const other = (await db.owner.query("insert into crm.customers (organization_id, name, owner_id) values ($1, 'Someone else', $2) returning id", [a.id, a.memberId])).rows[0].id;
    await db.owner.query("insert into crm.projects (organization_id, customer_id, name) values ($1, $2, 'Not yours')", [a.id, other]);
    await issuedInvoice(db, a.id, a.adminId, other);
    const link = await server.gql<any>(
      `mutation ($m: UUID!, $c: UUID!) { setClientCustomer(input: { membershipId: $m, customerId: $c }) { result { clientCustomerId } } }`,
      { m: membership, c: a.customerId },
      { token: tokenA },
    );
    expect(link.body.errors).toBeUndefined();
    clientToken = (await startSession(db, clientId, a.id)).accessToken;
    const ids = async (sql: string) => (await db.owner.query(sql, [a.id, a.customerId])).rows.map((r) => r.id as string).sort();
    expected = {
      "crm.customers": [a.customerId],
      "crm.projects": await ids("select id from crm.projects where organization_id = $1 and customer_id = $2 and deleted_at is null"),
      "crm.invoices": await ids("select id from crm.invoices where organization_id = $1 and customer_id = $2"),
      "crm.invoice_items": await ids("select x.id from crm.invoice_items x join crm.invoices i on i.id = x.invoice_id where x.organization_id = $1 and i.customer_id = $2"),
      "crm.organization_memberships": [membership],
    };
    expect(expected["crm.invoices"]!.length).toBeGreaterThan(0);
    expect(expected["crm.projects"]!.length).toBeGreaterThan(0);
  });

  test("SQL: exactly its customer's rows in customers, projects, invoices and their lines; nothing in any other tenant table", async () => {
    const seen: Record<string, string[]> = {};
    for (const t of tenantTables) {
      await asUser(db, { sub: clientId, org: a.id }, async (c) => {
        const hasId = (await c.query("select 1 from pg_attribute where attrelid = $1::regclass and attname = 'id'", [t])).rowCount;
        const { rows } = await c.query(`select ${hasId ? "id::text" : "null"} as id from ${t}`);
        if (rows.length) seen[t] = rows.map((r) => r.id as string).sort();
      }).catch((e: { code?: string }) => {
        if (e.code !== "42501") throw e;
      });
    }
    expect(seen).toEqual(expected);
  });

  test("GraphQL: every list shows only those rows", async () => {
    const res0 = await server.gql<any>(`{ __schema { queryType { fields { name type { name fields { name } } } } } }`, {}, { token: tokenA });
    const lists = (res0.body.data.__schema.queryType.fields as any[]).filter((f) => f.type?.name?.endsWith("Connection"));
    const connections: { field: string; fields: string[] }[] = [];
    for (const f of lists) {
      const t = await server.gql<any>(`query ($n: String!) { __type(name: $n) { fields { name } } }`, { n: f.type.name.replace(/Connection$/, "") }, { token: tokenA });
      if (t.body.data.__type) connections.push({ field: f.name, fields: (t.body.data.__type.fields as { name: string }[]).map((x) => x.name) });
    }
    expect(connections.length).toBeGreaterThanOrEqual(tenantTables.length);
    const seen: Record<string, string[]> = {};
    for (const c of connections.filter((c) => c.fields.includes("organizationId"))) {
      const idField = c.fields.includes("rowId") ? "rowId" : "organizationId";
      const res = await server.gql<any>(`{ ${c.field}(first: 100) { nodes { ${idField} } } }`, {}, { token: clientToken });
      if (res.body.errors) {
        expect(res.body.errors[0]?.extensions?.code).toBe("FORBIDDEN");
        continue;
      }
      const nodes = res.body.data[c.field].nodes as Record<string, string>[];
      if (nodes.length) seen[c.field] = nodes.map((n) => n[idField]!).sort();
    }
    expect(seen).toEqual({
      customers: expected["crm.customers"],
      projects: expected["crm.projects"],
      invoices: expected["crm.invoices"],
      invoiceItems: expected["crm.invoice_items"],
      organizationMemberships: expected["crm.organization_memberships"],
    });
  });

  test("GraphQL: its customer's invoices with their lines, and another customer's invoice is not found", async () => {
    const r = await server.gql<any>(`{ invoices { nodes { rowId number total customer { name } invoiceItems { totalCount } } } projects { nodes { name } } }`, {}, { token: clientToken });
    expect(r.body.errors).toBeUndefined();
    expect(r.body.data.invoices.nodes.every((n: any) => n.customer.name === "tenant-a customer" && n.invoiceItems.totalCount > 0)).toBe(true);
    expect(r.body.data.projects.nodes.map((n: any) => n.name)).toEqual(["Onboarding"]);
    const hidden = (await db.owner.query("select id from crm.invoices where organization_id = $1 and customer_id <> $2 limit 1", [a.id, a.customerId])).rows[0].id;
    const one = await server.gql<any>(`query ($id: UUID!) { invoice(rowId: $id) { rowId } }`, { id: hidden }, { token: clientToken });
    expect(one.body.data.invoice).toBeNull();
    const write = await server.gql<any>(`mutation ($id: UUID!) { issueInvoice(input: { invoiceId: $id }) { result { rowId } } }`, { id: hidden }, { token: clientToken });
    expect(write.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });
});

describe("anonymous callers", () => {
  test("SQL: no table in crm is readable or writable", async () => {
    const open: string[] = [];
    for (const t of allTables) {
      const err = await sqlError(asAnonymous(db, (c) => c.query(`select 1 from ${t} limit 1`))).catch(() => null);
      if (!err || err.code !== "42501") open.push(t);
    }
    expect(open).toEqual([]);
  });

  test("SQL: the only functions they may execute are the authentication entry points", async () => {
    const { rows } = await db.owner.query<{ f: string }>(`
      select replace(p.oid::regprocedure::text, ' ', '') as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname in ('crm', 'crm_private') and has_function_privilege('crm_anonymous', p.oid, 'execute')`);
    expect(rows.map((r) => r.f).filter((f) => !ANONYMOUS_FUNCTIONS.has(f))).toEqual([]);
  });

  test("GraphQL: every list is forbidden", async () => {
    const res = await server.gql<any>(`{ __schema { queryType { fields { name args { name type { kind } } type { name } } } } }`);
    type F = { name: string; args: { name: string; type: { kind: string } }[]; type: { name: string | null } };
    // Lists that need arguments (search, timeline) are exercised in their own tests.
    const lists = (res.body.data.__schema.queryType.fields as F[]).filter(
      (f) => f.type.name?.endsWith("Connection") && !f.args.some((a) => a.type.kind === "NON_NULL"),
    );
    expect(lists.length).toBeGreaterThan(5);
    const allowed: string[] = [];
    for (const l of lists) {
      const r = await server.gql(`{ ${l.name}(first: 1) { totalCount } }`);
      if (r.body.errors?.[0]?.extensions?.code !== "FORBIDDEN") allowed.push(l.name);
    }
    expect(allowed).toEqual([]);
  });
});
