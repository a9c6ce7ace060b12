// The committed schema.graphql is what the committed migrations produce.
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { ROOT_DIR } from "../../src/config.ts";
import { sdlFromDatabase } from "../../src/graphql/sdl.ts";
import { permissionMatrixMarkdown } from "../../src/db/permission-matrix.ts";
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

test("README.md's permission matrix is the database's (regenerate with npm run schema:export)", async () => {
  const readme = await fs.readFile(path.join(ROOT_DIR, "README.md"), "utf8");
  const block = await permissionMatrixMarkdown(db.owner);
  expect(readme).toContain(block);
  expect(block).toContain("| `roles:manage` |");
});
