// tasks:recur — recurring tasks get their next occurrence, set-based, idempotent, month-end safe, in
// the organization's time zone, as the system principal.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { pino } from "pino";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { runTenantJob, sqlTenantJob } from "../../worker/tenant/runner.ts";
import { seedDemoData } from "../../src/db/seed-demo.ts";

let db: TestDb;
let org: SeededTenant;
let other: SeededTenant;
const logger = pino({ level: "silent" });

beforeAll(async () => {
  db = await createTestDb();
  org = await seedTenant(db, "recur");
  other = await seedTenant(db, "recur-other");
});
afterAll(async () => {
  await db?.drop();
});

/** Runs tasks:recur for the organization as of an instant; returns the occurrences it created. */
async function recur(asOf: string, orgId = org.id): Promise<number | null> {
  const r = await runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: orgId, task: "tasks:recur", payload: { asOf }, logger }, sqlTenantJob("crm_jobs.recur_tasks"));
  return r.rowsAffected;
}

async function template(values: Record<string, unknown>): Promise<string> {
  const row = { organization_id: org.id, title: "Template", is_recurring: true, ...values };
  const cols = Object.keys(row);
  const { rows } = await db.owner.query(
    `insert into crm.tasks (${cols.join(", ")}) values (${cols.map((_, i) => `$${i + 1}`).join(", ")}) returning id`,
    Object.values(row),
  );
  return rows[0].id;
}

async function occurrences(templateId: string) {
  const { rows } = await db.owner.query<{ n: number; due: string | null }>(
    `select occurrence_number as n, to_char(due_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as due
       from crm.tasks where recurrence_template_id = $1 order by occurrence_number`,
    [templateId],
  );
  return rows;
}

const setTimeZone = (orgId: string, tz: string) =>
  db.owner.query("update crm.organizations set settings = settings || jsonb_build_object('timezone', $2::text) where id = $1", [orgId, tz]);

describe("month-end rule", () => {
  test("Jan 31 monthly: Feb 29 in a leap year, then back to Mar 31, Apr 30, May 31", async () => {
    const t = await template({ title: "Month-end report", created_at: "2024-01-31T08:00:00Z", due_at: "2024-01-31T17:00:00Z", recurrence_interval: "1 month" });
    expect(await recur("2024-02-28T12:00:00Z")).toBe(0);
    expect(await recur("2024-02-29T12:00:00Z")).toBe(1);
    expect(await recur("2024-03-30T12:00:00Z")).toBe(0);
    expect(await recur("2024-03-31T12:00:00Z")).toBe(1);
    expect(await recur("2024-04-30T12:00:00Z")).toBe(1);
    expect(await recur("2024-05-31T12:00:00Z")).toBe(1);
    expect(await occurrences(t)).toEqual([
      { n: 1, due: "2024-02-29 17:00" },
      { n: 2, due: "2024-03-31 17:00" },
      { n: 3, due: "2024-04-30 17:00" },
      { n: 4, due: "2024-05-31 17:00" },
    ]);
    await db.owner.query("update crm.tasks set is_recurring = false where id = $1", [t]);
  });

  test("Jan 31 monthly in a common year gives Feb 28; quarterly and yearly intervals work the same way", async () => {
    const monthly = await template({ created_at: "2023-01-31T08:00:00Z", due_at: "2023-01-31T09:00:00Z", recurrence_interval: "1 month" });
    const quarterly = await template({ created_at: "2023-11-30T08:00:00Z", due_at: "2023-11-30T09:00:00Z", recurrence_interval: "3 months" });
    const yearly = await template({ created_at: "2020-02-29T08:00:00Z", due_at: "2020-02-29T09:00:00Z", recurrence_interval: "1 year" });
    expect(await recur("2023-02-28T12:00:00Z")).toBe(2); // monthly (Feb 28) and yearly (its 3rd year: 2023-02-28)
    expect(await occurrences(monthly)).toEqual([{ n: 1, due: "2023-02-28 09:00" }]);
    expect(await recur("2024-02-29T12:00:00Z")).toBe(3); // monthly (latest: 13th), quarterly (Nov 30 → Feb 29), yearly (back to Feb 29)
    expect((await occurrences(monthly)).at(-1)).toEqual({ n: 13, due: "2024-02-29 09:00" });
    expect(await occurrences(quarterly)).toEqual([{ n: 1, due: "2024-02-29 09:00" }]);
    expect(await occurrences(yearly)).toEqual([
      { n: 3, due: "2023-02-28 09:00" },
      { n: 4, due: "2024-02-29 09:00" },
    ]);
    await db.owner.query("update crm.tasks set is_recurring = false where id = any ($1::uuid[])", [[monthly, quarterly, yearly]]);
  });
});

describe("idempotency and catch-up", () => {
  test("running twice the same day creates nothing the second time; missed periods give one occurrence, not one each", async () => {
    const t = await template({ created_at: "2024-06-03T08:00:00Z", due_at: "2024-06-04T10:00:00Z", recurrence_interval: "7 days" });
    expect(await recur("2024-06-09T12:00:00Z")).toBe(0);
    expect(await recur("2024-06-10T02:00:00Z")).toBe(1);
    expect(await recur("2024-06-10T23:00:00Z")).toBe(0);
    expect(await recur("2024-06-10T23:30:00Z")).toBe(0);
    // Three weeks without a run: the latest period's occurrence only.
    expect(await recur("2024-07-02T12:00:00Z")).toBe(1);
    expect(await occurrences(t)).toEqual([
      { n: 1, due: "2024-06-11 10:00" },
      { n: 4, due: "2024-07-02 10:00" },
    ]);
    const tpl = await db.owner.query("select recurrence_count, to_char(last_triggered_at at time zone 'UTC', 'YYYY-MM-DD') as last from crm.tasks where id = $1", [t]);
    expect(tpl.rows[0]).toEqual({ recurrence_count: 4, last: "2024-07-02" });
    // Even if the count were lost, the same occurrence cannot be created twice.
    await db.owner.query("update crm.tasks set recurrence_count = 0 where id = $1", [t]);
    expect(await recur("2024-07-02T13:00:00Z")).toBe(0);
    await db.owner.query("update crm.tasks set is_recurring = false where id = $1", [t]);
  });
});

describe("what an occurrence copies", () => {
  test("assignee, links, priority, estimated hours; due date shifted; points at its template; made by the system principal", async () => {
    const t = await template({
      type: "call",
      title: "Quarterly check-in",
      description: "Ask about renewals",
      priority: "high",
      estimated_hours: 1.5,
      assignee_id: org.memberId,
      customer_id: org.customerId,
      contact_id: org.contactId,
      deal_id: org.dealId,
      project_id: org.projectId,
      created_at: "2024-03-01T08:00:00Z",
      due_at: "2024-03-05T14:00:00Z",
      recurrence_interval: "14 days",
      status: "in_progress",
    });
    expect(await recur("2024-03-15T12:00:00Z")).toBe(1);
    const { rows } = await db.owner.query(
      `select type, title, description, priority, estimated_hours::text, assignee_id, customer_id, contact_id, deal_id, project_id,
              status, is_recurring, recurrence_template_id, occurrence_number, created_by, to_char(due_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as due
         from crm.tasks where recurrence_template_id = $1`,
      [t],
    );
    const principal = (await db.owner.query("select crm.system_principal_id($1) as id", [org.id])).rows[0].id;
    expect(rows).toEqual([
      {
        type: "call", title: "Quarterly check-in", description: "Ask about renewals", priority: "high", estimated_hours: "1.50",
        assignee_id: org.memberId, customer_id: org.customerId, contact_id: org.contactId, deal_id: org.dealId, project_id: org.projectId,
        status: "not_started", is_recurring: false, recurrence_template_id: t, occurrence_number: 1, created_by: principal, due: "2024-03-19 14:00",
      },
    ]);
    // Audited with the system principal: the occurrence and the template's move.
    const audit = await db.owner.query(
      `select a.operation, a.actor_id, a.request_id like 'job:tasks:recur:%' as from_job from crm.audit_log a
        where a.table_name = 'tasks' and a.record_id in ($1::text, (select id::text from crm.tasks where recurrence_template_id = $1::uuid)) and a.created_at > now() - interval '1 minute'
          and a.actor_id is not null order by a.operation`,
      [t],
    );
    expect(audit.rows).toEqual([
      { operation: "INSERT", actor_id: principal, from_job: true },
      { operation: "UPDATE", actor_id: principal, from_job: true },
    ]);
    await db.owner.query("update crm.tasks set is_recurring = false where id = $1", [t]);
  });

  test("an inactive assignee is not copied; a template linked to a deleted customer waits until it is restored", async () => {
    const stale = await template({ assignee_id: org.memberId, created_at: "2024-04-01T08:00:00Z", recurrence_interval: "1 day" });
    const deleted = await template({ customer_id: org.customerId, created_at: "2024-04-01T08:00:00Z", recurrence_interval: "1 day" });
    await db.owner.query("update crm.organization_memberships set is_active = false where user_id = $1 and organization_id = $2", [org.memberId, org.id]);
    await db.owner.query("update crm.customers set deleted_at = now() where id = $1", [org.customerId]);
    try {
      expect(await recur("2024-04-03T12:00:00Z")).toBe(1);
      const copied = await db.owner.query("select assignee_id from crm.tasks where recurrence_template_id = $1", [stale]);
      expect(copied.rows).toEqual([{ assignee_id: null }]);
      expect(await occurrences(deleted)).toEqual([]);
    } finally {
      await db.owner.query("update crm.organization_memberships set is_active = true where user_id = $1 and organization_id = $2", [org.memberId, org.id]);
      await db.owner.query("update crm.customers set deleted_at = null where id = $1", [org.customerId]);
    }
    expect(await recur("2024-04-03T13:00:00Z")).toBe(1);
    expect(await occurrences(deleted)).toEqual([{ n: 2, due: null }]);
    await db.owner.query("update crm.tasks set is_recurring = false where id = any ($1::uuid[])", [[stale, deleted]]);
  });
});

describe("time zone", () => {
  test("days are the organization's local days", async () => {
    await setTimeZone(org.id, "Pacific/Auckland"); // UTC+13 in January
    try {
      // Created 2024-01-10 12:00 UTC = Jan 11 01:00 in Auckland.
      const t = await template({ created_at: "2024-01-10T12:00:00Z", recurrence_interval: "1 day" });
      expect(await recur("2024-01-11T10:30:00Z")).toBe(0); // Jan 11 23:30 local: still the first day
      expect(await recur("2024-01-11T11:30:00Z")).toBe(1); // Jan 12 00:30 local
      await db.owner.query("update crm.tasks set is_recurring = false where id = $1", [t]);
    } finally {
      await setTimeZone(org.id, "UTC");
    }
  });
});

describe("tenancy", () => {
  test("a run for one organization creates nothing in another", async () => {
    const mine = await template({ created_at: "2024-08-01T08:00:00Z", recurrence_interval: "1 day" });
    const theirs = (await db.owner.query(
      "insert into crm.tasks (organization_id, title, is_recurring, recurrence_interval, created_at) values ($1, 'Theirs', true, '1 day', '2024-08-01T08:00:00Z') returning id",
      [other.id],
    )).rows[0].id;
    expect(await recur("2024-08-05T12:00:00Z")).toBe(1);
    expect(await occurrences(mine)).toHaveLength(1);
    expect(await occurrences(theirs)).toEqual([]);
    expect(await recur("2024-08-05T12:00:00Z", other.id)).toBe(1);
    expect(await occurrences(theirs)).toHaveLength(1);
    await db.owner.query("update crm.tasks set is_recurring = false where id = any ($1::uuid[])", [[mine, theirs]]);
  });
});

describe("through the worker", () => {
  test("an enqueued tasks:recur job runs for its organization and records the run", async () => {
    const t = await template({ created_at: new Date(Date.now() - 3 * 86_400_000).toISOString(), recurrence_interval: "1 day" });
    await db.owner.query("select crm_private.enqueue_tenant_job('tasks:recur', $1)", [org.id]);
    const [queued] = await jobs(db, "tasks:recur");
    expect(queued?.payload).toMatchObject({ organizationId: org.id });
    await runJobs(db);
    expect(await occurrences(t)).toEqual([{ n: 3, due: null }]);
    const { rows } = await db.owner.query(
      "select outcome, rows_affected, attempt, max_attempts from crm.job_runs where organization_id = $1 and task = 'tasks:recur' and job_id is not null",
      [org.id],
    );
    expect(rows).toEqual([{ outcome: "succeeded", rows_affected: "1", attempt: 1, max_attempts: 5 }]);
    await db.owner.query("update crm.tasks set is_recurring = false where id = $1", [t]);
  });
});

describe("over GraphQL", () => {
  let server: TestServer;
  let manager: string;
  beforeAll(async () => {
    server = await startServer(db);
    const { rows } = await db.owner.query(
      "insert into crm.users (username, email, full_name) values ('recur-manager', 'recur-manager@example.test', 'Manager') returning id",
    );
    await db.owner.query("insert into crm.organization_memberships (organization_id, user_id, role_id) values ($1, $2, $3)", [org.id, rows[0].id, org.roles["Sales Manager"]]);
    manager = (await startSession(db, rows[0].id, org.id)).accessToken;
  });
  afterAll(async () => {
    await server?.stop();
  });
  const gql = (q: string, v: Record<string, unknown> = {}) => server.gql<any>(q, v, { token: manager });

  test("intervals are whole days, weeks or months; hours and mixed units are refused with the field", async () => {
    for (const interval of [{ hours: 12 }, { months: 1, days: 2 }]) {
      const r = await gql(`mutation ($i: IntervalInput!) { createTask(input: { task: { title: "Bad", isRecurring: true, recurrenceInterval: $i } }) { task { rowId } } }`, { i: interval });
      expect(r.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "recurrenceInterval" });
    }
    const ok = await gql(`mutation { createTask(input: { task: { title: "Weekly sync", isRecurring: true, recurrenceInterval: { days: 7 } } }) { task { rowId recurrenceInterval { days } } } }`);
    expect(ok.body.errors).toBeUndefined();
    expect(ok.body.data.createTask.task.recurrenceInterval.days).toBe(7);
  });

  test("occurrences link to their template; ending a recurrence is an update, and occurrences stay", async () => {
    const t = await template({ title: "Standup notes", created_at: "2024-09-01T08:00:00Z", recurrence_interval: "1 day" });
    expect(await recur("2024-09-02T12:00:00Z")).toBe(1);
    const read = await gql(`query ($id: UUID!) { task(rowId: $id) { isRecurring recurrenceCount lastTriggeredAt occurrences { nodes { occurrenceNumber recurrenceTemplate { rowId } } } } }`, { id: t });
    expect(read.body.errors).toBeUndefined();
    expect(read.body.data.task).toMatchObject({ isRecurring: true, recurrenceCount: 1, occurrences: { nodes: [{ occurrenceNumber: 1, recurrenceTemplate: { rowId: t } }] } });
    const end = await gql(`mutation ($id: UUID!) { updateTask(input: { rowId: $id, patch: { isRecurring: false } }) { task { isRecurring } } }`, { id: t });
    expect(end.body.data.updateTask.task.isRecurring).toBe(false);
    expect(await recur("2024-09-05T12:00:00Z")).toBe(0);
    expect(await occurrences(t)).toHaveLength(1);
    // The job-written columns are not part of the API's input.
    const sneaky = await gql(`mutation ($id: UUID!) { updateTask(input: { rowId: $id, patch: { recurrenceCount: 99 } }) { task { rowId } } }`, { id: t });
    expect(sneaky.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
  });
});

describe("demo organization", () => {
  test("has recurring tasks, including a month-end one, that the job turns into occurrences", async () => {
    const demo = await seedTenant(db, "recur-demo");
    await seedDemoData(db.owner, demo.id, { volume: { customers: 5, deals: 3, projects: 1, tasks: 20, taskDependencies: 0, workLogs: 0, notes: 0, managers: 0, reps: 1, teams: 1 }, append: true });
    const { rows } = await db.owner.query(
      "select title, recurrence_interval::text as every from crm.tasks where organization_id = $1 and is_recurring order by title",
      [demo.id],
    );
    expect(rows.length).toBeGreaterThanOrEqual(3);
    expect(rows.map((r) => r.every)).toEqual(expect.arrayContaining(["7 days", "1 mon"]));
    expect(await recur(new Date().toISOString(), demo.id)).toBeGreaterThanOrEqual(0);
  });
});
