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
}

export async function loadCrontab(): Promise<string> {
  return fs.readFile(path.join(ROOT_DIR, "worker", "crontab"), "utf8");
}

export async function startWorker(opts: {
  config: Config;
  logger: Logger;
  ownerPool: Pool;
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
    taskList: makeTaskList({ config, logger: log, ownerPool }),
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
  return runner;
}
