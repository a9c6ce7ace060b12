// Every generated update mutation answers NOT_FOUND for a row that does not exist or that the caller
// cannot see (another organization's), and writes nothing. Generated from the schema's mutations.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let server: TestServer;
let a: SeededTenant;
let b: SeededTenant;
let token: string;

type TypeRef = { name: string | null; kind: string; ofType: TypeRef | null };
const named = (t: TypeRef): TypeRef => (t.ofType ? named(t.ofType) : t);

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "hidden-a");
  b = await seedTenant(db, "hidden-b");
  token = (await startSession(db, a.adminId, a.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("generated updates on hidden or missing rows", () => {
  test("answer NOT_FOUND and write nothing", async () => {
    const intro = await server.gql<any>(
      `{ __schema { mutationType { fields { name args { name type { name kind ofType { name kind ofType { name kind ofType { name kind } } } } } } } } }`,
      {},
      { token },
    );
    const updates = (intro.body.data.__schema.mutationType.fields as { name: string; args: { type: TypeRef }[] }[]).filter((f) => /^update[A-Z]/.test(f.name) && !/ById$/.test(f.name));
    expect(updates.length).toBeGreaterThan(10);
    const findings: string[] = [];
    let tried = 0;
    for (const m of updates) {
      const inputType = named(m.args[0]!.type).name!;
      const input = (await server.gql<any>(`query ($n: String!) { __type(name: $n) { inputFields { name type { name kind ofType { name kind } } } } }`, { n: inputType }, { token })).body.data.__type;
      const fields = input.inputFields as { name: string; type: TypeRef }[];
      if (!fields.some((f) => f.name === "rowId")) continue;
      const patchType = named(fields.find((f) => f.name === "patch")!.type).name!;
      const patchFields = (await server.gql<any>(`query ($n: String!) { __type(name: $n) { inputFields { name type { name kind ofType { name kind } } } } }`, { n: patchType }, { token })).body.data.__type.inputFields as { name: string; type: TypeRef }[];
      const field = patchFields.find((f) => named(f.type).name === "String") ?? patchFields.find((f) => named(f.type).name === "Boolean");
      if (!field) continue;
      const value = named(field.type).name === "String" ? "pwned" : true;
      // The table behind the mutation: the one whose B row has this id.
      const tables = (await db.owner.query<{ t: string }>(`select c.oid::regclass::text as t from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'crm' and c.relkind = 'r' and exists (select 1 from pg_attribute x where x.attrelid = c.oid and x.attname = 'organization_id')
            and exists (select 1 from pg_attribute x where x.attrelid = c.oid and x.attname = 'id' and format_type(x.atttypid, null) = 'uuid')`)).rows.map((r) => r.t);
      const entity = m.name.replace(/^update/, "");
      const table = tables.find((t) => t.replace(/^crm\./, "").replace(/_/g, "").replace(/ies$/, "y").replace(/s$/, "") === entity.toLowerCase());
      if (!table) continue;
      const row = (await db.owner.query(`select id, md5(to_jsonb(x)::text) as h from ${table} x where organization_id = $1 limit 1`, [b.id])).rows[0];
      if (!row) continue;
      for (const id of [row.id, "00000000-0000-4000-8000-00000000beef"]) {
        const r = await server.gql<any>(`mutation ($id: UUID!, $v: ${named(field.type).name}) { m: ${m.name}(input: { rowId: $id, patch: { ${field.name}: $v } }) { clientMutationId } }`, { id, v: value }, { token });
        const code = r.body.errors?.[0]?.extensions?.code;
        if (code !== "NOT_FOUND") findings.push(`${m.name}(${id === row.id ? "B's row" : "missing row"}): ${code ?? "no error"} ${r.body.errors?.[0]?.message ?? ""}`);
        if (r.body.data?.m !== null) findings.push(`${m.name}: payload ${JSON.stringify(r.body.data)}`);
      }
      const after = (await db.owner.query(`select md5(to_jsonb(x)::text) as h from ${table} x where id = $1`, [row.id])).rows[0];
      if (after.h !== row.h) findings.push(`${m.name}: B's row was changed`);
      tried++;
    }
    expect(findings).toEqual([]);
    expect(tried).toBeGreaterThan(8);
  });

  test("an update the caller may make still returns the record", async () => {
    const r = await server.gql<any>(`mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: { name: "Renamed" } }) { customer { name } } }`, { id: a.customerId }, { token });
    expect(r.body).toEqual({ data: { updateCustomer: { customer: { name: "Renamed" } } } });
  });
});
