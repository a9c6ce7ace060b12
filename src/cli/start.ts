// npm start: the API (and, unless WORKER=off, the worker) on the configured or embedded database.
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../logger.ts";

const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
// Grafast reads GRAPHILE_ENV when it loads: set it before the server modules are imported.
process.env.GRAPHILE_ENV ??= config.isProduction || config.nodeEnv === "test" ? "production" : "development";
const { startService } = await import("../service.ts");
const { printDemoAccess } = await import("./demo-access.ts");
try {
  const service = await startService(config, logger);
  const base = `http://${service.address.host}:${service.address.port}`;
  logger.info(
    { port: service.address.port, graphql: `${base}/graphql`, graphiql: config.graphiql ? `${base}/graphiql` : undefined },
    "listening",
  );
  await printDemoAccess(config, service, base);
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    const timer = setTimeout(() => {
      logger.error("shutdown did not finish in time; exiting");
      process.exit(1);
    }, config.shutdownTimeoutMs + 5000);
    timer.unref();
    service.stop(signal).then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
} catch (err) {
  logger.fatal({ err }, "failed to start");
  process.exit(1);
}
