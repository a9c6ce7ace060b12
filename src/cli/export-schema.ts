// npm run schema:export [-- --check]: writes (or checks) the sorted SDL of the GraphQL schema in
// schema.graphql. It introspects a scratch database migrated from nothing, so the output depends only
// on the committed migrations: the embedded server, or the server of ROOT_DATABASE_URL (a superuser).
import fs from "node:fs/promises";
import path from "node:path";
import pg from "pg";
import { loadConfig, ROOT_DIR } from "../config.ts";
import { createLogger } from "../logger.ts";
import { ensureDatabase, ensureRoles, migrate, withCredentials, withDatabase } from "../db/bootstrap.ts";
import { startEmbeddedPostgres } from "../db/embedded.ts";

process.env.GRAPHILE_ENV ??= "production";
const { sdlFromDatabase } = await import("../graphql/sdl.ts");
const config = loadConfig();
const logger = createLogger(config.logLevel);
const check = process.argv.includes("--check");
const embedded = process.env.ROOT_DATABASE_URL
  ? undefined
  : await startEmbeddedPostgres({ dataDir: config.embedded.dataDir, port: config.embedded.port, log: (l) => logger.debug(l) });
const rootUrl = process.env.ROOT_DATABASE_URL ?? embedded!.superuserUrl();
const scratch = "cairn_schema_export";
let sdl: string;
try {
  const passwords = { owner: "schema-export-owner", authenticator: "schema-export-auth" };
  if (embedded) {
    // keep the development passwords intact: only set them when the roles are new
    const existing = await fs.readFile(path.join(config.embedded.dataDir, "credentials.json"), "utf8").catch(() => null);
    Object.assign(passwords, existing ? JSON.parse(existing) : {});
  }
  await ensureRoles(rootUrl, passwords);
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${scratch} with (force)`);
  await admin.end();
  await ensureDatabase(rootUrl, scratch);
  const dbUrl = withDatabase(rootUrl, scratch);
  await migrate(withCredentials(dbUrl, "crm_owner", passwords.owner));
  sdl = await sdlFromDatabase(withCredentials(dbUrl, "crm_authenticator", passwords.authenticator));
  const cleanup = new pg.Client({ connectionString: rootUrl });
  await cleanup.connect();
  await cleanup.query(`drop database if exists ${scratch} with (force)`);
  await cleanup.end();
} finally {
  await embedded?.stop();
}
const file = path.join(ROOT_DIR, "schema.graphql");
if (check) {
  const current = await fs.readFile(file, "utf8").catch(() => "");
  if (current !== sdl) {
    process.stderr.write("schema.graphql is stale: run npm run schema:export and commit it\n");
    process.exit(1);
  }
  process.stdout.write("schema.graphql is up to date\n");
} else {
  await fs.writeFile(file, sdl);
  process.stdout.write(`wrote ${file}\n`);
}
