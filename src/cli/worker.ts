// npm run worker: graphile-worker as its own process (run the API with WORKER=off).
import pg from "pg";
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../logger.ts";
import { migrate } from "../db/bootstrap.ts";
import { startWorker } from "../../worker/runner.ts";
import { applyRfmDefaults } from "../db/rfm-defaults.ts";

const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
process.env.GRAPHILE_ENV ??= "production";
const { resolveConnections, jobStatementTimeout } = await import("../service.ts");
const connections = await resolveConnections(config, logger);
if (config.migrateOnStart) await migrate(connections.ownerUrl, { info: (m) => logger.info(m), warn: (m) => logger.warn(m) });
const pool = new pg.Pool({ connectionString: connections.ownerUrl, max: config.workerConcurrency + 2, ...jobStatementTimeout(config) });
pool.on("error", (err) => logger.error({ err }, "owner pool error"));
pool.on("connect", (client) => client.on("error", (err) => logger.warn({ err }, "owner connection error")));
// Tenant jobs run their transactions on the authenticator connection (as crm_user, like requests).
const authPool = new pg.Pool({ connectionString: connections.authUrl, max: config.workerConcurrency });
authPool.on("error", (err) => logger.error({ err }, "authenticator pool error"));
await applyRfmDefaults(pool, config);
const runner = await startWorker({ config, logger, ownerPool: pool, authPool });
let stopping = false;
const stop = async (signal: string) => {
  if (stopping) process.exit(1);
  stopping = true;
  logger.info({ signal }, "worker shutting down");
  const timer = setTimeout(() => process.exit(1), config.shutdownTimeoutMs + 5000);
  timer.unref();
  await runner.stop().catch((err) => logger.error({ err }, "worker stop failed"));
  await pool.end();
  await authPool.end();
  await connections.embedded?.stop();
  process.exit(0);
};
process.on("SIGINT", () => void stop("SIGINT"));
process.on("SIGTERM", () => void stop("SIGTERM"));
await runner.promise;
