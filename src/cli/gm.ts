// npm run gm -- <graphile-migrate command>: runs graphile-migrate with DATABASE_URL, SHADOW_DATABASE_URL
// and ROOT_DATABASE_URL pointing at the embedded database (or at the ones configured in the environment).
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";
import { loadConfigOrExit, ROOT_DIR } from "../config.ts";
import { createLogger } from "../logger.ts";
import { ensureRoles, migrate, withDatabase } from "../db/bootstrap.ts";

const require = createRequire(import.meta.url);
const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
process.env.GRAPHILE_ENV ??= "production";
const { resolveConnections } = await import("../service.ts");
const connections = await resolveConnections(config, logger);
const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: connections.ownerUrl, CAIRN_NODE: process.execPath };
if (connections.embedded) {
  env.ROOT_DATABASE_URL = connections.embedded.superuserUrl("postgres");
  env.SHADOW_DATABASE_URL = withDatabase(connections.ownerUrl, `${config.embedded.databaseName}_shadow`);
  await ensureRoles(env.ROOT_DATABASE_URL);
}
// graphile-worker's schema must exist before our migrations reference it.
if (process.argv[2] !== "reset") await migrate(connections.ownerUrl).catch(() => undefined);
const bin = path.join(path.dirname(require.resolve("graphile-migrate/package.json")), "dist", "cli.js");
const child = spawn(process.execPath, [bin, ...process.argv.slice(2)], { stdio: "inherit", env, cwd: ROOT_DIR });
const code: number = await new Promise((resolve) => child.on("exit", (c) => resolve(c ?? 1)));
await connections.embedded?.stop();
process.exit(code);
