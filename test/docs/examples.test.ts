// Every ```graphql block in README.md and docs/*.md runs against a demo organization (the one
// `npm start` creates, with its demo data), signed in as demo-admin, in file order. Conventions are in
// docs/contributing.md ("Documentation examples"): well-known variables, `# variables: {…}`,
// `# expect: CODE`, `# not run: why`, `# run as <user>` (run in order by the document's own test).
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { Kind, parse, print, type DefinitionNode, type OperationDefinitionNode } from "postgraphile/graphql";
import { ROOT_DIR } from "../../src/config.ts";
import { ensureDemoTenant } from "../../src/db/demo.ts";
import { seedDemoData } from "../../src/db/seed-demo.ts";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";

interface Example {
  file: string;
  line: number;
  source: string;
}

async function examples(): Promise<Example[]> {
  const files = ["README.md", ...(await fs.readdir(path.join(ROOT_DIR, "docs"))).filter((f) => f.endsWith(".md")).sort().map((f) => `docs/${f}`)];
  const found: Example[] = [];
  for (const file of files) {
    const text = await fs.readFile(path.join(ROOT_DIR, file), "utf8");
    for (const m of text.matchAll(/^```graphql\n([\s\S]*?)^```$/gm)) {
      found.push({ file, line: text.slice(0, m.index).split("\n").length, source: m[1]! });
    }
  }
  return found;
}

const all = await examples();
let db: TestDb;
let server: TestServer;
let token: string;
const known: Record<string, unknown> = {};

beforeAll(async () => {
  db = await createTestDb();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cairn-docs-"));
  const demo = await ensureDemoTenant(db.owner, dir, 4);
  await fs.rm(dir, { recursive: true, force: true });
  const org = (await db.owner.query<{ id: string }>("select id from crm.organizations where slug = $1", [demo.organizationSlug])).rows[0]!.id;
  await seedDemoData(db.owner, org);
  server = await startServer(db);
  const admin = demo.accounts.find((a) => a.username === "demo-admin")!;
  const login = await server.gql(`mutation ($p: String!) { login(input: { login: "demo-admin", password: $p }) { session { accessToken refreshToken } } }`, {
    p: admin.password,
  });
  token = login.body.data!.login.session.accessToken;
  const one = async (sql: string) => (await db.owner.query<{ id: string }>(sql, [org])).rows[0]?.id;
  const deal = (
    await db.owner.query<{ id: string; stage_id: string }>(
      `select d.id, d.stage_id from crm.deals d join crm.pipeline_stages s on s.id = d.stage_id
        where d.organization_id = $1 and d.deleted_at is null and not s.is_won and not s.is_lost order by d.created_at, d.id limit 1`,
      [org],
    )
  ).rows[0]!;
  const member = (
    await db.owner.query<{ id: string; user_id: string }>(
      `select m.id, m.user_id from crm.organization_memberships m join crm.users u on u.id = m.user_id
        where m.organization_id = $1 and u.username = 'demo-viewer'`,
      [org],
    )
  ).rows[0]!;
  Object.assign(known, {
    password: admin.password,
    refreshToken: login.body.data!.login.session.refreshToken,
    customerId: await one("select id from crm.customers where organization_id = $1 and deleted_at is null order by created_at, id limit 1"),
    contactId: await one("select id from crm.contacts where organization_id = $1 and deleted_at is null order by created_at, id limit 1"),
    dealId: deal.id,
    taskId: await one("select id from crm.tasks where organization_id = $1 and status = 'not_started' order by created_at, id limit 1"),
    projectId: await one("select id from crm.projects where organization_id = $1 and deleted_at is null order by created_at, id limit 1"),
    noteId: await one("select id from crm.notes where organization_id = $1 and deleted_at is null order by created_at, id limit 1"),
    pipelineId: await one("select id from crm.pipelines where organization_id = $1 and is_default"),
    stageId: (
      await db.owner.query<{ id: string }>(
        `select s.id from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id
          where s.organization_id = $1 and p.is_default and not s.is_won and not s.is_lost and s.id <> $2 order by s.position limit 1`,
        [org, deal.stage_id],
      )
    ).rows[0]!.id,
    lostStageId: await one(
      "select s.id from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id where s.organization_id = $1 and p.is_default and s.is_lost",
    ),
    roleId: await one("select id from crm.roles where organization_id = $1 and name = 'Viewer'"),
    membershipId: member.id,
    userId: member.user_id,
    teamId: await one("select id from crm.teams where organization_id = $1 order by name limit 1"),
    tagId: await one("select id from crm.tags where organization_id = $1 order by name limit 1"),
    organizationId: org,
  });
}, 120_000);

afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

/** The operations of a block, each printed on its own with the fragments it may use. */
function operations(source: string): string[] {
  const doc = parse(source);
  const fragments = doc.definitions.filter((d: DefinitionNode) => d.kind === Kind.FRAGMENT_DEFINITION).map((d) => print(d));
  return doc.definitions
    .filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION)
    .map((op) => [print(op), ...fragments].join("\n"));
}

test("the documentation has GraphQL examples, and README.md's first query is among them", () => {
  expect(all.length).toBeGreaterThan(5);
  expect(all.some((e) => e.file === "README.md" && e.source.includes("currentMembership"))).toBe(true);
});

describe.each(all.map((e) => [`${e.file}:${e.line}`, e] as const))("%s", (_name, example) => {
  // `# run as <user>`: a chain of examples (an order, then its payment) that the document's own test
  // runs in order with the JSON variables after each block (docs/contributing.md).
  const skip = /^#\s*(not run:|run as \S+)/m.test(example.source);
  (skip ? test.skip : test)("runs as documented", async () => {
    const extra = /^#\s*variables:\s*(\{.*\})\s*$/m.exec(example.source)?.[1];
    const expected = /^#\s*expect:\s*([A-Z_]+)\s*$/m.exec(example.source)?.[1];
    const variables = { ...known, ...(extra ? (JSON.parse(extra) as Record<string, unknown>) : {}) };
    for (const op of operations(example.source)) {
      const decls = [...op.matchAll(/\$([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^,)=]+)/g)].map((m) => ({ name: m[1]!, required: m[2]!.trim().endsWith("!") }));
      const declared = decls.map((d) => d.name).filter((v) => v in variables);
      // A nullable variable may stay unset (`$after` on a first page).
      const missing = decls.filter((d) => d.required && !(d.name in variables)).map((d) => d.name);
      expect({ op, missing }).toEqual({ op, missing: [] });
      const res = await server.gql(op, Object.fromEntries(declared.map((v) => [v, variables[v]])), { token });
      if (expected) {
        expect({ op, code: res.body.errors?.[0]?.extensions?.code }).toEqual({ op, code: expected });
      } else {
        expect({ op, status: res.status, errors: res.body.errors ?? [] }).toEqual({ op, status: 200, errors: [] });
      }
    }
  });
});
