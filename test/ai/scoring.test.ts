// Lead scoring in the product: the features in SQL, the ai:score-leads job through the worker under
// the organization's row-level security, scores set by hand, scoreLeads, a burst of edits scoring
// once, and training on an organization's own history.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import pg from "pg";
import { pino } from "pino";
import { withDatabase } from "../../src/db/bootstrap.ts";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { addMember, createOrg, startSession } from "../helpers/identity.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { runTenantJob } from "../../worker/tenant/runner.ts";
import { makeTrainLeadModel } from "../../worker/ai/jobs.ts";
import { generateSyntheticHistory } from "../../worker/ai/synthetic.ts";

let db: TestDb;
let a: SeededTenant;
let b: SeededTenant;
let server: TestServer;
const logger = pino({ level: "silent" });

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "score-a");
  b = await seedTenant(db, "score-b");
  // The fixture's stored model is a stub: these organizations score with the prior model.
  await db.owner.query("delete from crm.lead_score_models where organization_id = any ($1)", [[a.id, b.id]]);
  // Runs the fixtures queued (drafts, a rescoring after the fixture model): not these tests' business.
  await db.owner.query("delete from graphile_worker._private_jobs");
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const admin = (org: SeededTenant) => ({ sub: org.adminId, org: org.id });

async function scoreNow(orgId: string, env: Record<string, string> = {}): Promise<void> {
  await db.owner.query("select crm_private.enqueue_tenant_job('ai:score-leads', $1)", [orgId]);
  await runJobs(db, env);
}

async function customer(id: string) {
  return (await db.owner.query("select lead_score, lead_score_reasons, lead_score_model, lead_scored_at from crm.customers where id = $1", [id])).rows[0];
}

describe("features (crm_jobs.lead_features)", () => {
  test("one row per visible customer, with the documented values, and nothing of another organization", async () => {
    const rows = await asUser(db, admin(a), async (c) => (await c.query("select * from crm_jobs.lead_features()")).rows);
    const own = (await db.owner.query("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [a.id])).rows[0].n;
    expect(rows).toHaveLength(own);
    const f = rows.find((r) => r.customer_id === a.customerId)!;
    expect(f).toMatchObject({
      kind: "company", status: "prospect", is_company: 1, is_prospect: 1,
      tasks_30d: 2, tasks_90d: 2, tasks_done_90d: 0, notes_30d: 1, notes_90d: 1, work_hours_90d: 0.5, days_since_touch: 0,
      campaign_engagement_90d: 0, open_deals: 1, max_stage_probability: 10, orders_total: 1, orders_365d: 1, days_since_order: 0,
      has_email: 1, has_phone: 0, has_website: 0, has_primary_contact: 1, profile_completeness: 0.4,
      industry_conversion: 0.5, source_conversion: 0.5,
    });
    expect(f.log_open_amount).toBeCloseTo(Math.log(2), 6);
    // Another organization's customer is not there, even when asked for by id.
    const asked = await asUser(db, admin(a), async (c) => (await c.query("select * from crm_jobs.lead_features($1::uuid[])", [[b.customerId]])).rows);
    expect(asked).toEqual([]);
  });

  test("as of a cutoff, only what happened before it counts", async () => {
    const rows = await asUser(db, admin(a), async (c) =>
      (await c.query("select * from crm_jobs.lead_features($1::uuid[], array[now() - interval '1 day'])", [[a.customerId]])).rows);
    expect(rows[0]).toMatchObject({ tasks_90d: 0, notes_90d: 0, orders_total: 0, open_deals: 0, has_primary_contact: 0, status: "lead" });
  });
});

describe("ai:score-leads (local model) through the worker", () => {
  test("scores every customer and contact of the organization, with reasons, history and an audit trail naming the system principal", async () => {
    await scoreNow(a.id);
    const c = await customer(a.customerId);
    expect(c.lead_score).toBeGreaterThanOrEqual(0);
    expect(c.lead_score).toBeLessThanOrEqual(100);
    expect(c.lead_score_model).toBe("local-prior-v1");
    expect(c.lead_score_reasons.length).toBeGreaterThanOrEqual(1);
    expect(c.lead_score_reasons.every((r: string) => /\((raises|lowers) the score\)$/.test(r))).toBe(true);
    const contact = (await db.owner.query("select lead_score_model from crm.contacts where id = $1", [a.contactId])).rows[0];
    expect(contact.lead_score_model).toBe("local-prior-v1");
    const history = (await db.owner.query(
      "select provider, model, score, previous_score, features is not null as has_features from crm.lead_score_history where customer_id = $1 order by scored_at desc limit 1",
      [a.customerId])).rows;
    expect(history).toEqual([{ provider: "local", model: "local-prior-v1", score: c.lead_score, previous_score: 0, has_features: true }]);
    const run = (await db.owner.query("select outcome, rows_affected from crm.job_runs where organization_id = $1 and task = 'ai:score-leads' order by started_at desc limit 1", [a.id])).rows[0];
    expect(run.outcome).toBe("succeeded");
    expect(Number(run.rows_affected)).toBeGreaterThanOrEqual(2);
    const audit = (await db.owner.query(
      `select a.actor_id from crm.audit_log a where a.table_name = 'customers' and a.record_id = $1 and a.changes ? 'lead_score_model' order by a.created_at desc limit 1`,
      [a.customerId])).rows[0];
    expect(audit.actor_id).toBe((await db.owner.query("select crm.system_principal_id($1) as id", [a.id])).rows[0].id);
  });

  test("organization B is not touched by A's run (the job runs under A's row-level security)", async () => {
    const runIds = (await db.owner.query("select id from crm.job_runs where organization_id = $1 and task = 'ai:score-leads'", [a.id])).rows.map((r) => `job:ai:score-leads:${r.id}`);
    const written = (await db.owner.query("select distinct organization_id from crm.audit_log where request_id = any ($1)", [runIds])).rows;
    expect(written).toEqual([{ organization_id: a.id }]);
    const bScored = (await db.owner.query("select count(*)::int as n from crm.customers where organization_id = $1 and lead_scored_at is not null", [b.id])).rows[0].n;
    expect(bScored).toBe(0);
    const bHistory = (await db.owner.query("select count(*)::int as n from crm.lead_score_history where organization_id = $1 and provider <> 'manual'", [b.id])).rows[0].n;
    expect(bHistory).toBe(1); // the fixture row
  });

  test("running again with nothing changed writes nothing", async () => {
    await scoreNow(a.id);
    const run = (await db.owner.query("select rows_affected from crm.job_runs where organization_id = $1 and task = 'ai:score-leads' order by started_at desc limit 1", [a.id])).rows[0];
    expect(Number(run.rows_affected)).toBe(0);
  });

  test("leadScore is filterable and sortable, with its reasons, over GraphQL", async () => {
    const token = (await startSession(db, a.adminId, a.id)).accessToken;
    const res = await server.gql(
      `{ customers(filter: { leadScore: { greaterThanOrEqualTo: 0 }, leadScoredAt: { isNull: false } }, orderBy: LEAD_SCORE_DESC) {
           nodes { rowId leadScore leadScoreReasons leadScoreModel leadScoredAt leadScoreHistories(first: 3) { nodes { score provider model } } } }
         contacts(orderBy: LEAD_SCORE_DESC, first: 1) { nodes { leadScore leadScoreModel leadSource } } }`,
      {},
      { token },
    );
    expect(res.body.errors).toBeUndefined();
    const node = res.body.data!.customers.nodes.find((n: { rowId: string }) => n.rowId === a.customerId);
    expect(node.leadScoreModel).toBe("local-prior-v1");
    expect(node.leadScoreHistories.nodes[0]).toMatchObject({ provider: "local" });
    expect(res.body.data!.contacts.nodes[0].leadScoreModel).toBe("local-prior-v1");
  });
});

describe("scores set by hand, and scoreLeads", () => {
  test("a score set by hand is pinned (model manual, in the history) and the job leaves it alone", async () => {
    await asUser(db, admin(a), (c) => c.query("update crm.customers set lead_score = 91 where id = $1", [a.customerId]), { commit: true });
    expect(await customer(a.customerId)).toMatchObject({ lead_score: 91, lead_score_model: "manual", lead_score_reasons: ["Set by hand"] });
    const manual = (await db.owner.query("select score, provider from crm.lead_score_history where customer_id = $1 and provider = 'manual'", [a.customerId])).rows;
    expect(manual).toEqual([{ score: 91, provider: "manual" }]);
    await scoreNow(a.id);
    expect((await customer(a.customerId)).lead_score).toBe(91);
  });

  test("the model's columns are not a person's to write", async () => {
    const err = await sqlError(asUser(db, admin(a), (c) => c.query("update crm.customers set lead_score_model = 'bedrock:fake' where id = $1", [a.customerId])));
    expect(err).toMatchObject({ code: "CRFBD", column: "lead_score_model" });
    const gql = await server.gql(`mutation ($id: UUID!) { updateCustomer(input: { rowId: $id, patch: { leadScoreModel: "x" } }) { customer { rowId } } }`, { id: a.customerId }, {
      token: (await startSession(db, a.adminId, a.id)).accessToken,
    });
    expect(gql.body.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION");
  });

  test("scoreLeads unpins the records asked for and rescores them at once (ai:use)", async () => {
    const token = (await startSession(db, a.adminId, a.id)).accessToken;
    const res = await server.gql(`mutation ($ids: [UUID]) { scoreLeads(input: { customerIds: $ids }) { result } }`, { ids: [a.customerId] }, { token });
    expect(res.body).toEqual({ data: { scoreLeads: { result: 1 } } });
    expect((await customer(a.customerId)).lead_score_model).toBeNull();
    const queued = (await jobs(db, "ai:score-leads")).filter((j) => j.payload.organizationId === a.id);
    expect(queued).toHaveLength(1);
    expect(queued[0]!.payload.reason).toBe("requested");
    await runJobs(db);
    expect((await customer(a.customerId)).lead_score_model).toBe("local-prior-v1");
  });

  test("scoreLeads refuses what the caller cannot see or do: NOT_FOUND naming the id, FORBIDDEN without ai:use", async () => {
    const tokenB = (await startSession(db, b.adminId, b.id)).accessToken;
    const res = await server.gql(`mutation ($ids: [UUID]) { scoreLeads(input: { customerIds: $ids }) { result } }`, { ids: [b.customerId, a.customerId] }, { token: tokenB });
    expect(res.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "customerIds[1]" });
    const viewer = await addMember(db, a, "score-a-viewer", "Viewer");
    const tokenViewer = (await startSession(db, viewer, a.id)).accessToken;
    const refused = await server.gql(`mutation { scoreLeads(input: {}) { result } }`, {}, { token: tokenViewer });
    expect(refused.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });
});

describe("when scoring runs", () => {
  test("a burst of 100 edits to one customer produces one scoring job, due a minute after the first edit", async () => {
    await db.owner.query("select graphile_worker.remove_job($1)", [`tenant:ai:score-leads:${a.id}`]);
    const first = (await db.owner.query("select now() as t")).rows[0].t as Date;
    for (let i = 0; i < 100; i++) {
      await asUser(db, admin(a), (c) => c.query("update crm.customers set phone = $2 where id = $1", [a.customerId, `+1 555 01${String(i).padStart(2, "0")}`]), { commit: true });
    }
    const queued = await db.owner.query(
      `select j.run_at, j.key from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id
        where t.identifier = 'ai:score-leads' and j.payload->>'organizationId' = $1`, [a.id]);
    expect(queued.rows).toHaveLength(1);
    expect(queued.rows[0].key).toBe(`tenant:ai:score-leads:${a.id}`);
    const due = new Date(queued.rows[0].run_at).getTime();
    expect(due).toBeGreaterThan(first.getTime());
    expect(due).toBeLessThanOrEqual(first.getTime() + 60_000 + 5_000);
  });

  test("tasks, notes, work logs, deals and orders enqueue it too; the job's own writes do not", async () => {
    await db.owner.query("select graphile_worker.remove_job($1)", [`tenant:ai:score-leads:${b.id}`]);
    await asUser(db, admin(b), (c) => c.query("insert into crm.notes (content, customer_id) values ('Called them', $1)", [b.customerId]), { commit: true });
    expect((await jobs(db, "ai:score-leads")).filter((j) => j.payload.organizationId === b.id)).toHaveLength(1);
    await db.owner.query("select graphile_worker.remove_job($1)", [`tenant:ai:score-leads:${b.id}`]);
    await runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: b.id, task: "ai:score-leads", logger }, async ({ client }) => {
      await client.query("update crm.customers set lead_score_reasons = '{x}' where id = $1", [b.customerId]);
    });
    expect((await jobs(db, "ai:score-leads")).filter((j) => j.payload.organizationId === b.id)).toHaveLength(0);
  });

  test("ai:score-leads is nightly and ai:train weekly in the tenant job schedule", async () => {
    const { tenantSchedule } = await import("../../worker/tenant/registry.ts");
    expect(tenantSchedule().filter((t) => t.identifier.startsWith("ai:"))).toEqual([
      { identifier: "ai:score-leads", schedule: "daily", max_attempts: 5 },
      { identifier: "ai:train", schedule: "weekly", max_attempts: 5 },
    ]);
  });
});

describe("ai:train", () => {
  test("too little history: the prior model, with the reason", async () => {
    await runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: a.id, task: "ai:train", logger }, makeTrainLeadModel());
    const m = (await db.owner.query("select version, kind, name, training_size, metrics from crm.lead_score_models where organization_id = $1", [a.id])).rows;
    expect(m).toHaveLength(1);
    expect(m[0]).toMatchObject({ version: 1, kind: "prior", name: "local-prior-v1" });
    expect(m[0].metrics.reason).toMatch(/^too little history/);
  });

  test("an organization with history gets its own model, measured on its newest outcomes, and everything is rescored with it", async () => {
    const org = await createOrg(db, "score-history");
    const su = new pg.Client({ connectionString: withDatabase(db.rootUrl, db.name) });
    await su.connect();
    try {
      await generateSyntheticHistory(su, org.id, { customers: 600, seed: 7 });
    } finally {
      await su.end();
    }
    await db.owner.query("select graphile_worker.remove_job($1)", [`tenant:ai:score-leads:${org.id}`]);
    await db.owner.query("select crm_private.enqueue_tenant_job('ai:train', $1)", [org.id]);
    await runJobs(db);
    const runs = (await db.owner.query("select outcome, error from crm.job_runs where organization_id = $1 and task = 'ai:train'", [org.id])).rows;
    expect(runs).toEqual([{ outcome: "succeeded", error: null }]);
    const m = (await db.owner.query("select version, kind, name, training_size, positives, negatives, metrics, coefficients from crm.lead_score_models where organization_id = $1", [org.id])).rows;
    expect(m).toHaveLength(1);
    expect(m[0]).toMatchObject({ version: 1, kind: "logistic", name: "local-logistic-v1" });
    expect(m[0].training_size).toBe(m[0].positives + m[0].negatives);
    expect(m[0].metrics.auc).toBeGreaterThan(0.8);
    expect(Object.keys(m[0].coefficients.features)).toContain("max_stage_probability");
    // The new model queued a rescoring run (the model trigger), which the worker ran next.
    const rescored = (await db.owner.query("select outcome from crm.job_runs where organization_id = $1 and task = 'ai:score-leads'", [org.id])).rows;
    expect(rescored).toEqual([{ outcome: "succeeded" }]);
    const scored = (await db.owner.query(
      "select count(*)::int as n, count(*) filter (where lead_score_model = 'local-logistic-v1')::int as by_model from crm.customers where organization_id = $1", [org.id])).rows[0];
    expect(scored.by_model).toBe(scored.n);
    // Converted customers score higher than lost ones, on average.
    const means = (await db.owner.query(
      "select status, avg(lead_score)::float8 as mean from crm.customers where organization_id = $1 and status in ('customer', 'churned') group by status", [org.id])).rows;
    const mean = Object.fromEntries(means.map((r) => [r.status, r.mean]));
    expect(mean.customer).toBeGreaterThan(mean.churned);
  });
});
