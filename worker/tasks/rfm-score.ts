// rfm:score — a tenant job (worker/tenant/registry.ts): scores every customer of one organization
// with crm_jobs.score_rfm, one set-based statement (docs/rfm.md). Daily at the organization's local
// hour, and on recalculateRfm (the payload then names the queued crm.rfm_runs row). The handler only
// adds the crm.job_runs id to the payload, so the run records which attempt completed it.
import type { TenantJobFn } from "../tenant/runner.ts";

export const RFM_SCORE_TASK = "rfm:score";

export const scoreRfm: TenantJobFn = async ({ client, payload, runId }) => {
  const { rows } = await client.query<{ n: string | null }>("select crm_jobs.score_rfm($1::jsonb)::text as n", [
    JSON.stringify({ ...payload, jobRunId: runId }),
  ]);
  return rows[0]?.n == null ? undefined : Number(rows[0].n);
};
