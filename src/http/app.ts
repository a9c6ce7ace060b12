// The HTTP shell: request ids and logs, CORS, security headers, health/readiness/metrics, and
// PostGraphile (grafserv) on /graphql with Ruru on /graphiql and graphql-ws on the same server.
import { createServer, type Server } from "node:http";
import crypto from "node:crypto";
import express, { type Request, type Response, type NextFunction } from "express";
import helmet from "helmet";
import cors from "cors";
import type { Pool } from "pg";
import { postgraphile, type PostGraphileInstance } from "postgraphile";
import { grafserv } from "postgraphile/grafserv/express/v4";
import { StartupError, type Config } from "../config.ts";
import { requestScope, type Logger } from "../logger.ts";
import { makePreset } from "../graphql/preset.ts";
import { authPluginOptions } from "../graphql/plugins/auth.ts";
import { makeMaskError } from "./errors.ts";
import { DocumentGate } from "../graphql/gate.ts";
import { cancellationTag, ClientGoneError, makeCancellation } from "./cancel.ts";
import { makeRateLimits } from "./rate-limit.ts";
import { DEFAULT_PAGE_SIZE } from "../graphql/plugins/pagination.ts";
import { Metrics } from "./metrics.ts";
import { pgSettingsFor, type PrincipalResolver } from "../auth/context.ts";
import { mountIntegrationRoutes } from "./integrations.ts";
import { mountFinanceRoutes } from "./finance.ts";
import { mountMessagingRoutes } from "./messaging.ts";

export interface ReadinessCheck {
  name: string;
  check: () => Promise<boolean>;
}

export interface AppDeps {
  config: Config;
  logger: Logger;
  authPool: Pool;
  ownerPool?: Pool;
  jwtSecret: string;
  resolvePrincipal: PrincipalResolver;
  readiness: ReadinessCheck[];
  queueDepth: () => Promise<number | null>;
  /** Headers GraphiQL starts with (the demo sign-in in development). */
  graphiqlHeaders?: () => Promise<Record<string, string> | undefined>;
}

export interface App {
  server: Server;
  metrics: Metrics;
  pgl: PostGraphileInstance;
  listen: () => Promise<{ host: string; port: number }>;
  /** Stop accepting, finish in-flight requests (bounded), release PostGraphile. */
  close: () => Promise<void>;
}

declare module "express-serve-static-core" {
  interface Request {
    id: string;
    log: Logger;
    pgSettings?: Record<string, string>;
  }
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export async function createApp(deps: AppDeps): Promise<App> {
  const { config, logger } = deps;
  const metrics = new Metrics({ auth: deps.authPool, owner: deps.ownerPool }, deps.queueDepth);
  const app = express();
  app.disable("x-powered-by");
  // Behind one reverse proxy: the client address is the one that proxy appended to X-Forwarded-For
  // (never the client-controlled left-most entry).
  app.set("trust proxy", config.auth.trustProxy ? 1 : false);

  // Request id + access log + HTTP metrics.
  app.use((req: Request, res: Response, next: NextFunction) => {
    const incoming = req.header("x-request-id");
    req.id = incoming && REQUEST_ID.test(incoming) ? incoming : crypto.randomUUID();
    req.log = logger;
    res.setHeader("X-Request-Id", req.id);
    const start = process.hrtime.bigint();
    const route = routeLabel(req.path); // before any mounted middleware rewrites req.path
    res.on("finish", () => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      const labels = { route, method: req.method, status: String(res.statusCode) };
      metrics.httpRequests.inc(labels);
      metrics.httpDuration.observe(labels, seconds);
      if (route !== "/health" && route !== "/metrics") {
        req.log.info(
          { method: req.method, route, status: res.statusCode, durationMs: Math.round(seconds * 1000) },
          "request completed",
        );
      }
    });
    requestScope.run({ requestId: req.id }, next);
  });

  app.use(
    helmet({
      // Ruru (GraphiQL) loads its own inline scripts and styles.
      contentSecurityPolicy: config.graphiql ? false : undefined,
      crossOriginEmbedderPolicy: false,
    }),
  );
  app.use(
    cors({
      origin: (origin, cb) => cb(null, !origin ? false : config.corsAllowedOrigins.includes("*") || config.corsAllowedOrigins.includes(origin)),
      methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
      allowedHeaders: ["Authorization", "Content-Type", "X-Request-Id"],
      exposedHeaders: ["X-Request-Id"],
      maxAge: 600,
    }),
  );

  app.get("/health", (_req, res) => {
    res.json({ status: "ok", uptimeSeconds: Math.round(process.uptime()) });
  });

  app.get("/ready", async (_req, res) => {
    const checks: Record<string, boolean> = {};
    await Promise.all([
      ...deps.readiness.map(async (c) => {
        checks[c.name] = await c.check().catch(() => false);
      }),
      // The GraphQL schema was built from the database (a failed build fails every request).
      Promise.resolve()
        .then(() => pgl.getSchema())
        .then(
          () => (checks.schema = true),
          () => (checks.schema = false),
        ),
    ]);
    const ok = Object.values(checks).every(Boolean);
    res.status(ok ? 200 : 503).json({ status: ok ? "ready" : "not_ready", checks });
  });

  app.get("/metrics", async (_req, res) => {
    res.setHeader("Content-Type", metrics.registry.contentType);
    res.send(await metrics.registry.metrics());
  });

  // Abandoned requests are cancelled (their SQL too); rate limits per address, then per principal.
  const cancellation = makeCancellation(deps.authPool, logger);
  const rateLimits = makeRateLimits(config.hardening.rateLimit, deps.ownerPool, logger);
  app.use("/graphql", cancellation.middleware);
  app.use("/graphql", rateLimits.byAddress);
  // The other routes a caller can repeat at will (public message links, invoice PDFs, CSV import and
  // export) draw on the same budget per address. Provider webhooks (Stripe, SNS) are authenticated and
  // arrive in bursts from a few addresses, so they are left out.
  for (const path of ["/unsubscribe", "/t", "/invoices", "/import", "/export"]) app.use(path, rateLimits.byAddress);

  // Token → pgSettings before GraphQL runs, so a bad token is a clean HTTP 401 with a stable code.
  app.use("/graphql", async (req: Request, res: Response, next: NextFunction) => {
    if (req.method !== "POST" && req.method !== "GET") return next();
    try {
      req.pgSettings = await pgSettingsFor(
        config,
        deps.jwtSecret,
        { authorization: req.headers.authorization, requestId: req.id, clientIp: req.ip, userAgent: req.headers["user-agent"] },
        deps.resolvePrincipal,
        { deferSessionCheck: true },
      );
      const tag = cancellationTag();
      if (tag) req.pgSettings.application_name = tag;
      next();
    } catch (e) {
      const err = e as { statusCode?: number; message: string; extensions?: Record<string, unknown> };
      if (err.statusCode === 401) {
        metrics.countError("UNAUTHENTICATED");
        res.status(401).setHeader("WWW-Authenticate", 'Bearer realm="cairn"');
        res.json({ errors: [{ message: err.message, extensions: { code: "UNAUTHENTICATED" } }] });
        return;
      }
      if (e instanceof ClientGoneError) return;
      req.log.error({ err: e }, "token verification failed");
      res.status(500).json({ errors: [{ message: "Internal error", extensions: { code: "INTERNAL" } }] });
    }
  });

  app.use("/graphql", rateLimits.byPrincipal);

  const maskError = makeMaskError(logger, metrics, { suggestions: config.hardening.fieldSuggestions });
  const preset = makePreset({
    authPool: deps.authPool,
    auth: authPluginOptions(config, deps.jwtSecret),
    graphiql: config.graphiql,
    development: config.graphqlExplain,
    maxRequestBytes: config.maxRequestBytes,
    pageSizeMax: config.pageSizeMax,
    maskError,
    onOperation: (type) => metrics.graphqlOperations.inc({ type }),
    ...(config.graphiql && deps.graphiqlHeaders ? { graphiqlHeaders: deps.graphiqlHeaders } : {}),
    realtime: { ...config.realtime, onError: (err, message) => logger.warn({ err }, message) },
    gate: new DocumentGate({
      limits: config.hardening.graphqlLimits,
      introspection: config.hardening.introspection,
      suggestions: config.hardening.fieldSuggestions,
      cacheSize: config.hardening.documentCacheSize,
      defaultPageSize: DEFAULT_PAGE_SIZE,
      // Refused documents are the caller's doing: logged below warn, with an error id.
      onRefused: (limit) => {
        metrics.countError("QUERY_TOO_COMPLEX");
        logger.info({ errorId: crypto.randomUUID(), code: "QUERY_TOO_COMPLEX", limit }, "request refused");
      },
      onInvalid: (code) => {
        metrics.countError(code);
        logger.info({ errorId: crypto.randomUUID(), code }, "request refused");
      },
    }),
    planCache: { operations: config.hardening.planCacheOperations, plansPerOperation: config.hardening.planCachePlansPerOperation },
    planningTimeoutMs: config.hardening.planningTimeoutMs,
    trustedDocuments: config.hardening.trustedDocuments,
    async context(requestContext) {
      const req = requestContext.expressv4?.req as Request | undefined;
      if (req?.pgSettings) return { pgSettings: req.pgSettings };
      // Websocket connections (graphql-ws): the token comes in the connection parameters.
      const ws = requestContext.ws;
      const params = (ws?.normalizedConnectionParams ?? {}) as Record<string, unknown>;
      const pgSettings = await pgSettingsFor(
        config,
        deps.jwtSecret,
        {
          authorization: typeof params.authorization === "string" ? params.authorization : undefined,
          requestId: crypto.randomUUID(),
          clientIp: ws?.request?.socket?.remoteAddress,
        },
        deps.resolvePrincipal,
      );
      return { pgSettings };
    },
  });

  const pgl = postgraphile(preset);
  const serv = pgl.createServ(grafserv);
  const server = createServer(app);
  server.requestTimeout = 60_000;
  server.headersTimeout = 30_000;
  await serv.addTo(app, server);
  mountIntegrationRoutes(app, { config, logger, authPool: deps.authPool, ownerPool: deps.ownerPool, jwtSecret: deps.jwtSecret, resolvePrincipal: deps.resolvePrincipal, pgl });
  mountFinanceRoutes(app, { config, logger, authPool: deps.authPool, ownerPool: deps.ownerPool, jwtSecret: deps.jwtSecret, resolvePrincipal: deps.resolvePrincipal, pgl });
  mountMessagingRoutes(app, { config, logger, ownerPool: deps.ownerPool });

  app.use((_req, res) => {
    res.status(404).json({ errors: [{ message: "Not found", extensions: { code: "NOT_FOUND" } }] });
  });

  let closing: Promise<void> | undefined;
  return {
    server,
    metrics,
    pgl,
    listen: () =>
      new Promise((resolve, reject) => {
        server.once("error", (err: NodeJS.ErrnoException) => {
          if (err.code === "EADDRINUSE") reject(new StartupError(`PORT ${config.port} is already in use: set PORT to a free port (PORT=0 picks one).`));
          else if (err.code === "EADDRNOTAVAIL") reject(new StartupError(`HOST ${config.host} is not an address of this machine: set HOST (127.0.0.1, or 0.0.0.0 for every interface).`));
          else if (err.code === "EACCES") reject(new StartupError(`PORT ${config.port} needs privileges this process lacks: set PORT to 1024 or above.`));
          else reject(err);
        });
        server.listen(config.port, config.host, () => {
          const addr = server.address();
          resolve({ host: config.host, port: typeof addr === "object" && addr ? addr.port : config.port });
        });
      }),
    close: () =>
      (closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        const timer = setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs);
        await closed;
        clearTimeout(timer);
        await pgl.release();
        await cancellation.close();
      })()),
  };
}

function routeLabel(path: string): string {
  if (path === "/graphql" || path.startsWith("/graphql/")) return "/graphql";
  if (path.startsWith("/graphiql") || path.startsWith("/ruru-static")) return "/graphiql";
  if (path === "/health" || path === "/ready" || path === "/metrics") return path;
  return "other";
}
