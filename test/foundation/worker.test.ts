// Jobs enqueued from SQL in the cause's transaction, and the maintenance task end to end.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { parseCrontab } from "graphile-worker";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { loadCrontab } from "../../worker/runner.ts";
import { TASK_IDENTIFIERS } from "../../worker/tasks/index.ts";

let db: TestDb;
beforeAll(async () => {
  db = await createTestDb();
});
afterAll(async () => {
  await db.drop();
});

describe("crm_private.add_job", () => {
  test("a job exists if and only if its transaction commits", async () => {
    const c = await db.owner.connect();
    try {
      await c.query("begin");
      await c.query("select crm_private.add_job('maintenance:prune', '{\"retentionDays\": 7}')");
      await c.query("rollback");
      expect(await jobs(db, "maintenance:prune")).toEqual([]);
      await c.query("begin");
      await c.query("set local cairn.request_id = 'req-123'");
      await c.query("select crm_private.add_job('maintenance:prune', '{\"retentionDays\": 7}')");
      await c.query("commit");
    } finally {
      c.release();
    }
    const queued = await jobs(db, "maintenance:prune");
    expect(queued).toHaveLength(1);
    expect(queued[0]!.payload).toEqual({ retentionDays: 7, _request_id: "req-123" });
    await runJobs(db);
    expect(await jobs(db, "maintenance:prune")).toEqual([]);
  });

  test("request roles cannot enqueue jobs directly", async () => {
    const { rows } = await db.owner.query(
      "select has_function_privilege('crm_user', 'crm_private.add_job(text, jsonb, text, timestamptz, int, int)', 'execute') as u",
    );
    expect(rows[0].u).toBe(false);
  });
});

describe("maintenance:prune", () => {
  test("removes permanently failed jobs older than the retention period and keeps the rest", async () => {
    await db.owner.query("select graphile_worker.add_job('unknown:task', '{}', max_attempts := 1, job_key := 'old')");
    await db.owner.query("select graphile_worker.add_job('unknown:task', '{}', max_attempts := 1, job_key := 'recent')");
    await db.owner.query("select graphile_worker.add_job('unknown:task', '{}', max_attempts := 5, job_key := 'retrying', run_at := now() + interval '1 day')");
    await db.owner.query(`update graphile_worker._private_jobs set attempts = max_attempts, updated_at = now() - interval '40 days'
                           where key = 'old'`);
    await db.owner.query(`update graphile_worker._private_jobs set attempts = max_attempts where key = 'recent'`);
    await db.owner.query("select crm_private.add_job('maintenance:prune', '{\"retentionDays\": 30}')");
    await runJobs(db);
    const { rows } = await db.owner.query("select key from graphile_worker._private_jobs where key is not null order by key");
    expect(rows.map((r) => r.key)).toEqual(["recent", "retrying"]);
    expect(await jobs(db, "maintenance:prune")).toEqual([]);
  });

  test("a malformed payload fails the job instead of running with a guess", async () => {
    await db.owner.query("select crm_private.add_job('maintenance:prune', '{\"retentionDays\": \"soon\"}')");
    await runJobs(db);
    const [job] = await jobs(db, "maintenance:prune");
    expect(job?.attempts).toBe(1);
    expect(job?.last_error).toContain("invalid job payload");
    await db.owner.query("delete from graphile_worker._private_jobs");
  });
});

describe("crontab", () => {
  test("parses, and every scheduled task is in the task registry", async () => {
    const items = parseCrontab(await loadCrontab());
    expect(items.length).toBeGreaterThan(0);
    for (const item of items) expect(TASK_IDENTIFIERS).toContain(item.task);
  });
});
