// Maps verified token claims to the principal the database sees. Every request re-checks the session
// (so logout, password reset and deactivation take effect at once), inside its own transaction or, for the external issuer,
// provisions the user and membership on first use and keeps the mapped role in step.
import type { Pool } from "pg";
import type { Config } from "../config.ts";
import { isUuid, type PrincipalResolver } from "./context.ts";

export function makePrincipalResolver(config: Config, authPool: Pool): PrincipalResolver {
  return async (source, claims, opts = {}) => {
    if (source === "cairn") {
      if (!isUuid(claims.sub) || !isUuid(claims.sid)) return null;
      const org = claims.org === undefined || claims.org === null ? null : claims.org;
      if (org !== null && !isUuid(org)) return null;
      // On GraphQL over HTTP the session is checked inside the request's transaction
      // (src/auth/request-settings.ts); elsewhere (websockets, CSV routes) it is checked here.
      if (opts.deferSessionCheck) return { userId: claims.sub, organizationId: org, sessionId: claims.sid, deferredSessionCheck: true };
      const { rows } = await authPool.query<{ user_id: string; organization_id: string | null }>(
        "select user_id, organization_id from crm_private.session_principal($1, $2, $3)",
        [claims.sid, claims.sub, org],
      );
      const row = rows[0];
      return row ? { userId: row.user_id, organizationId: row.organization_id, sessionId: claims.sid } : null;
    }
    const ext = config.externalJwt;
    const subject = claims.sub ?? claims.user_id;
    const roleName = typeof claims.role === "string" ? ext.roleMap[claims.role.toLowerCase()] : undefined;
    const organization = typeof claims.org === "string" && claims.org ? claims.org : ext.defaultOrganization;
    if (typeof subject !== "string" && typeof subject !== "number") return null;
    if (!roleName || !organization) return null;
    const { rows } = await authPool.query<{ user_id: string; organization_id: string }>(
      "select user_id, organization_id from crm_private.external_principal($1, $2, $3, $4, $5)",
      [ext.issuer ?? "external", String(subject), typeof claims.email === "string" ? claims.email : null, roleName, organization],
    );
    const row = rows[0];
    return row ? { userId: row.user_id, organizationId: row.organization_id, sessionId: null } : null;
  };
}
