// The tenant job runner: a job for organization A runs under A's row-level security as A's system
// principal, so even deliberately wrong SQL cannot read or write organization B; every change it
// makes is audited with the system principal; every run is recorded in crm.job_runs.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { pino } from "pino";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { GLOBAL_TABLES } from "../helpers/catalog.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { runTenantJob, TenantJobBusyError, type TenantJobFn } from "../../worker/tenant/runner.ts";

let db: TestDb;
let a: SeededTenant;
let b: SeededTenant;
let tenantTables: string[];
const logger = pino({ level: "silent" });

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "runner-a");
  b = await seedTenant(db, "runner-b");
  const { rows } = await db.owner.query<{ name: string }>(`
    select c.oid::regclass::text as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'crm' and c.relkind in ('r', 'p')
       and exists (select 1 from pg_attribute x where x.attrelid = c.oid and x.attname = 'organization_id' and not x.attisdropped)
     order by 1`);
  tenantTables = rows.map((r) => r.name).filter((t) => !(t in GLOBAL_TABLES));
});
afterAll(async () => {
  await db?.drop();
});

const pools = () => ({ ownerPool: db.owner, authPool: db.auth });
const run = (org: string, fn: TenantJobFn, task = "test:job") => runTenantJob(pools(), { organizationId: org, task, logger }, fn);
const principalOf = async (org: string) => (await db.owner.query("select crm.system_principal_id($1) as id", [org])).rows[0].id as string;

describe("isolation: a job for A cannot reach B, even with wrong SQL", () => {
  test("reads: no table shows a row of B, and A's rows are there", async () => {
    const leaks: string[] = [];
    let ownRows = 0;
    await run(a.id, async ({ client }) => {
      for (const t of tenantTables) {
        const { rows } = await client.query(
          `select count(*) filter (where organization_id = $1)::int as b, count(*) filter (where organization_id = $2)::int as a from ${t}`,
          [b.id, a.id],
        );
        if (rows[0].b !== 0) leaks.push(`${t}: ${rows[0].b} rows of B`);
        ownRows += rows[0].a;
      }
      const orgs = await client.query("select id from crm.organizations");
      if (orgs.rows.some((r) => r.id !== a.id)) leaks.push("crm.organizations: another organization");
      const users = await client.query("select id from crm.users where id = any ($1::uuid[])", [[b.adminId, b.memberId, await principalOf(b.id)]]);
      if (users.rows.length) leaks.push(`crm.users: ${users.rows.length} users of B`);
    });
    expect(leaks).toEqual([]);
    expect(ownRows).toBeGreaterThan(tenantTables.length); // the job does see its own organization
  });

  test("an unscoped UPDATE and DELETE injected on purpose change only A's rows", async () => {
    const before = await db.owner.query("select organization_id, count(*)::int as n from crm.tasks group by 1");
    const counts = Object.fromEntries(before.rows.map((r) => [r.organization_id, r.n]));
    const result = await run(a.id, async ({ client }) => {
      const upd = await client.query("update crm.tasks set title = 'changed by a job'"); // no WHERE on purpose
      await client.query("delete from crm.task_dependencies"); // no WHERE on purpose
      return upd.rowCount ?? 0;
    });
    expect(result.outcome).toBe("succeeded");
    expect(result.rowsAffected).toBe(counts[a.id]);
    const after = await db.owner.query("select organization_id, count(*) filter (where title = 'changed by a job')::int as changed from crm.tasks group by 1");
    const changed = Object.fromEntries(after.rows.map((r) => [r.organization_id, r.changed]));
    expect(changed[a.id]).toBe(counts[a.id]);
    expect(changed[b.id]).toBe(0);
    const deps = await db.owner.query("select organization_id from crm.task_dependencies");
    expect(deps.rows.map((r) => r.organization_id)).toEqual([b.id]);
  });

  test("writing into B is refused: by the column grants, and by RLS", async () => {
    const err = await sqlError(
      run(a.id, async ({ client }) => {
        await client.query("insert into crm.tasks (organization_id, title) values ($1, 'planted')", [b.id]);
      }),
    );
    expect(err.code).toBe("42501");
    const written = await run(a.id, async ({ client }) => {
      // B's rows are not there to update, and a new row lands in A.
      const upd = await client.query("update crm.customers set industry = 'reached' where organization_id = $1", [b.id]);
      const r = await client.query("insert into crm.tags (name) values ('from a job') returning organization_id");
      return (upd.rowCount ?? 0) * 10 + (r.rows[0].organization_id === a.id ? 1 : 0);
    });
    expect(written.rowsAffected).toBe(1);
    const planted = await db.owner.query("select count(*)::int as n from crm.tasks where title = 'planted'");
    expect(planted.rows[0].n).toBe(0);
  });

  test("switching the organization claim inside the job reaches nothing: its principal is a member of A only", async () => {
    const seen = await run(a.id, async ({ client }) => {
      await client.query("select set_config('jwt.claims.org', $1, true)", [b.id]);
      const tasks = await client.query("select count(*)::int as n from crm.tasks");
      const upd = await client.query("update crm.customers set name = 'hijacked'");
      const perms = await client.query("select crm.has_permission('customers:read_all') as p");
      return tasks.rows[0].n + (upd.rowCount ?? 0) + (perms.rows[0].p ? 1 : 0);
    });
    expect(seen.rowsAffected).toBe(0);
    const hijacked = await db.owner.query("select count(*)::int as n from crm.customers where name = 'hijacked'");
    expect(hijacked.rows[0].n).toBe(0);
  });

  test("the job runs as crm_user, not as the owner", async () => {
    const r = await run(a.id, async ({ client }) => {
      const { rows } = await client.query("select current_user as u, crm.current_user_id() as sub, crm.current_org_id() as org");
      expect(rows[0]).toEqual({ u: "crm_user", sub: await principalOf(a.id), org: a.id });
      await client.query("savepoint probe");
      const secret = await client.query("select 1 from crm_private.sessions").catch((e) => e as { code: string });
      expect((secret as { code: string }).code).toBe("42501");
      await client.query("rollback to savepoint probe");
      // Even RESET ROLE does not escape: the connection is the authenticator's, which has no privileges.
      await client.query("reset role");
      const escaped = await client.query("select count(*) from crm.tasks").catch((e) => e as { code: string });
      expect((escaped as { code: string }).code).toBe("42501");
      await client.query("rollback to savepoint probe");
      return 1;
    });
    expect(r.rowsAffected).toBe(1);
  });
});

describe("audit: every change names the system principal", () => {
  test("inserts, updates and deletes made by a job are audited with the system principal and the run", async () => {
    const principal = await principalOf(a.id);
    const result = await run(
      a.id,
      async ({ client }) => {
        const ins = await client.query("insert into crm.notes (content, customer_id) values ('written by a job', $1) returning id", [a.customerId]);
        await client.query("update crm.customers set industry = 'Automation' where id = $1", [a.customerId]);
        await client.query("update crm.notes set content = 'edited by a job' where id = $1", [ins.rows[0].id]);
        return 3;
      },
      "test:audit",
    );
    const { rows } = await db.owner.query(
      "select table_name, operation, actor_id, organization_id from crm.audit_log where request_id = $1 order by id",
      [`job:test:audit:${result.runId}`],
    );
    expect(rows.map((r) => `${r.table_name} ${r.operation}`)).toEqual(["notes INSERT", "customers UPDATE", "notes UPDATE"]);
    expect(new Set(rows.map((r) => r.actor_id))).toEqual(new Set([principal]));
    expect(new Set(rows.map((r) => r.organization_id))).toEqual(new Set([a.id]));
    const actor = await db.owner.query("select full_name, username from crm.users where id = $1", [principal]);
    expect(actor.rows[0].full_name).toBe("System");
  });
});

describe("job_runs", () => {
  test("a successful run is recorded with its rows; a failed run with its error, and its changes are rolled back", async () => {
    const ok = await runTenantJob(pools(), { organizationId: a.id, task: "test:record", attempt: 2, maxAttempts: 5, jobId: "42", logger }, async () => 7);
    const err = await runTenantJob(pools(), { organizationId: a.id, task: "test:record", attempt: 5, maxAttempts: 5, logger }, async ({ client }) => {
      await client.query("update crm.customers set industry = 'never committed' where id = $1", [a.customerId]);
      await client.query("select 1 / 0");
    }).catch((e) => e as Error);
    expect(String(err)).toContain("division by zero");
    const { rows } = await db.owner.query(
      "select outcome, rows_affected, attempt, max_attempts, job_id, error, error_code, finished_at is not null as finished from crm.job_runs where task = 'test:record' order by started_at",
    );
    expect(rows).toEqual([
      { outcome: "succeeded", rows_affected: "7", attempt: 2, max_attempts: 5, job_id: "42", error: null, error_code: null, finished: true },
      { outcome: "failed", rows_affected: null, attempt: 5, max_attempts: 5, job_id: null, error: "division by zero", error_code: "22012", finished: true },
    ]);
    expect(ok.runId).toBeTruthy();
    const industry = await db.owner.query("select industry from crm.customers where id = $1", [a.customerId]);
    expect(industry.rows[0].industry).not.toBe("never committed");
  });

  test("a swallowed error that aborted the transaction is a failure, not a success", async () => {
    const err = await run(a.id, async ({ client }) => {
      await client.query("select 1 / 0").catch(() => undefined);
      return 1;
    }, "test:swallowed").catch((e) => e as Error);
    expect(String(err)).toContain("aborted");
    const { rows } = await db.owner.query("select outcome from crm.job_runs where task = 'test:swallowed'");
    expect(rows).toEqual([{ outcome: "failed" }]);
  });

  test("a second run of the same task for the same organization does not start while one runs", async () => {
    let release!: () => void;
    const holding = new Promise<void>((r) => (release = r));
    let started!: () => void;
    const isRunning = new Promise<void>((r) => (started = r));
    const first = run(a.id, async () => {
      started();
      await holding;
      return 1;
    }, "test:busy");
    await isRunning;
    const second = await run(a.id, async () => 1, "test:busy").catch((e) => e);
    const otherOrg = await run(b.id, async () => 1, "test:busy");
    release();
    expect(second).toBeInstanceOf(TenantJobBusyError);
    expect(otherOrg.outcome).toBe("succeeded");
    expect((await first).outcome).toBe("succeeded");
    const again = await run(a.id, async () => 1, "test:busy");
    expect(again.outcome).toBe("succeeded");
    const { rows } = await db.owner.query("select organization_id from crm.job_runs where task = 'test:busy'");
    expect(rows).toHaveLength(3);
  });

  test("an organization that no longer exists is skipped without a record", async () => {
    const r = await run("00000000-0000-4000-8000-000000000000", async () => 1, "test:gone");
    expect(r).toEqual({ runId: null, outcome: "skipped", rowsAffected: null });
  });

  test("prune: old finished runs go, runs left running by a dead worker are closed", async () => {
    await db.owner.query(
      `insert into crm.job_runs (organization_id, task, outcome, started_at, finished_at) values
         ($1, 'test:prune-old', 'succeeded', now() - interval '100 days', now() - interval '100 days'),
         ($1, 'test:prune-recent', 'succeeded', now() - interval '10 days', now() - interval '10 days'),
         ($1, 'test:prune-stuck', 'running', now() - interval '7 hours', null)`,
      [a.id],
    );
    const { rows } = await db.owner.query("select crm_private.prune_job_runs(interval '90 days') as r");
    expect(rows[0].r).toEqual({ job_runs: 1, job_runs_abandoned: 1 });
    const left = await db.owner.query("select task, outcome from crm.job_runs where task like 'test:prune-%' order by task");
    expect(left.rows).toEqual([
      { task: "test:prune-recent", outcome: "succeeded" },
      { task: "test:prune-stuck", outcome: "failed" },
    ]);
  });
});

describe("through the worker", () => {
  test("a run that finds its task running for the organization comes back later instead of failing", async () => {
    const holder = await db.owner.connect();
    try {
      // Stand in for a run in progress: hold the runner's lock for (tasks:recur, A).
      await holder.query("select pg_advisory_lock(hashtext('cairn:tenant-job'), hashtext('tasks:recur:' || $1))", [a.id]);
      await db.owner.query("select crm_private.enqueue_tenant_job('tasks:recur', $1)", [a.id]);
      await runJobs(db);
      const [later] = await jobs(db, "tasks:recur");
      expect(later).toMatchObject({ attempts: 0, last_error: null, payload: expect.objectContaining({ organizationId: a.id }) });
      const waiting = await db.owner.query("select key, run_at > now() + interval '30 seconds' as later from graphile_worker._private_jobs where key like 'tenant:tasks:recur:%'");
      expect(waiting.rows).toEqual([{ key: `tenant:tasks:recur:${a.id}`, later: true }]);
      const runs = await db.owner.query("select count(*)::int as n from crm.job_runs where task = 'tasks:recur' and organization_id = $1 and job_id is not null", [a.id]);
      expect(runs.rows[0].n).toBe(0);
    } finally {
      await holder.query("select pg_advisory_unlock_all()");
      holder.release();
    }
    await db.owner.query("update graphile_worker._private_jobs set run_at = now()");
    await runJobs(db);
    expect(await jobs(db)).toEqual([]);
    const runs = await db.owner.query("select outcome from crm.job_runs where task = 'tasks:recur' and organization_id = $1 and job_id is not null", [a.id]);
    expect(runs.rows).toEqual([{ outcome: "succeeded" }]);
  });
});
