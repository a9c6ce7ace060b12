// jobs:fan_out — every 15 minutes (crontab): enqueues each scheduled tenant task (worker/tenant/
// registry.ts) for every organization whose slot has come, in the organization's time zone, once per
// slot. One SQL statement for all organizations (crm_private.fan_out_tenant_jobs); a slot missed while
// the worker was down is enqueued once at the next run.
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";
import { tenantSchedule } from "../tenant/registry.ts";

export interface FanOutPayload {
  /** Compute the slots as of this instant instead of now (re-running a past tick by hand). */
  asOf?: string;
}

export function makeJobsFanOut(ctx: TaskContext): Task {
  return async (payload, helpers) => {
    const p = assertPayload<FanOutPayload>(payload, (v) => v.asOf === undefined || !Number.isNaN(Date.parse(v.asOf)));
    const { rows } = await helpers.query<{ task: string; n: number }>(
      `select task, count(*)::int as n from crm_private.fan_out_tenant_jobs($1::jsonb, coalesce($2::timestamptz, now())) group by task`,
      [JSON.stringify(tenantSchedule()), p.asOf ?? null],
    );
    const enqueued = Object.fromEntries(rows.map((r) => [r.task, r.n]));
    ctx.logger.info({ task: "jobs:fan_out", enqueued }, "tenant jobs enqueued");
  };
}
