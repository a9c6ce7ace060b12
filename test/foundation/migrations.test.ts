// Migrations: idempotent, safe when several instances start at once.
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import pg from "pg";
import { ensureDatabase, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { countCommittedMigrations } from "../../src/db/migrations.ts";
import { rootUrl } from "../helpers/db.ts";
import { TEST_PASSWORDS } from "../helpers/state.ts";

const name = `cairn_test_mig_${process.pid}`;
let admin: pg.Client;

beforeAll(async () => {
  admin = new pg.Client({ connectionString: rootUrl() });
  await admin.connect();
  await admin.query(`drop database if exists ${name} with (force)`);
  await ensureDatabase(rootUrl(), name);
});
afterAll(async () => {
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.end();
});

test("three instances migrating an empty database at once all succeed, and each migration runs once", async () => {
  const ownerUrl = withCredentials(withDatabase(rootUrl(), name), "crm_owner", TEST_PASSWORDS.owner);
  await Promise.all([migrate(ownerUrl), migrate(ownerUrl), migrate(ownerUrl)]);
  const c = new pg.Client({ connectionString: ownerUrl });
  await c.connect();
  try {
    const { rows } = await c.query("select count(*)::int as n from graphile_migrate.migrations");
    expect(rows[0].n).toBe(await countCommittedMigrations());
    const { rows: w } = await c.query("select count(*)::int as n from graphile_worker.migrations");
    expect(w[0].n).toBeGreaterThan(0);
    // Running again is a no-op.
    await migrate(ownerUrl);
    const { rows: again } = await c.query("select count(*)::int as n from graphile_migrate.migrations");
    expect(again[0].n).toBe(rows[0].n);
  } finally {
    await c.end();
  }
});
