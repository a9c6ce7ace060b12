// Maps verified token claims to the principal the database sees.
import type { Pool } from "pg";
import { isUuid, type PrincipalResolver } from "./context.ts";

export function makePrincipalResolver(_authPool: Pool): PrincipalResolver {
  return async (source, claims) => {
    if (source !== "cairn" || !isUuid(claims.sub)) return null;
    return {
      userId: claims.sub,
      organizationId: isUuid(claims.org) ? claims.org : null,
      sessionId: isUuid(claims.sid) ? claims.sid : null,
    };
  };
}
