// Watching jobs: jobRuns over GraphQL (jobs:read: Administrator yes, Sales Representative no), and a
// job that fails for good is recorded, logged at error level and counted in /metrics — with the
// worker running inside the server, as in production.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let admin: string;
let rep: string;

const RUNS = `query ($filter: JobRunFilter) { jobRuns(filter: $filter, orderBy: STARTED_AT_DESC) {
  totalCount nodes { task outcome attempt maxAttempts rowsAffected error errorCode startedAt finishedAt organizationId } } }`;

async function until<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const metrics = async () => (await fetch(`${server.url}/metrics`)).text();
const metric = (text: string, name: string, labels: string) =>
  Number(text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`))?.split(" ")[1] ?? 0);

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "watch");
  const repId = await addMember(db, org, "watch-rep", "Sales Representative");
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  rep = (await startSession(db, repId, org.id)).accessToken;
  // A recurring task whose next occurrence a trigger refuses: tasks:recur fails for this organization.
  await db.owner.query(`
    create function public.zz_refuse_boom() returns trigger language plpgsql as $$
    begin
      if new.title = 'boom' and new.recurrence_template_id is not null then raise exception 'boom: refused on purpose'; end if;
      return new;
    end $$`);
  await db.owner.query("create trigger zz_refuse_boom before insert on crm.tasks for each row execute function public.zz_refuse_boom()");
  await db.owner.query(
    "insert into crm.tasks (organization_id, title, is_recurring, recurrence_interval, created_at) values ($1, 'boom', true, '1 day', now() - interval '2 days')",
    [org.id],
  );
  server = await startServer(db, { WORKER: "inline" });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("a job that fails for good", () => {
  test("is recorded in jobRuns, logged at error level with its organization, and counted in /metrics", async () => {
    await db.owner.query("select crm_private.enqueue_tenant_job('tasks:recur', $1, '{}', 1)", [org.id]);
    const failed = await until("the failed run", async () => {
      const r = await server.gql<any>(RUNS, { filter: { outcome: { equalTo: "failed" } } }, { token: admin });
      return r.body.data?.jobRuns?.nodes?.[0];
    });
    expect(failed).toMatchObject({
      task: "tasks:recur",
      outcome: "failed",
      attempt: 1,
      maxAttempts: 1,
      rowsAffected: null,
      error: "boom: refused on purpose",
      errorCode: "P0001",
      organizationId: org.id,
    });
    expect(failed.finishedAt).toBeTruthy();
    const logged = await until("the error log line", async () =>
      server.logs.find((l) => l.msg === "job failed permanently" && l.task === "tasks:recur"),
    );
    expect(logged).toMatchObject({ level: 50, organizationId: org.id, attempts: 1, maxAttempts: 1 });
    const text = await until("the failure in /metrics", async () => {
      const t = await metrics();
      return metric(t, "cairn_jobs_permanently_failed_total", 'task="tasks:recur"') === 1 ? t : null;
    });
    expect(metric(text, "cairn_jobs_started_total", 'task="tasks:recur"')).toBe(1);
    expect(metric(text, "cairn_jobs_failed_total", 'task="tasks:recur"')).toBe(1);
    expect(metric(text, "cairn_job_duration_seconds_count", 'task="tasks:recur",outcome="failed"')).toBe(1);
    // Nothing of the failed run was kept.
    const occurrences = await db.owner.query("select count(*)::int as n from crm.tasks where organization_id = $1 and recurrence_template_id is not null", [org.id]);
    expect(occurrences.rows[0].n).toBe(0);
  });

  test("once the cause is fixed, the next run succeeds and is counted as such", async () => {
    await db.owner.query("drop trigger zz_refuse_boom on crm.tasks");
    await db.owner.query("select crm_private.enqueue_tenant_job('tasks:recur', $1)", [org.id]);
    const ok = await until("the successful run", async () => {
      const r = await server.gql<any>(RUNS, { filter: { outcome: { equalTo: "succeeded" }, task: { equalTo: "tasks:recur" } } }, { token: admin });
      return r.body.data?.jobRuns?.nodes?.[0];
    });
    expect(ok).toMatchObject({ task: "tasks:recur", outcome: "succeeded", rowsAffected: "1", error: null, maxAttempts: 5 });
    const text = await until("the success in /metrics", async () => {
      const t = await metrics();
      return metric(t, "cairn_jobs_completed_total", 'task="tasks:recur"') >= 1 ? t : null;
    });
    expect(metric(text, "cairn_job_duration_seconds_count", 'task="tasks:recur",outcome="succeeded"')).toBeGreaterThanOrEqual(1);
  });
});

describe("who sees jobRuns", () => {
  test("an Administrator (jobs:read) sees the organization's runs; a Sales Representative sees none", async () => {
    const asAdmin = await server.gql<any>(RUNS, {}, { token: admin });
    expect(asAdmin.body.errors).toBeUndefined();
    expect(asAdmin.body.data.jobRuns.totalCount).toBeGreaterThanOrEqual(2);
    expect(new Set(asAdmin.body.data.jobRuns.nodes.map((n: { organizationId: string }) => n.organizationId))).toEqual(new Set([org.id]));
    const asRep = await server.gql<any>(RUNS, {}, { token: rep });
    expect(asRep.body.errors).toBeUndefined();
    expect(asRep.body.data.jobRuns).toEqual({ totalCount: 0, nodes: [] });
    const perms = await server.gql<any>(`{ currentPermissions }`, {}, { token: admin });
    expect(perms.body.data.currentPermissions).toContain("jobs:read");
  });

  test("job runs cannot be written through the API", async () => {
    const r = await server.gql<any>(`mutation { createJobRun(input: { jobRun: { task: "fake" } }) { clientMutationId } }`, {}, { token: admin });
    expect(r.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
  });
});

describe("organization settings for the schedule", () => {
  test("time zone, hour and weekday are validated with the field at fault", async () => {
    const update = (settings: Record<string, unknown>) =>
      server.gql<any>(`mutation ($id: UUID!, $s: JSON!) { updateOrganization(input: { rowId: $id, patch: { settings: $s } }) { organization { settings } } }`, { id: org.id, s: settings }, { token: admin });
    const zone = await update({ timezone: "Mars/Olympus_Mons" });
    expect(zone.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "settings.timezone" });
    const hour = await update({ timezone: "Europe/Berlin", daily_job_hour: 25 });
    expect(hour.body.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "settingsDailyJobHour" });
    const ok = await update({ timezone: "Europe/Berlin", daily_job_hour: 4, weekly_job_day: 5 });
    expect(ok.body.data.updateOrganization.organization.settings).toMatchObject({ timezone: "Europe/Berlin", daily_job_hour: 4, weekly_job_day: 5 });
  });
});
