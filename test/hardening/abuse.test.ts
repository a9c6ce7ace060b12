// Abusive documents are refused before execution with QUERY_TOO_COMPLEX (HTTP 400) naming the limit,
// for anonymous and signed-in callers alike; documents the project itself sends (GraphiQL's
// introspection, the docs' queries) pass. Timings are measured in `npm run bench -- abuse`.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { getIntrospectionQuery } from "postgraphile/graphql";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { ABUSIVE_DOCUMENTS } from "./documents.ts";

let db: TestDb;
let server: TestServer;
let tenant: SeededTenant;
let token: string;

beforeAll(async () => {
  db = await createTestDb();
  tenant = await seedTenant(db, "abuse");
  token = (await startSession(db, tenant.adminId, tenant.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("abusive documents are refused before execution", () => {
  for (const doc of ABUSIVE_DOCUMENTS) {
    for (const who of ["anonymous", "signed in"] as const) {
      test(`${doc.name} (${who}) → QUERY_TOO_COMPLEX on ${doc.limit}`, async () => {
        const res = await server.gql(doc.query, doc.variables ?? {}, who === "signed in" ? { token } : {});
        expect(res.status).toBe(400);
        expect(res.body.data).toBeUndefined();
        expect(res.body.errors?.[0]?.extensions).toMatchObject({ code: "QUERY_TOO_COMPLEX", limit: doc.limit });
        const ext = res.body.errors![0]!.extensions as { max: number; value: number };
        expect(ext.value).toBeGreaterThan(ext.max);
      });
    }
  }

  test("the refusal names the measured value and the limit in its message", async () => {
    const res = await server.gql(`{ ${Array.from({ length: 40 }, (_, i) => `a${i}: __typename`).join(" ")} ${Array.from({ length: 40 }, (_, i) => `b${i}: currentUser { username }`).join(" ")} }`);
    expect(res.body.errors?.[0]?.message).toMatch(/too complex: \d+ .+ the limit is \d+/);
  });

  test("a page size given by a variable counts with its value", async () => {
    const q = `query ($n: Int) { customers(first: $n) { nodes { deals(first: $n) { nodes { tasks(first: $n) { nodes { title } } } } } } }`;
    const small = await server.gql(q, { n: 5 }, { token });
    expect(small.body.errors).toBeUndefined();
    const big = await server.gql(q, { n: 100 }, { token });
    expect(big.body.errors?.[0]?.extensions).toMatchObject({ code: "QUERY_TOO_COMPLEX", limit: "listItems" });
  });

  test("/health keeps answering while abusive documents are in flight", async () => {
    const flood = Array.from({ length: 40 }, (_, i) => ABUSIVE_DOCUMENTS[i % ABUSIVE_DOCUMENTS.length]!).map((d) => server.gql(d.query, d.variables ?? {}));
    const health = await Promise.all(Array.from({ length: 5 }, () => fetch(`${server.url}/health`).then((r) => r.status)));
    expect(health).toEqual([200, 200, 200, 200, 200]);
    const answers = await Promise.all(flood);
    expect(answers.every((a) => a.body.errors?.[0]?.extensions?.code === "QUERY_TOO_COMPLEX")).toBe(true);
  });
});

describe("documents within the budget pass", () => {
  test("GraphiQL's own introspection query", async () => {
    const res = await server.gql(getIntrospectionQuery({ descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true, inputValueDeprecation: true }), {}, { token });
    expect(res.body.errors).toBeUndefined();
    expect((res.body.data as any).__schema.types.length).toBeGreaterThan(100);
  });

  test("a dashboard query: several lists, nested relations, fragments, aliases", async () => {
    const res = await server.gql(
      `fragment C on Customer { rowId name status contacts(first: 5) { nodes { firstName lastName } } deals(first: 5) { nodes { name amount stage { name } } } }
       query Dashboard {
         currentUser { username fullName }
         currentOrganization { name slug }
         mine: customers(first: 20, orderBy: NAME_ASC) { totalCount nodes { ...C } }
         open: tasks(first: 20) { nodes { title dueAt customer { name } } }
         roles { nodes { name permissionCount } }
       }`,
      {},
      { token },
    );
    expect(res.body.errors).toBeUndefined();
  });
});

describe("errors of the gate are coded", () => {
  test("a syntax error is GRAPHQL_VALIDATION with HTTP 400", async () => {
    const res = await server.gql("{ customers { ");
    expect(res.status).toBe(400);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
  });

  test("an unknown field is GRAPHQL_VALIDATION with HTTP 400, even for application/json clients", async () => {
    const res = await server.gql("{ customerz { nodes { name } } }", {}, { headers: { accept: "application/json" } });
    expect(res.status).toBe(400);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
  });
});

describe("production mode", () => {
  let prod: TestServer;
  beforeAll(async () => {
    prod = await startServer(db, { NODE_ENV: "production" });
  });
  afterAll(async () => {
    await prod?.stop();
  });

  test("introspection is off and field suggestions are gone", async () => {
    const intro = await prod.gql(`{ __schema { types { name } } }`);
    expect(intro.status).toBe(400);
    expect(intro.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
    expect(intro.body.errors?.[0]?.message).toMatch(/introspection/i);
    const typo = await prod.gql(`{ customerz { nodes { name } } }`);
    expect(typo.body.errors?.[0]?.message).toBe('Cannot query field "customerz" on type "Query".');
    // Development keeps both.
    const dev = await server.gql(`{ customerz { nodes { name } } }`);
    expect(dev.body.errors?.[0]?.message).toMatch(/Did you mean/);
  });
});
