import type { Pool } from "pg";
import type { Logger } from "pino";
import type { Config } from "../src/config.ts";

export interface TaskContext {
  config: Config;
  logger: Logger;
  ownerPool: Pool;
  /** Authenticator pool: tenant jobs run their transaction on it as crm_user (ownerPool if absent). */
  authPool?: Pool;
}

export class PayloadError extends Error {
  override name = "PayloadError";
}

/** SQL can enqueue anything: check a payload's shape before trusting its type. */
export function assertPayload<T>(payload: unknown, check: (value: T) => boolean): T {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload) || !check(payload as T)) {
    throw new PayloadError(`invalid job payload: ${JSON.stringify(payload)}`);
  }
  return payload as T;
}
