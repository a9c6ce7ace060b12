// npm start: the API (and, unless WORKER=off, the worker) on the configured or embedded database.
// With API_PROCESSES > 1 this process becomes a node:cluster primary: it owns the database side
// (embedded server, migrations, demo organization, inline worker) and forks the API processes, which
// share one listening socket.
import cluster from "node:cluster";
import { loadConfigOrExit, StartupError, type Config } from "../config.ts";
import { createLogger, type Logger } from "../logger.ts";

const config = loadConfigOrExit();
const logger = createLogger(config.logLevel);
// Grafast reads GRAPHILE_ENV when it loads: set it before the server modules are imported.
process.env.GRAPHILE_ENV ??= config.isProduction || config.nodeEnv === "test" ? "production" : "development";
// @dataplan/pg reads its prepared-statement cache size when it loads; 0 turns named statements off.
if (!config.pgPreparedStatements) process.env.DATAPLAN_PG_PREPARED_STATEMENT_CACHE_SIZE = "0";
const { startService } = await import("../service.ts");
const { printDemoAccess } = await import("./demo-access.ts");
const { resolveJwtSecret } = await import("../service.ts");


function onSignals(stop: (signal: NodeJS.Signals) => Promise<void>, signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM"]) {
  let count = 0;
  const handler = (signal: NodeJS.Signals) => {
    if (++count > 1) {
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    setTimeout(() => {
      logger.error("shutdown did not finish in time; exiting");
      process.exit(1);
    }, config.shutdownTimeoutMs + 5000).unref();
    stop(signal).then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  for (const s of signals) process.on(s, handler);
}

async function single(): Promise<void> {
  const service = await startService(config, logger);
  const base = `http://${service.address!.host}:${service.address!.port}`;
  logger.info({ port: service.address!.port, graphql: `${base}/graphql`, graphiql: config.graphiql ? `${base}/graphiql` : undefined }, "listening");
  if (!cluster.isWorker) await printDemoAccess(config, service, base);
  // An API process of a cluster stops when its primary says so (SIGTERM); a Ctrl-C in the terminal
  // reaches the primary too, which then stops every API process once.
  if (cluster.isWorker) process.on("SIGINT", () => undefined);
  onSignals((signal) => service.stop(signal), cluster.isWorker ? ["SIGTERM"] : ["SIGINT", "SIGTERM"]);
}

async function primary(config: Config, logger: Logger): Promise<void> {
  const service = await startService(config, logger, { http: false });
  const jwtSecret = await resolveJwtSecret(config);
  const env = {
    DATABASE_URL: service.connections.ownerUrl,
    AUTH_DATABASE_URL: service.connections.authUrl,
    JWT_SECRET: jwtSecret,
    MIGRATE_ON_START: "false",
    WORKER: "off",
    DEMO_DATA: "false",
    API_PROCESSES: "1",
  };
  let stopping = false;
  const listening = new Set<number>();
  let bannerShown = false;
  const fork = () => cluster.fork(env);
  cluster.on("listening", (worker, address) => {
    listening.add(worker.id);
    if (bannerShown || listening.size < config.apiProcesses) return;
    bannerShown = true;
    const base = `http://${config.host}:${address.port}`;
    logger.info({ port: address.port, processes: config.apiProcesses, graphql: `${base}/graphql` }, "listening");
    void printDemoAccess(config, service, base);
  });
  cluster.on("exit", (worker, code, signal) => {
    listening.delete(worker.id);
    if (stopping) return;
    logger.error({ pid: worker.process.pid, code, signal }, "API process exited; starting another");
    setTimeout(fork, 1000).unref();
  });
  for (let i = 0; i < config.apiProcesses; i++) fork();
  onSignals(async (signal) => {
    stopping = true;
    const workers = Object.values(cluster.workers ?? {}).filter((w) => !!w);
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            w.once("exit", () => resolve());
            w.process.kill("SIGTERM");
          }),
      ),
    );
    await service.stop(signal);
  });
}

try {
  if (config.apiProcesses > 1 && cluster.isPrimary) await primary(config, logger);
  else await single();
} catch (err) {
  if (err instanceof StartupError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  logger.fatal({ err }, "failed to start");
  process.exit(1);
}
