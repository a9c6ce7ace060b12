// Token verification → pgSettings. The database role is always chosen here (crm_anonymous without a
// token, crm_user with a valid one); a `role` claim never reaches SET ROLE.
import jwt from "jsonwebtoken";
import type { Config } from "../config.ts";
import { httpError } from "../http/errors.ts";

export interface Principal {
  userId: string;
  organizationId: string | null;
  sessionId: string | null;
}

export interface TokenClaims {
  sub?: string;
  user_id?: string;
  org?: string;
  sid?: string;
  role?: string;
  email?: string;
  exp?: number;
  iss?: string;
  aud?: string | string[];
}

export type TokenSource = "cairn" | "external";

/**
 * Resolves verified claims to the principal the database will see. The identity module checks the
 * session (revocation), the user and the membership here, and provisions external principals.
 */
export type PrincipalResolver = (source: TokenSource, claims: TokenClaims) => Promise<Principal | null>;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Names of database roles (ours, PostgreSQL's built-in ones, the usual superuser names). */
const DATABASE_ROLE = /^(crm_[a-z_]*|pg_[a-z_]*|postgres|rds_?superuser|cloudsqlsuperuser|azure_superuser|supabase_admin|root)$/i;

export function isUuid(v: unknown): v is string {
  return typeof v === "string" && UUID.test(v);
}

export function verifyToken(config: Config, jwtSecret: string, token: string): { source: TokenSource; claims: TokenClaims } {
  let ownError: unknown;
  try {
    const claims = jwt.verify(token, jwtSecret, {
      algorithms: ["HS256"],
      issuer: config.jwt.issuer,
      audience: config.jwt.audience,
    }) as TokenClaims;
    // jsonwebtoken accepts a token without `exp`; an access token that never expires is refused.
    if (typeof claims.exp !== "number") throw new Error("tokens must expire");
    return { source: "cairn", claims };
  } catch (e) {
    ownError = e;
  }
  const ext = config.externalJwt;
  if (ext.secret && !(ownError instanceof jwt.TokenExpiredError)) {
    try {
      const claims = jwt.verify(token, ext.secret, {
        algorithms: ["HS256"],
        clockTolerance: 30,
        ...(ext.issuer ? { issuer: ext.issuer } : {}),
        ...(ext.audience ? { audience: ext.audience } : {}),
      }) as TokenClaims;
      if (typeof claims.exp !== "number") throw new Error("external tokens must expire");
      return { source: "external", claims };
    } catch (e) {
      if (e instanceof jwt.TokenExpiredError) throw e;
    }
  }
  throw ownError;
}

export interface RequestInfo {
  authorization: string | undefined;
  requestId: string | undefined;
  clientIp: string | undefined;
  userAgent?: string | undefined;
}

/** Server configuration the SQL auth functions read (cairn.auth.*); never taken from the client. */
export function authSettings(config: Config): Record<string, string> {
  return {
    "cairn.auth.bcrypt_cost": String(config.auth.bcryptCost),
    "cairn.auth.password_min_length": String(config.auth.passwordMinLength),
    "cairn.auth.login_max_failures": String(config.auth.loginMaxFailures),
    "cairn.auth.login_lock_seconds": String(config.auth.loginLockSeconds),
    "cairn.auth.ip_max_failures": String(config.auth.ipMaxFailures),
    "cairn.auth.require_email_confirmation": String(config.auth.requireEmailConfirmation),
    "cairn.auth.refresh_token_ttl_seconds": String(config.jwt.refreshTokenTtlSeconds),
  };
}

/** Build the per-request pgSettings; throws an HTTP 401 error for a bad, expired or revoked token. */
export async function pgSettingsFor(
  config: Config,
  jwtSecret: string,
  req: RequestInfo,
  resolve: PrincipalResolver,
): Promise<Record<string, string>> {
  const settings: Record<string, string> = { role: "crm_anonymous", ...authSettings(config) };
  // The time budget of the request's transaction (SET LOCAL): exceeding it cancels the statement.
  if (config.hardening.statementTimeoutMs > 0) settings.statement_timeout = String(config.hardening.statementTimeoutMs);
  if (req.requestId) settings["cairn.request_id"] = req.requestId;
  if (req.clientIp) settings["cairn.client_ip"] = req.clientIp;
  if (req.userAgent) settings["cairn.user_agent"] = req.userAgent.slice(0, 500);
  const header = req.authorization;
  if (!header) return settings;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!match?.[1]) throw httpError(401, "UNAUTHENTICATED", "Malformed Authorization header; expected 'Bearer <token>'.");
  let verified: { source: TokenSource; claims: TokenClaims };
  try {
    verified = verifyToken(config, jwtSecret, match[1]);
  } catch (e) {
    throw httpError(401, "UNAUTHENTICATED", e instanceof jwt.TokenExpiredError ? "Token expired." : "Invalid token.");
  }
  // A token that names a database role is forged or misconfigured: the role is ours to choose.
  if (typeof verified.claims.role === "string" && DATABASE_ROLE.test(verified.claims.role)) {
    throw httpError(401, "UNAUTHENTICATED", "Invalid token.");
  }
  const principal = await resolve(verified.source, verified.claims);
  if (!principal) throw httpError(401, "UNAUTHENTICATED", "The session is no longer valid; sign in again.");
  settings.role = "crm_user";
  settings["jwt.claims.sub"] = principal.userId;
  if (principal.organizationId) settings["jwt.claims.org"] = principal.organizationId;
  if (principal.sessionId) settings["jwt.claims.sid"] = principal.sessionId;
  return settings;
}
