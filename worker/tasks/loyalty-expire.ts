// loyalty:expire — nightly: expires the loyalty points whose expiry date has passed, one set-based
// statement per organization (crm_private.expire_loyalty_points), each in its own transaction.
// `organizationId` limits the run to one organization. When the tenant job framework lands, it
// calls the same SQL function per organization instead of this loop.
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";

export interface LoyaltyExpirePayload {
  organizationId?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function makeLoyaltyExpire(ctx: TaskContext): Task {
  return async (payload, helpers) => {
    const p = assertPayload<LoyaltyExpirePayload>(payload, (v) => v.organizationId === undefined || (typeof v.organizationId === "string" && UUID.test(v.organizationId)));
    const { rows: orgs } = await helpers.query<{ id: string }>(
      "select id from crm.organizations where $1::uuid is null or id = $1::uuid order by id",
      [p.organizationId ?? null],
    );
    let customers = 0;
    for (const { id } of orgs) {
      const { rows } = await helpers.query<{ n: number }>("select crm_private.expire_loyalty_points($1) as n", [id]);
      customers += rows[0]?.n ?? 0;
    }
    ctx.logger.info({ task: "loyalty:expire", organizations: orgs.length, customers }, "loyalty points expired");
  };
}
