// npm run schema:export [-- --check] [-- --with-current]: writes (or checks) the sorted SDL of the
// GraphQL schema in schema.graphql and the default permission matrix in README.md. It introspects a
// scratch database migrated from nothing, so the output depends only on the committed migrations
// (plus migrations/current/ with --with-current, while a change is being written): the embedded
// server, or the server of ROOT_DATABASE_URL (a superuser).
import fs from "node:fs/promises";
import path from "node:path";
import crypto from "node:crypto";
import pg from "pg";
import { loadConfigOrExit, ROOT_DIR } from "../config.ts";
import { createLogger } from "../logger.ts";
import { applyCurrentMigration, ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../db/bootstrap.ts";
import { startEmbeddedPostgres } from "../db/embedded.ts";
import { permissionMatrixMarkdown, withMatrix } from "../db/permission-matrix.ts";

process.env.GRAPHILE_ENV ??= "production";
const { sdlFromDatabase } = await import("../graphql/sdl.ts");
const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
const check = process.argv.includes("--check");
const withCurrent = process.argv.includes("--with-current");
const embedded = process.env.ROOT_DATABASE_URL
  ? undefined
  : await startEmbeddedPostgres({ dataDir: config.embedded.dataDir, port: config.embedded.port, log: (l) => logger.debug(l) });
const rootUrl = process.env.ROOT_DATABASE_URL ?? embedded!.superuserUrl();
const scratch = "cairn_schema_export";
let sdl: string;
let matrix: string;
try {
  // As the roles themselves: on the embedded server with their development passwords; on another
  // server as the superuser switching role (their passwords there are left alone).
  let asRole: (url: string, role: string) => string;
  if (embedded) {
    const saved = await fs.readFile(path.join(config.embedded.dataDir, "credentials.json"), "utf8").catch(() => null);
    const passwords = saved ? (JSON.parse(saved) as { owner: string; authenticator: string }) : { owner: crypto.randomUUID(), authenticator: crypto.randomUUID() };
    await ensureRoles(rootUrl, passwords);
    asRole = (url, role) => withCredentials(url, role, role === "crm_owner" ? passwords.owner : passwords.authenticator);
  } else {
    await ensureRoles(rootUrl);
    asRole = (url, role) => {
      const u = new URL(url);
      u.searchParams.set("options", `-c role=${role}`);
      return u.toString();
    };
  }
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${scratch} with (force)`);
  await admin.end();
  await ensureDatabase(rootUrl, scratch);
  const dbUrl = withDatabase(rootUrl, scratch);
  await migrate(asRole(dbUrl, "crm_owner"));
  if (withCurrent) await applyCurrentMigration(asRole(dbUrl, "crm_owner"));
  sdl = await sdlFromDatabase(asRole(dbUrl, "crm_authenticator"));
  const owner = new pg.Client({ connectionString: asRole(dbUrl, "crm_owner") });
  await owner.connect();
  matrix = await permissionMatrixMarkdown(owner);
  await owner.end();
  const cleanup = new pg.Client({ connectionString: rootUrl });
  await cleanup.connect();
  await cleanup.query(`drop database if exists ${scratch} with (force)`);
  await cleanup.end();
} finally {
  await embedded?.stop();
}
const file = path.join(ROOT_DIR, "schema.graphql");
const readmeFile = path.join(ROOT_DIR, "README.md");
const readme = await fs.readFile(readmeFile, "utf8");
const newReadme = withMatrix(readme, matrix);
if (check) {
  const current = await fs.readFile(file, "utf8").catch(() => "");
  let stale = false;
  if (current !== sdl) {
    process.stderr.write("schema.graphql is stale: run npm run schema:export and commit it\n");
    stale = true;
  }
  if (readme !== newReadme) {
    process.stderr.write("README.md's permission matrix is stale: run npm run schema:export and commit it\n");
    stale = true;
  }
  if (stale) process.exit(1);
  process.stdout.write("schema.graphql and the README permission matrix are up to date\n");
} else {
  await fs.writeFile(file, sdl);
  await fs.writeFile(readmeFile, newReadme);
  process.stdout.write(`wrote ${file} and the permission matrix in ${readmeFile}\n`);
}
