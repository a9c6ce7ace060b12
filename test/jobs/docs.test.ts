// Every GraphQL example in docs/jobs.md runs, as an Administrator, without errors.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { ROOT_DIR } from "../../src/config.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let admin: string;
let examples: string[];

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "docs-jobs");
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  const text = await fs.readFile(path.join(ROOT_DIR, "docs", "jobs.md"), "utf8");
  examples = [...text.matchAll(/```graphql\n([\s\S]*?)```/g)].map((m) => m[1]!);
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

test("the GraphQL examples of docs/jobs.md run", async () => {
  expect(examples.length).toBeGreaterThanOrEqual(5);
  const taskId = (await db.owner.query("insert into crm.tasks (organization_id, title, is_recurring, recurrence_interval) values ($1, 'Docs', true, '7 days') returning id", [org.id])).rows[0].id;
  const variables = { organizationId: org.id, taskId };
  for (const query of examples) {
    const used = Object.fromEntries(Object.entries(variables).filter(([k]) => query.includes(`$${k}`)));
    const res = await server.gql(query, used, { token: admin });
    expect({ query, errors: res.body.errors }).toEqual({ query, errors: undefined });
  }
});
