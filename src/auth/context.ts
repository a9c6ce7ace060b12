// Token verification → pgSettings. The database role is always chosen here (crm_anonymous without a
// token, crm_user with a valid one); a `role` claim never reaches SET ROLE.
import crypto from "node:crypto";
import jwt from "jsonwebtoken";
import type { Config } from "../config.ts";
import { httpError } from "../http/errors.ts";

export interface Principal {
  userId: string;
  organizationId: string | null;
  sessionId: string | null;
  /** The session is not checked yet: crm_private.begin_request checks it in the request's transaction. */
  deferredSessionCheck?: boolean;
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
export type PrincipalResolver = (source: TokenSource, claims: TokenClaims, opts?: ResolveOptions) => Promise<Principal | null>;

export interface ResolveOptions {
  /**
   * Leave the session check of a Cairn token to the request's own transaction
   * (crm_private.begin_request). Only the GraphQL-over-HTTP path, whose settings statement is rewritten
   * (src/auth/request-settings.ts), may ask for it; websockets and the other routes check now.
   */
  deferSessionCheck?: boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Names of database roles (ours, PostgreSQL's built-in ones, the usual superuser names). */
const DATABASE_ROLE = /^(crm_[a-z_]*|pg_[a-z_]*|postgres|rds_?superuser|cloudsqlsuperuser|azure_superuser|supabase_admin|root)$/i;

export function isUuid(v: unknown): v is string {
  return typeof v === "string" && UUID.test(v);
}

const keys = new Map<string, crypto.KeyObject>();
/**
 * HS256 secrets as KeyObjects: given a string, jsonwebtoken first tries (and fails) to read it as a
 * PEM key on every call.
 */
export function secretKey(secret: string): crypto.KeyObject {
  let key = keys.get(secret);
  if (!key) keys.set(secret, (key = crypto.createSecretKey(Buffer.from(secret, "utf8"))));
  return key;
}

export function verifyToken(config: Config, jwtSecret: string, token: string): { source: TokenSource; claims: TokenClaims } {
  let ownError: unknown;
  try {
    const claims = jwt.verify(token, secretKey(jwtSecret), {
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
      const claims = jwt.verify(token, secretKey(ext.secret), {
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
  opts: ResolveOptions = {},
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
  const principal = await resolve(verified.source, verified.claims, opts);
  if (!principal) throw httpError(401, "UNAUTHENTICATED", "The session is no longer valid; sign in again.");
  if (principal.deferredSessionCheck) {
    // Fail-closed: role and claims are set by crm_private.begin_request once the session checks out.
    settings["cairn.pending_claims"] = JSON.stringify({ sub: principal.userId, org: principal.organizationId, sid: principal.sessionId });
    return settings;
  }
  settings.role = "crm_user";
  settings["jwt.claims.sub"] = principal.userId;
  if (principal.organizationId) settings["jwt.claims.org"] = principal.organizationId;
  if (principal.sessionId) settings["jwt.claims.sid"] = principal.sessionId;
  return settings;
}

/**
 * The user a request's settings name: the verified claims, or the token's subject while its session
 * check is still pending (GraphQL over HTTP checks it inside the request's transaction).
 */
export function principalUserId(settings: Record<string, string> | undefined): string | undefined {
  if (!settings) return undefined;
  if (settings["jwt.claims.sub"]) return settings["jwt.claims.sub"];
  const pending = settings["cairn.pending_claims"];
  if (!pending) return undefined;
  const sub = (JSON.parse(pending) as { sub?: unknown }).sub;
  return typeof sub === "string" ? sub : undefined;
}
