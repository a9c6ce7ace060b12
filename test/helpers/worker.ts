// Run worker tasks against a test database exactly as the worker would (graphile-worker runOnce).
import { runOnce, Logger } from "graphile-worker";
import { pino } from "pino";
import { loadConfig } from "../../src/config.ts";
import { makeTaskList } from "../../worker/tasks/index.ts";
import type { TestDb } from "./db.ts";

const silent = new Logger(() => () => undefined);

/** Runs every job that is due now, then returns. */
export async function runJobs(db: TestDb, env: Record<string, string> = {}): Promise<void> {
  const config = loadConfig({ NODE_ENV: "test", DATABASE_URL: db.ownerUrl, AUTH_DATABASE_URL: db.authUrl, JWT_SECRET: "x".repeat(32), ...env });
  const logger = pino({ level: "silent" });
  await runOnce({ pgPool: db.owner, taskList: makeTaskList({ config, logger, ownerPool: db.owner, authPool: db.auth }), logger: silent });
  // graphile-worker records completions without awaiting them; wait until no job is still locked.
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.owner.query("select count(*)::int as n from graphile_worker._private_jobs where locked_at is not null");
    if (rows[0].n === 0) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error("jobs stayed locked after the worker finished");
}

export async function jobs(db: TestDb, task?: string) {
  const { rows } = await db.owner.query<{ task_identifier: string; payload: Record<string, unknown>; attempts: number; last_error: string | null }>(
    `select t.identifier as task_identifier, j.payload, j.attempts, j.last_error
       from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id
      where $1::text is null or t.identifier = $1 order by j.id`,
    [task ?? null],
  );
  return rows;
}
