// The HTTP shell through its real doors: a listening server on a test database.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import crypto from "node:crypto";
import pg from "pg";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { signTestToken, startServer, type TestServer } from "../helpers/server.ts";
import { createUser, startSession } from "../helpers/identity.ts";

let db: TestDb;
let server: TestServer;
const orgA = crypto.randomUUID();
const orgB = crypto.randomUUID();
const userId = crypto.randomUUID();

beforeAll(async () => {
  db = await createTestDb();
  await db.owner.query(
    "insert into crm.organizations (id, name, slug) values ($1, 'Org A', 'org-a'), ($2, 'Org B', 'org-b')",
    [orgA, orgB],
  );
  server = await startServer(db, { CORS_ALLOWED_ORIGINS: "https://app.example.com" });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("health, readiness and metrics", () => {
  test("GET /health answers while the process is alive", async () => {
    const res = await fetch(`${server.url}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "ok" });
  });

  test("GET /ready checks the database and migrations", async () => {
    const res = await fetch(`${server.url}/ready`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "ready", checks: { database: true, migrations: true, schema: true } });
  });

  test("GET /metrics exposes HTTP, GraphQL, pool and queue metrics in Prometheus format", async () => {
    await server.gql("{ __typename }");
    const invalid = await server.gql("{ nope }");
    expect(invalid.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
    const res = await fetch(`${server.url}/metrics`);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    expect(text).toMatch(/cairn_http_requests_total\{route="\/graphql",method="POST",status="200"\} \d+/);
    expect(text).toMatch(/cairn_http_request_duration_seconds_bucket\{le="0.1",route="\/graphql"/);
    expect(text).toMatch(/cairn_graphql_operations_total\{type="query"\} [1-9]/);
    expect(text).toMatch(/cairn_graphql_errors_total\{code="GRAPHQL_VALIDATION"\} [1-9]/);
    expect(text).toMatch(/cairn_pg_pool_connections\{pool="auth"\} \d+/);
    expect(text).toMatch(/cairn_job_queue_depth \d+/);
    expect(text).toContain("cairn_jobs_failed_total");
  });
});

describe("requests", () => {
  test("X-Request-Id is taken from the request, echoed, and on the request's log lines", async () => {
    const id = `test-${crypto.randomUUID()}`;
    const res = await server.gql("{ __typename }", {}, { headers: { "x-request-id": id } });
    expect(res.headers.get("x-request-id")).toBe(id);
    await new Promise((r) => setTimeout(r, 50));
    const lines = server.logs.filter((l) => l.requestId === id);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0]).toMatchObject({ route: "/graphql", status: 200 });
  });

  test("a request id is generated when none is sent", async () => {
    const res = await fetch(`${server.url}/health`);
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });

  test("tokens never appear in logs", async () => {
    const token = signTestToken({ sub: userId, org: orgA });
    await server.gql("{ __typename }", {}, { token });
    await server.gql("{ __typename }", {}, { token: "garbage.token.value" });
    await new Promise((r) => setTimeout(r, 50));
    const all = server.logs.map((l) => JSON.stringify(l)).join("\n");
    expect(all).not.toContain(token);
    expect(all).not.toContain("garbage.token.value");
  });

  test("CORS allows the configured origins only, with the Authorization header", async () => {
    const ok = await fetch(`${server.url}/graphql`, {
      method: "OPTIONS",
      headers: { origin: "https://app.example.com", "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type" },
    });
    expect(ok.status).toBe(204);
    expect(ok.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    expect(ok.headers.get("access-control-allow-headers")).toMatch(/Authorization/i);
    expect(ok.headers.get("access-control-allow-methods")).toBe("GET,POST,PUT,PATCH,DELETE,OPTIONS");
    const other = await fetch(`${server.url}/graphql`, { method: "OPTIONS", headers: { origin: "https://evil.example.com", "access-control-request-method": "POST" } });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });

  test("security headers are set", async () => {
    const res = await fetch(`${server.url}/health`);
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(res.headers.get("x-powered-by")).toBeNull();
  });

  test("oversized request bodies are refused", async () => {
    const res = await fetch(`${server.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ query: `{ __typename } # ${"x".repeat(1_100_000)}` }),
    });
    expect(res.status).toBe(413);
  });

  test("unknown routes get a JSON 404", async () => {
    const res = await fetch(`${server.url}/nope`);
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ errors: [{ message: "Not found", extensions: { code: "NOT_FOUND" } }] });
  });

  test("GraphiQL is off in test/production unless GRAPHIQL=true", async () => {
    const res = await fetch(`${server.url}/graphiql`);
    expect(res.status).toBe(404);
  });
});

describe("token → pgSettings hook", () => {
  const orgsQuery = "{ organizations { nodes { rowId name } } }";

  test("without a token the request runs as crm_anonymous and sees no tenant data", async () => {
    const res = await server.gql(orgsQuery);
    expect(res.status).toBe(200);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });

  test("a valid token runs as crm_user with the token's user and organization", async () => {
    const memberId = await createUser(db, "hook-member");
    await db.owner.query(
      `insert into crm.organization_memberships (organization_id, user_id, role_id)
       select $1, $2, id from crm.roles where organization_id = $1 and name = 'Viewer'`,
      [orgA, memberId],
    );
    const session = await startSession(db, memberId, orgA);
    const res = await server.gql(`{ currentUser { rowId username } currentOrganization { rowId name } }`, {}, { token: session.accessToken });
    expect(res.body.errors).toBeUndefined();
    expect(res.body.data).toEqual({
      currentUser: { rowId: memberId, username: "hook-member" },
      currentOrganization: { rowId: orgA, name: "Org A" },
    });
    // A member of A only: organization B is invisible.
    const orgs = await server.gql(orgsQuery, {}, { token: session.accessToken });
    expect(orgs.body.data).toEqual({ organizations: { nodes: [{ rowId: orgA, name: "Org A" }] } });
  });

  test("a correctly signed token without a live session is refused", async () => {
    const res = await server.gql(orgsQuery, {}, { token: signTestToken({ sub: userId, org: orgA, sid: crypto.randomUUID() }) });
    expect(res.status).toBe(401);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
  });

  test.each([
    ["a token signed with another secret", () => signTestToken({ sub: userId, org: orgA }, { secret: "another-secret-another-secret-another-secret" })],
    ["an expired token", () => signTestToken({ sub: userId, org: orgA }, { expiresIn: -60 })],
    ["a token for another audience", () => signTestToken({ sub: userId, org: orgA }, { audience: "someone-else" })],
    ["a token from another issuer", () => signTestToken({ sub: userId, org: orgA }, { issuer: "someone-else" })],
    ["a token claiming a database role", () => signTestToken({ sub: userId, org: orgA, role: "crm_owner" })],
    ["a token claiming the postgres role", () => signTestToken({ sub: userId, org: orgA, role: "postgres" })],
    ["garbage", () => "not-a-jwt"],
  ])("%s gets HTTP 401 UNAUTHENTICATED", async (_name, make) => {
    const res = await server.gql(orgsQuery, {}, { token: make() });
    expect(res.status).toBe(401);
    expect(res.body.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
    expect(res.body.data ?? null).toBeNull();
  });

  test("a malformed Authorization header gets 401", async () => {
    const res = await server.gql(orgsQuery, {}, { headers: { authorization: "Basic abc" } });
    expect(res.status).toBe(401);
  });
});

describe("shutdown", () => {
  test("SIGTERM lets an in-flight request finish, then exits cleanly", async () => {
    const own = await startServer(db);
    // The schema is built on the first request (introspection); build it first, so that what waits
    // behind the lock below is the request's own query and not the introspection (which takes a lock
    // on the table too on PostgreSQL 15).
    expect((await own.gql("{ __typename }")).status).toBe(200);
    // Hold the request inside the database (behind a table lock) so it is surely in flight when the
    // signal arrives, however busy the machine is.
    const lock = await db.owner.connect();
    await lock.query("begin");
    await lock.query("lock table crm.organizations in access exclusive mode");
    // On failure, the server's own account of the shutdown goes with the assertion.
    const inFlight = own.gql("{ __typename organizations { totalCount } }").catch((e: Error) => ({ status: 0, body: { error: String(e.cause ?? e) } }));
    // Other roles' wait events are visible to a superuser only.
    const root = new pg.Client({ connectionString: db.rootUrl });
    await root.connect();
    const waiting = async () =>
      (await root.query("select 1 from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'", [db.name])).rowCount;
    const deadline = Date.now() + 50_000;
    while (!(await waiting())) {
      if (Date.now() > deadline) throw new Error("the request never reached the database");
      await new Promise((r) => setTimeout(r, 25));
    }
    await root.end();
    const exit = own.stop("SIGTERM");
    await new Promise((r) => setTimeout(r, 200));
    await lock.query("commit");
    lock.release();
    const res = await inFlight;
    const problems = res.status === 200 ? [] : own.logs.slice(-15);
    expect({ status: res.status, body: res.body, problems }).toEqual({ status: 200, body: expect.anything(), problems: [] });
    expect(await exit).toBe(0);
    expect(own.logs.some((l) => l.msg === "shutdown complete")).toBe(true);
  }, 120_000);
});
