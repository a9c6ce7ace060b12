// Request rate limits on /graphql, per client address and per signed-in principal, counted in
// PostgreSQL (crm_private.rate_limits) so several API processes share one budget. Uses
// rate-limiter-flexible: a caller over budget is then blocked in memory for the rest of the window
// (no database round trip per rejected request), and an in-memory limiter stands in while the
// database store fails. Answers carry `RateLimit-Policy` and `RateLimit` headers (IETF draft); a
// refused request gets HTTP 429, `Retry-After` and the code RATE_LIMITED.
import type { NextFunction, Request, Response } from "express";
import type { Pool } from "pg";
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { HardeningConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import { principalUserId } from "../auth/context.ts";

type Settings = HardeningConfig["rateLimit"];

function limiter(pool: Pool | undefined, prefix: string, points: number, duration: number): RateLimiterAbstract {
  const insurance = new RateLimiterMemory({ keyPrefix: prefix, points, duration });
  if (!pool) return insurance;
  return new RateLimiterPostgres({
    storeClient: pool,
    storeType: "pool",
    schemaName: "crm_private",
    tableName: "rate_limits",
    tableCreated: true,
    keyPrefix: prefix,
    points,
    duration,
    inMemoryBlockOnConsumed: points,
    inMemoryBlockDuration: duration,
    insuranceLimiter: insurance,
  });
}

export function makeRateLimits(settings: Settings, pool: Pool | undefined, logger: Logger) {
  const byAddress = limiter(pool, "addr", settings.perAddress, settings.windowSeconds);
  const byPrincipal = limiter(pool, "user", settings.perPrincipal, settings.windowSeconds);

  const headers = (res: Response, limit: number, r: RateLimiterRes) => {
    const reset = Math.max(0, Math.ceil(r.msBeforeNext / 1000));
    res.setHeader("RateLimit-Policy", `${limit};w=${settings.windowSeconds}`);
    res.setHeader("RateLimit", `limit=${limit}, remaining=${r.remainingPoints}, reset=${reset}`);
  };

  const middleware =
    (rl: RateLimiterAbstract, limit: number, keyOf: (req: Request) => string | undefined, what: string) =>
    async (req: Request, res: Response, next: NextFunction) => {
      if (!settings.enabled || (req.method !== "POST" && req.method !== "GET")) return next();
      const key = keyOf(req);
      if (!key) return next();
      try {
        headers(res, limit, await rl.consume(key));
        next();
      } catch (e) {
        if (!(e instanceof RateLimiterRes)) {
          // The limiter must never take the API down with it.
          logger.warn({ err: e }, "rate limiter failed; request let through");
          return next();
        }
        const retryAfter = Math.max(1, Math.ceil(e.msBeforeNext / 1000));
        headers(res, limit, e);
        res.setHeader("Retry-After", String(retryAfter));
        req.log.info({ limit: what, retryAfter }, "rate limited");
        res.status(429).json({
          errors: [
            {
              message: `Too many requests; retry in ${retryAfter} s.`,
              extensions: { code: "RATE_LIMITED", limit: what, retryAfterSeconds: retryAfter },
            },
          ],
        });
      }
    };

  return {
    /** Before authentication: every request counts against its client address. */
    byAddress: middleware(byAddress, settings.perAddress, (req) => req.ip ?? req.socket.remoteAddress, "address"),
    /** After authentication: signed-in requests also count against their principal (the user). */
    byPrincipal: middleware(byPrincipal, settings.perPrincipal, (req) => principalUserId(req.pgSettings), "principal"),
  };
}
