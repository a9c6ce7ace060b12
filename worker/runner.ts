// graphile-worker, in-process with the API (WORKER=inline) or standalone (npm run worker).
import fs from "node:fs/promises";
import path from "node:path";
import type { Pool } from "pg";
import { run, parseCrontab, Logger as WorkerLogger, type Runner } from "graphile-worker";
import { ROOT_DIR, type Config } from "../src/config.ts";
import type { Logger } from "../src/logger.ts";
import { makeTaskList } from "./tasks/index.ts";

export interface WorkerHooks {
  onJobComplete?: (task: string) => void;
  onJobFailed?: (task: string) => void;
  onJobStart?: (task: string) => void;
  /** The last attempt failed: the job will not run again. */
  onJobPermanentlyFailed?: (task: string) => void;
  /** Every attempt, when it ends: how long it ran and whether it succeeded. */
  onJobFinished?: (task: string, outcome: "succeeded" | "failed", seconds: number) => void;
}

export async function loadCrontab(): Promise<string> {
  return fs.readFile(path.join(ROOT_DIR, "worker", "crontab"), "utf8");
}

export async function startWorker(opts: {
  config: Config;
  logger: Logger;
  ownerPool: Pool;
  /** Authenticator pool for tenant jobs (worker/tenant/runner.ts). */
  authPool?: Pool;
  hooks?: WorkerHooks;
  handleSignals?: boolean;
}): Promise<Runner> {
  const { config, logger, ownerPool } = opts;
  const log = logger.child({ component: "worker" });
  const crontab = await loadCrontab();
  parseCrontab(crontab); // fail at start on a malformed crontab
  const runner = await run({
    pgPool: ownerPool,
    concurrency: config.workerConcurrency,
    noHandleSignals: !opts.handleSignals,
    pollInterval: 2000,
    taskList: makeTaskList({ config, logger: log, ownerPool, authPool: opts.authPool }),
    crontab,
    logger: new WorkerLogger((scope) => (level, message, meta) => {
      const fn = level === "error" ? log.error.bind(log) : level === "warning" ? log.warn.bind(log) : level === "info" ? log.info.bind(log) : log.debug.bind(log);
      fn({ ...scope, ...(meta ?? {}) }, message);
    }),
  });
  runner.events.on("job:success", ({ job }) => opts.hooks?.onJobComplete?.(job.task_identifier));
  runner.events.on("job:error", ({ job, error }) => {
    opts.hooks?.onJobFailed?.(job.task_identifier);
    log.warn({ task: job.task_identifier, jobId: job.id, attempt: job.attempts, err: error }, "job attempt failed");
  });
  const startedAt = new Map<string, bigint>();
  runner.events.on("job:start", ({ job }) => {
    startedAt.set(String(job.id), process.hrtime.bigint());
    opts.hooks?.onJobStart?.(job.task_identifier);
  });
  runner.events.on("job:complete", ({ job, error }) => {
    const start = startedAt.get(String(job.id));
    startedAt.delete(String(job.id));
    if (start !== undefined) opts.hooks?.onJobFinished?.(job.task_identifier, error ? "failed" : "succeeded", Number(process.hrtime.bigint() - start) / 1e9);
  });
  runner.events.on("job:failed", ({ job, error }) => {
    opts.hooks?.onJobPermanentlyFailed?.(job.task_identifier);
    const organizationId = (job.payload as { organizationId?: unknown } | null)?.organizationId;
    log.error(
      { task: job.task_identifier, jobId: job.id, attempts: job.attempts, maxAttempts: job.max_attempts, organizationId, err: error },
      "job failed permanently",
    );
  });
  return runner;
}
