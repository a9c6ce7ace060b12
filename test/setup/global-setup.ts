// Once per `npm test`: a PostgreSQL server (embedded, or TEST_DATABASE_URL's), the roles, and a
// template database with every migration applied. Each test file clones its own database from it.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../../src/db/bootstrap.ts";
import { startEmbeddedPostgres, type EmbeddedServer } from "../../src/db/embedded.ts";
import { ROOT_URL_ENV, TEST_PASSWORDS, TEMPLATE_DB } from "../helpers/state.ts";

let embedded: EmbeddedServer | undefined;

export default async function globalSetup(): Promise<void> {
  const started = Date.now();
  let rootUrl = process.env.TEST_DATABASE_URL;
  if (!rootUrl) {
    const dataDir = path.join(os.tmpdir(), `cairn-test-pg-${process.pid}`);
    await fs.rm(dataDir, { recursive: true, force: true });
    embedded = await startEmbeddedPostgres({ dataDir, port: 55000 + (process.pid % 5000), durable: false });
    rootUrl = embedded.superuserUrl("postgres");
    (globalThis as { __cairnEmbedded?: { server: EmbeddedServer; dataDir: string } }).__cairnEmbedded = { server: embedded, dataDir };
  }
  await ensureRoles(rootUrl, TEST_PASSWORDS);
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  // Leftovers of an interrupted earlier run on an external server.
  const { rows } = await admin.query<{ datname: string }>(
    "select datname from pg_database where datname = $1 or datname like 'cairn_test_%'",
    [TEMPLATE_DB],
  );
  for (const { datname } of rows) {
    await admin.query(`alter database ${admin.escapeIdentifier(datname)} is_template false`).catch(() => undefined);
    await admin.query(`drop database if exists ${admin.escapeIdentifier(datname)} with (force)`);
  }
  await admin.end();
  await ensureDatabase(rootUrl, TEMPLATE_DB);
  const templateOwnerUrl = withCredentials(withDatabase(rootUrl, TEMPLATE_DB), "crm_owner", TEST_PASSWORDS.owner);
  await migrate(templateOwnerUrl);
  if (await applyCurrentMigration(templateOwnerUrl, { info: () => undefined, warn: (m) => process.stderr.write(`${m}\n`) })) {
    process.stdout.write("\n[cairn] migrations/current/ (uncommitted) applied to the test template\n");
  }
  process.env[ROOT_URL_ENV] = rootUrl;
  process.stdout.write(
    `\n[cairn] test database: ${embedded ? "embedded PostgreSQL" : "TEST_DATABASE_URL"}; template ready in ${Date.now() - started} ms\n`,
  );
}
