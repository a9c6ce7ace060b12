// maintenance:prune — removes what has outlived its use (permanently failed jobs after the retention
// period, and whatever later modules add to crm_private.prune()), and tenant job runs past
// JOB_RUNS_RETENTION_DAYS (crm_private.prune_job_runs).
import type { Task } from "graphile-worker";
import { assertPayload, type TaskContext } from "../types.ts";

export interface PrunePayload {
  retentionDays?: number;
}

export function makeMaintenancePrune(ctx: TaskContext): Task {
  return async (payload, helpers) => {
    const p = assertPayload<PrunePayload>(payload, (v) => v.retentionDays === undefined || (Number.isInteger(v.retentionDays) && v.retentionDays! >= 1));
    const days = p.retentionDays ?? 30;
    const { rows } = await helpers.query<{ prune: Record<string, number> }>(
      "select crm_private.prune(make_interval(days => $1)) as prune",
      [days],
    );
    const runs = await helpers.query<{ prune: Record<string, number> }>(
      "select crm_private.prune_job_runs(make_interval(days => $1)) as prune",
      [ctx.config.jobs.runsRetentionDays],
    );
    ctx.logger.info({ task: "maintenance:prune", removed: { ...rows[0]?.prune, ...runs.rows[0]?.prune } }, "maintenance prune finished");
  };
}
