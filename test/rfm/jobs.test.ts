// rfm:score as a tenant job: isolation (a job for A, even with deliberately unscoped SQL run through
// the same runner, changes only A's rows), every change audited with A's system principal, and the
// GraphQL doors — rfmSettings, updateRfmSettings, recalculateRfm through the worker, jobRuns,
// rfmDistribution and the customers' RFM fields.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { pino } from "pino";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { startSession } from "../helpers/identity.ts";
import { customer } from "../helpers/commerce.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { runTenantJob, type TenantJobFn } from "../../worker/tenant/runner.ts";
import { scoreRfm } from "../../worker/tasks/rfm-score.ts";

let db: TestDb;
let a: SeededTenant;
let b: SeededTenant;
let rich: string;
const logger = pino({ level: "silent" });

async function paidOrders(orgId: string, customerId: string, n: number, amount: number) {
  await db.owner.query(
    `insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount, ordered_at)
     select $1, 'RFM-' || $2::text || '-' || i, $2::uuid, 'paid', 'USD', $4, $4, $4, now() - make_interval(days => i * 7)
       from generate_series(1, $3::int) i`,
    [orgId, customerId, n, amount],
  );
}

/** Everything of an organization the job could touch, for before/after comparisons. */
async function snapshot(orgId: string) {
  const q = async (sql: string) => (await db.owner.query(sql, [orgId])).rows;
  return {
    customers: await q(
      `select id, rfm_recency_score, rfm_frequency_score, rfm_monetary_score, rfm_score, rfm_recency_days, rfm_order_count,
              rfm_monetary_value, rfm_scored_at, level_id, level_changed_at from crm.customers where organization_id = $1 order by id`,
    ),
    settings: await q("select * from crm.rfm_settings where organization_id = $1"),
    runs: await q("select * from crm.rfm_runs where organization_id = $1 order by id"),
    scores: await q("select * from crm.rfm_scores where organization_id = $1 order by id"),
    levelChanges: await q("select * from crm.customer_level_changes where organization_id = $1 order by id"),
    audit: await q("select count(*)::int as n from crm.audit_log where organization_id = $1"),
  };
}

beforeAll(async () => {
  db = await createTestDb();
  a = await seedTenant(db, "rfm-a");
  b = await seedTenant(db, "rfm-b");
  rich = await customer(db, a.id, a.adminId, "Rich");
  await paidOrders(a.id, rich, 12, 150);
  const bRich = await customer(db, b.id, b.adminId, "Rich of B");
  await paidOrders(b.id, bRich, 12, 150);
});
afterAll(async () => {
  await db?.drop();
});

describe("isolation and audit", () => {
  test("a job for A with deliberately unscoped SQL, through the same runner, changes only A's rows", async () => {
    const bBefore = await snapshot(b.id);
    const wrong: TenantJobFn = async (ctx) => {
      const n = await scoreRfm(ctx);
      // Wrong on purpose: no organization anywhere.
      await ctx.client.query("update crm.customers set rfm_scored_at = '2000-01-01T00:00:00Z', rfm_score = 5");
      await ctx.client.query("update crm.rfm_settings set lookback_days = 1");
      await ctx.client.query("update crm.rfm_runs set levels_changed = 99");
      await ctx.client.query("delete from crm.rfm_scores");
      const seen = await ctx.client.query(
        `select (select count(*) from crm.customers where organization_id <> $1)::int
              + (select count(*) from crm.rfm_settings where organization_id <> $1)::int
              + (select count(*) from crm.rfm_runs where organization_id <> $1)::int
              + (select count(*) from crm.rfm_scores where organization_id <> $1)::int
              + (select count(*) from crm.orders where organization_id <> $1)::int as n`,
        [ctx.organizationId],
      );
      expect(seen.rows[0].n).toBe(0);
      return n;
    };
    const r = await runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: a.id, task: "rfm:score", logger }, wrong);
    expect(r.outcome).toBe("succeeded");
    // B: exactly as before, fixture run and scores included.
    expect(await snapshot(b.id)).toEqual(bBefore);
    expect(bBefore.scores.length).toBe(1);
    // A: the unscoped statements did run there.
    const aAfter = await snapshot(a.id);
    expect(aAfter.customers.every((c) => c.rfm_scored_at.toISOString() === "2000-01-01T00:00:00.000Z")).toBe(true);
    expect(aAfter.settings[0].lookback_days).toBe(1);
    expect(aAfter.scores).toEqual([]);
    await db.owner.query("update crm.rfm_settings set lookback_days = 730 where organization_id = $1", [a.id]);
  });

  test("the real job for A scores A only, and every change it makes is audited with A's system principal", async () => {
    // Rich is back at Bronze (by hand, then handed back to scoring): the run moves him up again.
    const { asUser } = await import("../helpers/db.ts");
    const bronze = (await db.owner.query("select id from crm.customer_levels where organization_id = $1 and rank = 1", [a.id])).rows[0].id;
    await asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("select crm.set_customer_level($1, $2, 'Reset', false)", [rich, bronze]), { commit: true });
    const bBefore = await snapshot(b.id);
    const r = await runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: a.id, task: "rfm:score", logger }, scoreRfm);
    expect(await snapshot(b.id)).toEqual(bBefore);
    const principal = (await db.owner.query("select crm.system_principal_id($1) as id", [a.id])).rows[0].id;
    const audit = await db.owner.query(
      "select organization_id, actor_id, table_name, record_id, changes from crm.audit_log where request_id = $1 order by id",
      [`job:rfm:score:${r.runId}`],
    );
    expect(audit.rows.length).toBeGreaterThan(0);
    expect(audit.rows.every((e) => e.organization_id === a.id && e.actor_id === principal)).toBe(true);
    // Rich moved from Bronze to Platinum: the level change is in the audit log (the daily scores are in rfmScores).
    const richAudit = audit.rows.find((e) => e.table_name === "customers" && e.record_id === rich);
    expect(Object.keys(richAudit!.changes).sort()).toEqual(["level_changed_at", "level_id"]);
    const change = await db.owner.query("select source, changed_by from crm.customer_level_changes where customer_id = $1 order by id", [rich]);
    expect(change.rows).toEqual([
      { source: "rfm", changed_by: principal },
      { source: "manual", changed_by: a.adminId },
      { source: "rfm", changed_by: principal },
    ]);
    // A's hand-set fixture customer kept its level (Gold).
    const fixture = await db.owner.query(
      "select l.name::text as level, c.level_set_by_hand from crm.customers c join crm.customer_levels l on l.id = c.level_id where c.id = $1",
      [a.customerId],
    );
    expect(fixture.rows[0]).toEqual({ level: "Gold", level_set_by_hand: true });
  });

  test("nobody but the job writes the RFM columns or the level, even as crm_user with the rights", async () => {
    const { asUser, sqlError } = await import("../helpers/db.ts");
    const e = await sqlError(asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("update crm.customers set rfm_score = 1 where id = $1", [rich])));
    expect(e).toMatchObject({ code: "CRFBD" });
    const e2 = await sqlError(asUser(db, { sub: a.adminId, org: a.id }, (c) => c.query("update crm.customers set level_id = null where id = $1", [rich])));
    expect(e2).toMatchObject({ code: "CRFBD" });
  });
});

describe("over GraphQL", () => {
  let server: TestServer;
  let admin: string;
  let rep: string;
  type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
  const as = async (token: string, query: string, variables: Record<string, unknown> = {}) =>
    (await server.gql(query, variables, { token })).body as Body;

  beforeAll(async () => {
    server = await startServer(db);
    admin = (await startSession(db, a.adminId, a.id)).accessToken;
    rep = (await startSession(db, a.memberId, a.id)).accessToken;
  });
  afterAll(async () => {
    await server?.stop();
  });

  test("rfmSettings for every member; updateRfmSettings with settings:manage, VALIDATION naming the field", async () => {
    const read = await as(rep, "{ rfmSettings { nodes { mode recencyBreaks frequencyBreaks monetaryBreaks recencyWeight lookbackDays countedStatuses } } }");
    expect(read.data.rfmSettings.nodes).toHaveLength(1);
    expect(read.data.rfmSettings.nodes[0]).toMatchObject({ mode: "thresholds", recencyBreaks: [30, 90, 180, 365], lookbackDays: 730, countedStatuses: ["paid", "partially_paid"] });
    const update = `mutation ($patch: UpdateRfmSettingsInput!) { updateRfmSettings(input: $patch) { result { mode recencyBreaks monetaryWeight } } }`;
    expect((await as(rep, update, { patch: { mode: "quintiles" } })).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const bad = await as(admin, update, { patch: { recencyBreaks: [30, 20, 180, 365] } });
    expect(bad.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "recencyBreaks" });
    const zero = await as(admin, update, { patch: { recencyWeight: "0", frequencyWeight: "0", monetaryWeight: "0" } });
    expect(zero.errors?.[0]?.extensions).toMatchObject({ code: "VALIDATION", field: "recencyWeight" });
    const ok = await as(admin, update, { patch: { monetaryWeight: "2" } });
    expect(ok.data.updateRfmSettings.result).toEqual({ mode: "thresholds", recencyBreaks: [30, 90, 180, 365], monetaryWeight: "2.000" });
    await as(admin, update, { patch: { monetaryWeight: "1" } });
  });

  test("recalculateRfm queues one run (settings:manage), the worker completes it, jobRuns shows it", async () => {
    const mutation = "mutation { recalculateRfm(input: {}) { result { rowId status reason requester { username } } } }";
    expect((await as(rep, mutation)).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const first = await as(admin, mutation);
    expect(first.data.recalculateRfm.result).toMatchObject({ status: "queued", reason: "manual", requester: { username: "rfm-a-admin" } });
    const again = await as(admin, mutation);
    expect(again.data.recalculateRfm.result.rowId).toBe(first.data.recalculateRfm.result.rowId);
    const queued = await jobs(db, "rfm:score");
    expect(queued.length).toBe(1);
    expect(queued[0]!.payload).toMatchObject({ organizationId: a.id, rfmRunId: first.data.recalculateRfm.result.rowId, reason: "manual" });

    await runJobs(db);
    const run = await as(
      admin,
      `query ($id: UUID!) { rfmRun(rowId: $id) { status customersScored levelsChanged jobRun { task outcome } rfmScores(first: 50) { totalCount } } }`,
      { id: first.data.recalculateRfm.result.rowId },
    );
    const customers = (await db.owner.query("select count(*)::int as n from crm.customers where organization_id = $1 and deleted_at is null", [a.id])).rows[0].n;
    // Every customer is scored; nothing changed since the last run (the weights are back where they
    // were), so the run writes no customer and logs no score (rowsAffected = customers written).
    expect(run.data.rfmRun).toMatchObject({ status: "completed", customersScored: customers, levelsChanged: 0, jobRun: { task: "rfm:score", outcome: "succeeded" } });
    expect(run.data.rfmRun.rfmScores.totalCount).toBe(0);
    const runs = await as(admin, `{ jobRuns(filter: { task: { equalTo: "rfm:score" } }, orderBy: STARTED_AT_DESC, first: 1) { nodes { outcome rowsAffected } } }`);
    expect(runs.data.jobRuns.nodes).toEqual([{ outcome: "succeeded", rowsAffected: "0" }]);
  });

  test("customers carry their scores, filterable; rfmDistribution counts them per R×F cell and per level", async () => {
    const top = await as(
      admin,
      `{ customers(filter: { rfmScore: { greaterThanOrEqualTo: "4.5" } }) { nodes { name rfmRecencyScore rfmFrequencyScore rfmMonetaryScore rfmScore rfmOrderCount rfmMonetaryValue rfmScoredAt level { name } } } }`,
    );
    expect(top.data.customers.nodes).toEqual([
      expect.objectContaining({ name: "Rich", rfmRecencyScore: 5, rfmFrequencyScore: 5, rfmMonetaryScore: 5, rfmScore: "5.00", rfmOrderCount: 12, rfmMonetaryValue: "1800.00", level: { name: "Platinum" } }),
    ]);
    const d = await as(
      admin,
      `{ rfmDistribution { scoredCustomers unscoredCustomers lastScoredAt cells { recencyScore frequencyScore customers } levels { name customers } } }`,
    );
    const dist = d.data.rfmDistribution;
    expect(dist.cells.length).toBe(25);
    const total = dist.cells.reduce((s: number, c: { customers: string }) => s + Number(c.customers), 0);
    expect(total).toBe(Number(dist.scoredCustomers));
    expect(dist.cells.find((c: any) => c.recencyScore === 5 && c.frequencyScore === 5).customers).toBe("1");
    expect(dist.levels.map((l: { name: string }) => l.name)).toEqual(["Bronze", "Silver", "Gold", "Platinum"]);
    expect(dist.levels.find((l: any) => l.name === "Platinum").customers).toBe("1");
  });
});
