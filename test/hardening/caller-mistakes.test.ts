// Nothing a caller can send produces INTERNAL: a list of mistakes, each answered with its stable code
// (and the field at fault where there is one), nothing written, and nothing logged at error level.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";

let db: TestDb;
let server: TestServer;
let tenant: SeededTenant;
let token: string;

beforeAll(async () => {
  db = await createTestDb();
  tenant = await seedTenant(db, "mistakes");
  token = (await startSession(db, tenant.adminId, tenant.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const CREATE = `mutation ($c: CustomerInput!) { createCustomer(input: { customer: $c }) { customer { rowId } } }`;
let deep = "name";
for (let i = 0; i < 20; i++) deep = `customer { deals(first: 1) { nodes { ${deep} } } }`;

interface Mistake {
  name: string;
  query: string;
  variables?: Record<string, unknown>;
  operationName?: string;
  code: string;
  field?: string;
  status?: number;
}

const MISTAKES: Mistake[] = [
  { name: "a string for an Int variable", query: `query ($n: Int) { customers(first: $n) { totalCount } }`, variables: { n: "abc" }, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "an Int out of 32-bit range", query: `query ($n: Int) { customers(first: $n) { totalCount } }`, variables: { n: 2 ** 40 }, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "a malformed UUID", query: `query ($id: UUID!) { customer(rowId: $id) { name } }`, variables: { id: "not-a-uuid" }, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "null for a required input field", query: CREATE, variables: { c: { name: null } }, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "an unknown enum value", query: `{ customers(orderBy: [SHOE_SIZE_ASC]) { totalCount } }`, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "an unknown operation name", query: `query A { __typename }`, operationName: "B", code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "two operations and no operation name", query: `query A { __typename } query B { __typename }`, code: "GRAPHQL_VALIDATION", status: 400 },
  { name: "a NUL byte in a string variable", query: CREATE, variables: { c: { name: "Bad\u0000Name" } }, code: "VALIDATION", field: "name", status: 400 },
  { name: "a NUL byte in a JSON field", query: CREATE, variables: { c: { name: "Json", customFields: { note: "a\u0000b" } } }, code: "VALIDATION", field: "note", status: 400 },
  { name: "a NUL byte in a JSON key", query: CREATE, variables: { c: { name: "Json", customFields: { "a\u0000": 1 } } }, code: "VALIDATION", status: 400 },
  { name: "a NUL byte in an inline literal", query: `mutation { createCustomer(input: { customer: { name: "Bad\\u0000Name" } }) { customer { rowId } } }`, code: "VALIDATION", field: "name", status: 400 },
  { name: "a relation nested 20 levels deep", query: `{ deals(first: 1) { nodes { ${deep} } } }`, code: "QUERY_TOO_COMPLEX", status: 400 },
  { name: "a negative page size", query: `{ customers(first: -1) { totalCount } }`, code: "VALIDATION", field: "first" },
  { name: "a BigFloat that is not a number", query: `mutation ($c: UUID!) { createDeal(input: { deal: { name: "D", customerId: $c, amount: "lots" } }) { deal { rowId } } }`, code: "VALIDATION" },
  { name: "a date that is not a date", query: `mutation { createCustomer(input: { customer: { name: "Born", birthDate: "2024-13-45" } }) { customer { rowId } } }`, code: "VALIDATION" },
  { name: "a timestamp that is not a time", query: `mutation { createTask(input: { task: { title: "T", dueAt: "half past never" } }) { task { rowId } } }`, code: "VALIDATION" },
  { name: "a 300 KB name", query: CREATE, variables: { c: { name: "x".repeat(300_000) } }, code: "VALIDATION" },
  { name: "custom fields that are not an object", query: CREATE, variables: { c: { name: "Odd", customFields: [1, 2] } }, code: "VALIDATION" },
  { name: "an update with an empty patch", query: `mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: {} }) { customer { rowId } } }`, code: "VALIDATION" },
  { name: "an update of a row that does not exist", query: `mutation { updateCustomer(input: { rowId: "00000000-0000-4000-8000-000000000000", patch: { name: "x" } }) { customer { rowId } } }`, code: "NOT_FOUND" },
];

describe("caller mistakes are coded, never INTERNAL", () => {
  for (const m of MISTAKES) {
    test(m.name, async () => {
      const before = (await db.owner.query("select count(*)::int as n from crm.customers")).rows[0].n;
      const variables = { ...m.variables };
      if (m.query.includes("$c: UUID!")) variables.c = tenant.customerId;
      if (m.query.includes("$id: UUID!") && !m.variables) variables.id = tenant.customerId;
      const res = await fetch(`${server.url}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ query: m.query, variables, ...(m.operationName ? { operationName: m.operationName } : {}) }),
      });
      const body = (await res.json()) as { errors?: { extensions?: Record<string, unknown> }[] };
      expect(body.errors?.[0]?.extensions?.code).toBe(m.code);
      if (m.field) expect(body.errors?.[0]?.extensions?.field).toBe(m.field);
      if (m.status) expect(res.status).toBe(m.status);
      expect((await db.owner.query("select count(*)::int as n from crm.customers")).rows[0].n).toBe(before);
    });
  }

  test("broken HTTP requests are coded too", async () => {
    const post = (body: string, type = "application/json") =>
      fetch(`${server.url}/graphql`, { method: "POST", headers: { "content-type": type }, body }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
    const notJson = await post('{"query": ');
    expect([notJson.status, notJson.body.errors[0].extensions]).toEqual([400, { code: "GRAPHQL_VALIDATION" }]);
    const noQuery = await post("{}");
    expect([noQuery.status, noQuery.body.errors[0].extensions.code]).toEqual([400, "GRAPHQL_VALIDATION"]);
    const arrayVariables = await post('{"query":"{ __typename }","variables":[1]}');
    expect([arrayVariables.status, arrayVariables.body.errors[0].extensions.code]).toEqual([400, "GRAPHQL_VALIDATION"]);
    const text = await post('{"query":"{ __typename }"}', "text/plain");
    expect([text.status, text.body.errors[0].extensions.code]).toEqual([415, "UNSUPPORTED_MEDIA_TYPE"]);
  });

  test("none of it was logged at error level; each refusal was logged below warn with an error id", async () => {
    const errors = server.logs.filter((l) => Number(l.level) >= 50);
    expect(errors).toEqual([]);
    const refused = server.logs.filter((l) => l.msg === "request refused");
    expect(refused.length).toBeGreaterThan(5);
    expect(refused.every((l) => Number(l.level) <= 40 && typeof l.errorId === "string")).toBe(true);
  });
});
