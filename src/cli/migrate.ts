// npm run migrate: apply graphile-worker's schema and every committed migration, then exit.
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../logger.ts";
import { migrate } from "../db/bootstrap.ts";

const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
process.env.GRAPHILE_ENV ??= "production";
const { resolveConnections } = await import("../service.ts");
const connections = await resolveConnections(config, logger);
try {
  await migrate(connections.ownerUrl, { info: (m) => logger.info(m), warn: (m) => logger.warn(m) });
  logger.info("migrations applied");
} finally {
  await connections.embedded?.stop();
}
