// npm run schema:export [-- --check] [-- --with-current]: writes (or checks) what is generated from
// the database and the code: the sorted SDL of the GraphQL schema in schema.graphql, the default
// permission matrix in docs/permissions.md, the SQLSTATE tables in docs/errors.md and the readable
// schema in docs/schema/. It introspects a
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
import { permissionMatrixMarkdown, withMatrix, PERMISSIONS_DOC } from "../db/permission-matrix.ts";
import { schemaDocs, SCHEMA_DOCS_DIR } from "../docs/schema-docs.ts";
import { withBlock } from "../docs/blocks.ts";
import { appSqlstatesMarkdown, standardSqlstatesMarkdown, ERRORS_DOC } from "../docs/errors-doc.ts";

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
let schemaPages: Map<string, string>;
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
  schemaPages = await schemaDocs(owner);
  await owner.end();
  const cleanup = new pg.Client({ connectionString: rootUrl });
  await cleanup.connect();
  await cleanup.query(`drop database if exists ${scratch} with (force)`);
  await cleanup.end();
} finally {
  await embedded?.stop();
}
// Every generated file with its expected content; files in docs/schema/ that are not generated any
// more are stale too.
const expected = new Map<string, string>();
expected.set(path.join(ROOT_DIR, "schema.graphql"), sdl);
expected.set(PERMISSIONS_DOC, withMatrix(await fs.readFile(PERMISSIONS_DOC, "utf8"), matrix));
let errorsDoc = await fs.readFile(ERRORS_DOC, "utf8");
errorsDoc = withBlock(errorsDoc, "app-sqlstates", appSqlstatesMarkdown(), ERRORS_DOC);
errorsDoc = withBlock(errorsDoc, "standard-sqlstates", standardSqlstatesMarkdown(), ERRORS_DOC);
expected.set(ERRORS_DOC, errorsDoc);
for (const [name, text] of schemaPages) expected.set(path.join(SCHEMA_DOCS_DIR, name), text);
const leftovers = (await fs.readdir(SCHEMA_DOCS_DIR).catch(() => [] as string[]))
  .filter((f) => f.endsWith(".md") && !schemaPages.has(f))
  .map((f) => path.join(SCHEMA_DOCS_DIR, f));
const stale: string[] = [];
for (const [file, text] of expected) {
  if ((await fs.readFile(file, "utf8").catch(() => null)) !== text) stale.push(file);
}
stale.push(...leftovers);
const rel = (f: string) => path.relative(ROOT_DIR, f);
if (check) {
  if (stale.length) {
    process.stderr.write(`stale (run npm run schema:export and commit): ${stale.map(rel).join(", ")}\n`);
    process.exit(1);
  }
  process.stdout.write("schema.graphql, docs/permissions.md, docs/errors.md and docs/schema/ are up to date\n");
} else {
  await fs.mkdir(SCHEMA_DOCS_DIR, { recursive: true });
  for (const file of stale) {
    if (leftovers.includes(file)) await fs.rm(file);
    else await fs.writeFile(file, expected.get(file)!);
  }
  process.stdout.write(stale.length ? `wrote ${stale.map(rel).join(", ")}\n` : "everything was up to date\n");
}
