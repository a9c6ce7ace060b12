// The committed schema.graphql, the permission matrix in docs/permissions.md and docs/schema/ are what
// the migrations produce (regenerate with npm run schema:export).
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { ROOT_DIR } from "../../src/config.ts";
import { sdlFromDatabase } from "../../src/graphql/sdl.ts";
import { permissionMatrixMarkdown, PERMISSIONS_DOC } from "../../src/db/permission-matrix.ts";
import { schemaDocs, SCHEMA_DOCS_DIR } from "../../src/docs/schema-docs.ts";
import { createTestDb, type TestDb } from "../helpers/db.ts";

let db: TestDb;
beforeAll(async () => {
  db = await createTestDb();
});
afterAll(async () => {
  await db.drop();
});

test("schema.graphql is up to date (regenerate with npm run schema:export)", async () => {
  const committed = await fs.readFile(path.join(ROOT_DIR, "schema.graphql"), "utf8");
  const actual = await sdlFromDatabase(db.authUrl);
  // Compare line sets first for a readable diff, then the exact text.
  const a = new Set(committed.split("\n"));
  const b = new Set(actual.split("\n"));
  expect({ missingFromFile: [...b].filter((l) => !a.has(l)).slice(0, 20), notInSchema: [...a].filter((l) => !b.has(l)).slice(0, 20) }).toEqual({
    missingFromFile: [],
    notInSchema: [],
  });
  expect(actual).toBe(committed);
});

test("docs/permissions.md's permission matrix is the database's (regenerate with npm run schema:export)", async () => {
  const doc = await fs.readFile(PERMISSIONS_DOC, "utf8");
  const block = await permissionMatrixMarkdown(db.owner);
  expect(doc).toContain(block);
  expect(block).toContain("| `roles:manage` |");
});

test("docs/schema/ is the catalog's (regenerate with npm run schema:export)", async () => {
  const pages = await schemaDocs(db.owner);
  const onDisk = (await fs.readdir(SCHEMA_DOCS_DIR)).filter((f) => f.endsWith(".md")).sort();
  expect(onDisk).toEqual([...pages.keys()].sort());
  const stale = [];
  for (const [name, text] of pages) {
    if ((await fs.readFile(path.join(SCHEMA_DOCS_DIR, name), "utf8")) !== text) stale.push(name);
  }
  expect(stale).toEqual([]);
  // The pages carry what a reader looks for: the tenant policy of a CRM table, its grants, a diagram.
  expect(pages.get("crm.customers.md")).toContain("organization_id = ( SELECT crm.current_org_id()");
  expect(pages.get("crm.customers.md")).toMatch(/\| `crm_user` \| .*SELECT/);
  expect(pages.get("README.md")).toContain("erDiagram");
});
