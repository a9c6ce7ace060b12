// The tenant job runner: the one way background work touches an organization's data.
//
// runTenantJob opens a transaction on the authenticator pool, becomes crm_user with the
// organization's claims and its system principal (SET LOCAL ROLE + jwt.claims.*), runs the job in
// it, and records the run in crm.job_runs (as the owner, outside that transaction, so a failed run
// is recorded too). Row-level security therefore limits everything the job's SQL reads or writes to
// that organization, whatever the SQL says, and every change it makes is audited with the system
// principal as the actor and "job:<task>:<run id>" as the request id.
//
// A session-level advisory lock on (task, organization) keeps two runs of the same task for the same
// organization from overlapping; a run that finds the lock taken throws TenantJobBusyError without
// recording anything (the worker task re-enqueues it: registry.ts).
import type { Pool, PoolClient } from "pg";
import type { Logger } from "pino";

export interface TenantJobPools {
  /** Owner connection: job_runs bookkeeping and the system principal lookup. */
  ownerPool: Pool;
  /** Authenticator connection for the job's own transaction (falls back to ownerPool). */
  authPool?: Pool;
}

export interface TenantJobContext {
  /** The job's transaction: role crm_user, the organization's claims, the system principal. */
  client: PoolClient;
  organizationId: string;
  /** The system principal (crm.users id) the job acts as. */
  principalId: string;
  task: string;
  /** The crm.job_runs id of this run. */
  runId: string;
  /** The job payload (organizationId, slot, and whatever the enqueuer added). */
  payload: Record<string, unknown>;
  logger: Logger;
}

/** A job returns the number of rows it changed (recorded as rows_affected), or nothing. */
export type TenantJobFn = (ctx: TenantJobContext) => Promise<number | void>;

export interface TenantJobOptions {
  organizationId: string;
  task: string;
  payload?: Record<string, unknown>;
  /** graphile-worker's attempt number (1 for the first) and limit, recorded with the run. */
  attempt?: number;
  maxAttempts?: number;
  jobId?: string | number;
  logger: Logger;
}

export interface TenantJobRun {
  runId: string | null;
  outcome: "succeeded" | "skipped";
  rowsAffected: number | null;
}

export class TenantJobBusyError extends Error {
  override name = "TenantJobBusyError";
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export async function runTenantJob(pools: TenantJobPools, opts: TenantJobOptions, fn: TenantJobFn): Promise<TenantJobRun> {
  const { ownerPool } = pools;
  const { organizationId, task } = opts;
  if (!UUID.test(organizationId)) throw new Error(`invalid organization id: ${organizationId}`);
  const log = opts.logger.child({ task, organizationId, jobId: opts.jobId, attempt: opts.attempt });
  const client = await (pools.authPool ?? ownerPool).connect();
  let broken: Error | undefined;
  try {
    const lock = await client.query<{ ok: boolean }>(
      "select pg_try_advisory_lock(hashtext('cairn:tenant-job'), hashtext($1 || ':' || $2)) as ok",
      [task, organizationId],
    );
    if (!lock.rows[0]?.ok) {
      throw new TenantJobBusyError(`${task} is already running for organization ${organizationId}; retried later`);
    }
    try {
      const principal = await ownerPool.query<{ id: string | null }>("select crm_private.system_principal_for($1) as id", [organizationId]);
      const principalId = principal.rows[0]?.id;
      if (!principalId) {
        log.info("organization no longer exists; tenant job skipped");
        return { runId: null, outcome: "skipped", rowsAffected: null };
      }
      const run = await ownerPool.query<{ id: string }>(
        `insert into crm.job_runs (organization_id, task, attempt, max_attempts, job_id) values ($1, $2, $3, $4, $5) returning id`,
        [organizationId, task, opts.attempt ?? 1, opts.maxAttempts ?? null, opts.jobId ?? null],
      );
      const runId = run.rows[0]!.id;
      const started = process.hrtime.bigint();
      try {
        await client.query("begin");
        await client.query("select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el", [
          JSON.stringify([
            ["role", "crm_user"],
            ["jwt.claims.sub", principalId],
            ["jwt.claims.org", organizationId],
            ["jwt.claims.sid", ""],
            ["cairn.request_id", `job:${task}:${runId}`],
          ]),
        ]);
        const result = await fn({ client, organizationId, principalId, task, runId, payload: opts.payload ?? {}, logger: log });
        // COMMIT of a transaction a swallowed error aborted rolls back without an error: that is a failure.
        const committed = await client.query("commit");
        if (committed.command === "ROLLBACK") throw new Error("the job's transaction was aborted by an earlier error and rolled back");
        const rowsAffected = typeof result === "number" ? result : null;
        await ownerPool.query(
          "update crm.job_runs set outcome = 'succeeded', rows_affected = $2, finished_at = now() where id = $1",
          [runId, rowsAffected],
        );
        log.info({ runId, rowsAffected, durationMs: Number(process.hrtime.bigint() - started) / 1e6 }, "tenant job succeeded");
        return { runId, outcome: "succeeded", rowsAffected };
      } catch (err) {
        await client.query("rollback").catch((e: Error) => (broken = e));
        const e = err as { message?: string; code?: string };
        await ownerPool
          .query("update crm.job_runs set outcome = 'failed', error = left($2, 4000), error_code = $3, finished_at = now() where id = $1", [
            runId,
            String(e?.message ?? err),
            typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code) ? e.code : null,
          ])
          .catch((recordErr: Error) => log.error({ err: recordErr, runId }, "could not record the failed tenant job run"));
        log.warn({ runId, err, final: !!opts.maxAttempts && (opts.attempt ?? 1) >= opts.maxAttempts }, "tenant job attempt failed");
        throw err;
      }
    } finally {
      if (!broken) {
        await client
          .query("select pg_advisory_unlock(hashtext('cairn:tenant-job'), hashtext($1 || ':' || $2))", [task, organizationId])
          .catch((e: Error) => (broken = e));
      }
    }
  } finally {
    // A connection whose state is unknown is closed (its session lock goes with it), not reused.
    client.release(broken);
  }
}

/** Runs a crm_jobs function (SECURITY INVOKER, payload jsonb → rows changed) as a tenant job. */
export function sqlTenantJob(fnName: string): TenantJobFn {
  if (!/^crm_jobs\.[a-z_][a-z0-9_]*$/.test(fnName)) throw new Error(`tenant job functions live in crm_jobs: ${fnName}`);
  return async ({ client, payload }) => {
    const { rows } = await client.query<{ n: string | null }>(`select ${fnName}($1::jsonb)::text as n`, [JSON.stringify(payload)]);
    return rows[0]?.n == null ? undefined : Number(rows[0].n);
  };
}
