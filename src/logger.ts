// JSON logs (pino). Request-scoped children carry the request id; secrets are redacted.
import { AsyncLocalStorage } from "node:async_hooks";
import { pino, type Logger } from "pino";

/** The request a log line belongs to: every line logged while serving it carries its id. */
export const requestScope = new AsyncLocalStorage<{ requestId: string }>();

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "cairn" },
    mixin: () => requestScope.getStore() ?? {},
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        "req.headers.authorization",
        "req.headers.cookie",
        "headers.authorization",
        "*.password",
        "*.token",
        "*.refreshToken",
        "*.accessToken",
        "variables.*",
      ],
      censor: "[redacted]",
    },
  });
}
export type { Logger };
