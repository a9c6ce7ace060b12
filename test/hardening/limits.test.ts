// Rate limits shared by several API processes, the statement timeout, cancellation of abandoned
// requests, and trusted documents.
import crypto from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { withDatabase } from "../../src/db/bootstrap.ts";

let db: TestDb;
let org: TestOrg;
let token: string;
const servers: TestServer[] = [];

const SLOW = `mutation ($s: Float!) { zzSlowTag(input: { seconds: $s }) { result { rowId } } }`;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "limits");
  token = (await startSession(db, org.adminId, org.id)).accessToken;
  // A slow write for the time budget: inserts a tag, then sleeps (test database only).
  await db.owner.query(`
    create function crm.zz_slow_tag(seconds float8) returns crm.tags language plpgsql volatile set search_path = pg_catalog as $$
    declare t crm.tags;
    begin
      insert into crm.tags (name) values ('slow-' || gen_random_uuid()) returning * into t;
      perform pg_sleep(seconds);
      return t;
    end $$;
    grant execute on function crm.zz_slow_tag(float8) to crm_user;`);
});
afterAll(async () => {
  for (const s of servers) await s.stop();
  await db?.drop();
});

async function serve(env: Record<string, string>): Promise<TestServer> {
  const s = await startServer(db, env);
  servers.push(s);
  return s;
}

const slowTags = async () => (await db.owner.query("select count(*)::int as n from crm.tags where name like 'slow-%'")).rows[0].n as number;

describe("rate limits", () => {
  test("per client address and per principal, counted across two API processes, with RateLimit headers", async () => {
    const env = { RATE_LIMIT: "true", RATE_LIMIT_PER_ADDRESS: "8", RATE_LIMIT_PER_PRINCIPAL: "3", RATE_LIMIT_WINDOW_SECONDS: "60" };
    const [one, two] = [await serve(env), await serve(env)];
    const ME = `{ currentUser { username } }`;
    // Three signed-in requests on the first process use up the principal's budget…
    for (let i = 0; i < 3; i++) {
      const ok = await one.gql(ME, {}, { token });
      expect(ok.status).toBe(200);
      expect(ok.headers.get("ratelimit")).toMatch(/^limit=\d+, remaining=\d+, reset=\d+$/);
      expect(ok.headers.get("ratelimit-policy")).toMatch(/;w=60$/);
    }
    // …so the fourth, on the other process, is refused.
    const limited = await two.gql(ME, {}, { token });
    expect(limited.status).toBe(429);
    expect(limited.body.errors?.[0]?.extensions).toMatchObject({ code: "RATE_LIMITED", limit: "principal" });
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0);
    // Anonymous requests from the same address count against the address budget (4 used so far).
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await (i % 2 ? one : two).gql(`{ __typename }`)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429, 429]);
    const byAddress = await one.gql(`{ __typename }`);
    expect(byAddress.body.errors?.[0]?.extensions).toMatchObject({ code: "RATE_LIMITED", limit: "address" });
    // The same budget covers the other routes a caller can repeat (here a public unsubscribe link).
    const link = await fetch(`${two.url}/unsubscribe/not-a-token`);
    expect(link.status).toBe(429);
  });

  test("off unless enabled (the test suites run with it off)", async () => {
    const s = await serve({});
    const statuses = await Promise.all(Array.from({ length: 20 }, () => s.gql(`{ __typename }`).then((r) => r.status)));
    expect(new Set(statuses)).toEqual(new Set([200]));
  });
});

describe("time budget", () => {
  test("an operation over the statement timeout ends with QUERY_TIMEOUT, and its transaction rolls back", async () => {
    const s = await serve({ STATEMENT_TIMEOUT_MS: "300" });
    const res = await s.gql<any>(SLOW, { s: 3 }, { token });
    expect(res.body.errors?.[0]?.extensions?.code).toBe("QUERY_TIMEOUT");
    expect(res.body.data?.zzSlowTag ?? null).toBeNull();
    expect(await slowTags()).toBe(0);
    const quick = await s.gql<any>(SLOW, { s: 0 }, { token });
    expect(quick.body.errors).toBeUndefined();
    expect(await slowTags()).toBe(1);
    await db.owner.query("delete from crm.tags where name like 'slow-%'");
  });
});

describe("time budget of jobs", () => {
  test("the worker's connections carry JOB_STATEMENT_TIMEOUT_MS, separate from the requests' budget", async () => {
    const { loadConfig } = await import("../../src/config.ts");
    const { jobStatementTimeout } = await import("../../src/service.ts");
    const config = loadConfig({ NODE_ENV: "test", JOB_STATEMENT_TIMEOUT_MS: "1234", STATEMENT_TIMEOUT_MS: "99" });
    const pool = new pg.Pool({ connectionString: db.ownerUrl, max: 1, ...jobStatementTimeout(config) });
    try {
      expect((await pool.query("show statement_timeout")).rows[0].statement_timeout).toBe("1234ms");
      await expect(pool.query("select pg_sleep(2)")).rejects.toMatchObject({ code: "57014" });
    } finally {
      await pool.end();
    }
  });
});

describe("cancellation", () => {
  test("a request whose client goes away is cancelled in PostgreSQL and rolled back", async () => {
    const s = await serve({ STATEMENT_TIMEOUT_MS: "60000" });
    const root = new pg.Client({ connectionString: withDatabase(db.rootUrl, db.name) });
    await root.connect();
    try {
      const running = async () =>
        (await root.query("select count(*)::int as n from pg_stat_activity where datname = $1 and query like '%zz_slow_tag%' and state = 'active' and application_name like 'cairn-req:%'", [db.name])).rows[0].n as number;
      // The schema is built on the first request; build it before timing anything on a busy machine.
      const warm = await fetch(`${s.url}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ query: "{ __typename }" }),
      });
      expect(warm.status).toBe(200);
      const ctl = new AbortController();
      const req = fetch(`${s.url}/graphql`, {
        method: "POST",
        signal: ctl.signal,
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ query: SLOW, variables: { s: 30 } }),
      }).then(
        () => "answered",
        () => "aborted",
      );
      let seen = 0;
      for (let i = 0; i < 1200 && !seen; i++) {
        seen = await running();
        if (!seen) await new Promise((r) => setTimeout(r, 50));
      }
      expect(seen).toBe(1);
      ctl.abort();
      expect(await req).toBe("aborted");
      let left = 1;
      for (let i = 0; i < 100 && left; i++) {
        left = await running();
        if (left) await new Promise((r) => setTimeout(r, 50));
      }
      expect(left).toBe(0);
      expect(await slowTags()).toBe(0);
      for (let i = 0; i < 40 && !s.logs.some((l) => l.msg === "client went away; request cancelled"); i++) await new Promise((r) => setTimeout(r, 50));
      expect(s.logs.find((l) => l.msg === "client went away; request cancelled")).toMatchObject({ cancelledQueries: 1 });
    } finally {
      await root.end();
    }
  });
});

describe("trusted documents", () => {
  test("only registered documents run; anything else is TRUSTED_DOCUMENT_REQUIRED", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cairn-trusted-"));
    const doc = "query Me { currentUser { username } }";
    const hash = crypto.createHash("sha256").update(doc).digest("hex");
    await fs.writeFile(path.join(dir, `${hash}.graphql`), doc);
    try {
      const s = await serve({ TRUSTED_DOCUMENTS: "true", TRUSTED_DOCUMENTS_DIR: dir });
      const post = (body: unknown) =>
        fetch(`${s.url}/graphql`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` }, body: JSON.stringify(body) }).then(
          async (r) => ({ status: r.status, body: (await r.json()) as any }),
        );
      const relay = await post({ documentId: hash });
      expect(relay.body).toEqual({ data: { currentUser: { username: "limits-admin" } } });
      const apollo = await post({ extensions: { persistedQuery: { version: 1, sha256Hash: hash } } });
      expect(apollo.body.data.currentUser.username).toBe("limits-admin");
      const raw = await post({ query: doc });
      expect(raw.status).toBe(400);
      expect(raw.body.errors[0].extensions).toEqual({ code: "TRUSTED_DOCUMENT_REQUIRED" });
      const unknown = await post({ documentId: "0".repeat(64) });
      expect(unknown.body.errors[0].extensions.code).toBe("TRUSTED_DOCUMENT_REQUIRED");
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
