// JSON logs (pino). Request-scoped children carry the request id; secrets are redacted.
import { pino, type Logger } from "pino";

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "cairn" },
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
