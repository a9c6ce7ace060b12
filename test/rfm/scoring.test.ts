// rfm:score against a hand-computed reference organization, in both modes: R, F, M, the weighted
// score, the raw values and the level of every customer equal what docs/rfm.md's rules give by hand
// (ties, a customer without orders, one with only cancelled orders, a partial refund, a partly paid
// order, an order outside the lookback window, a hand-set level). Also: the run's log, retention,
// the hand-set rule, and the level change firing the customer_level promotion in the job's
// transaction (a failure there rolls both back).
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { pino } from "pino";
import { asUser, createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { customer, level } from "../helpers/commerce.ts";
import { runTenantJob } from "../../worker/tenant/runner.ts";
import { scoreRfm } from "../../worker/tasks/rfm-score.ts";

let db: TestDb;
let org: TestOrg;
const logger = pino({ level: "silent" });
const AS_OF = "2026-06-30T12:00:00Z";
const ids: Record<string, string> = {};
const levels: Record<string, string> = {};
let orderNo = 0;

/** An order as an import would load it (as the owner): `daysAgo` days before AS_OF at 10:00 UTC. */
async function order(who: string, daysAgo: number, amount: number, status: string, paid = status === "paid" ? amount : 0, refunded = 0) {
  await db.owner.query(
    `insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount,
                             refunded_amount, ordered_at)
     values ($1, $2, $3, $4, 'USD', $5, $5, $6, $7, $8::timestamptz - make_interval(days => $9::int, hours => 2))`,
    [org.id, `REF-${++orderNo}`, ids[who], status, amount, paid, refunded, AS_OF, daysAgo],
  );
}

const run = (payload: Record<string, unknown> = {}) =>
  runTenantJob({ ownerPool: db.owner, authPool: db.auth }, { organizationId: org.id, task: "rfm:score", payload: { asOf: AS_OF, ...payload }, logger }, scoreRfm);

const asAdmin = <T>(fn: Parameters<typeof asUser<T>>[2]) => asUser(db, { sub: org.adminId, org: org.id }, fn, { commit: true });

async function settings(patch: string) {
  await asAdmin((c) => c.query(`select crm.update_rfm_settings(${patch})`));
}

/** The customers' RFM columns as stored. */
async function customerRows() {
  return (
    await db.owner.query(
      `select id, rfm_recency_score, rfm_frequency_score, rfm_monetary_score, rfm_score, rfm_recency_days, rfm_order_count,
              rfm_monetary_value, rfm_scored_at, level_id, updated_at from crm.customers where organization_id = $1 order by id`,
      [org.id],
    )
  ).rows;
}

/** Every customer's scores and level, by name. */
async function scores() {
  const { rows } = await db.owner.query(
    `select c.name, c.rfm_recency_score as r, c.rfm_frequency_score as f, c.rfm_monetary_score as m, c.rfm_score::text as score,
            c.rfm_recency_days as days, c.rfm_order_count as orders, c.rfm_monetary_value::text as monetary, l.name::text as level
       from crm.customers c left join crm.customer_levels l on l.id = c.level_id
      where c.organization_id = $1 order by c.name`,
    [org.id],
  );
  return Object.fromEntries(rows.map(({ name, ...rest }) => [name, rest]));
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "rfm-ref");
  for (const l of ["Bronze", "Silver", "Gold", "Platinum"]) levels[l] = await level(db, org.id, l);
  for (const name of ["Ada", "Bo", "Cy", "Di", "Ed", "Fay", "Gus", "Hal", "Ivy"]) ids[name] = await customer(db, org.id, org.adminId, name);
  // Ada: 12 paid orders of 100, the last 5 days ago.
  for (let i = 0; i < 12; i++) await order("Ada", 5 + i * 20, 100, "paid");
  // Bo and Cy: the same three paid orders of 200, the last 45 days ago (a tie in every column).
  for (const who of ["Bo", "Cy"]) for (const d of [45, 120, 300]) await order(who, d, 200, "paid");
  // Di: no orders. Ed: only cancelled orders (recent ones).
  await order("Ed", 2, 900, "cancelled");
  await order("Ed", 3, 900, "cancelled");
  // Fay: one paid order of 400, 150 refunded (net 250), 10 days ago.
  await order("Fay", 10, 400, "paid", 400, 150);
  // Gus: one order of 50, 200 days ago; his level (Platinum) was set by hand.
  await order("Gus", 200, 50, "paid");
  // Hal: a fully refunded order (never counts), a pending one (not counted by default), and a partly
  // paid order of 300 with 120 paid, 100 days ago.
  await order("Hal", 20, 500, "refunded", 500, 500);
  await order("Hal", 1, 80, "pending");
  await order("Hal", 100, 300, "partially_paid", 120);
  // Ivy: a big order 800 days ago (outside the 730-day window) and one of 100, 400 days ago.
  await order("Ivy", 800, 5000, "paid");
  await order("Ivy", 400, 100, "paid");
  await asAdmin((c) => c.query("select crm.set_customer_level($1, $2, 'Key account')", [ids.Gus, levels.Platinum]));
});
afterAll(async () => {
  await db?.drop();
});

describe("reference organization", () => {
  test("the defaults: thresholds 30/90/180/365 days, 2/3/5/10 orders, 100/250/500/1000, equal weights, 730 days, paid and partly paid", async () => {
    const { rows } = await db.owner.query("select * from crm.rfm_settings where organization_id = $1", [org.id]);
    expect(rows[0]).toMatchObject({
      mode: "thresholds", recency_breaks: [30, 90, 180, 365], frequency_breaks: [2, 3, 5, 10],
      monetary_breaks: [100, 250, 500, 1000], recency_weight: "1.000", frequency_weight: "1.000",
      monetary_weight: "1.000", lookback_days: 730, counted_statuses: ["paid", "partially_paid"], scores_retention_days: 180,
    });
  });

  test("thresholds, weights R 2 / F 1 / M 1: exactly the hand-computed scores and levels", async () => {
    await settings("mode => 'thresholds', recency_weight => 2, frequency_weight => 1, monetary_weight => 1");
    const r = await run();
    expect(r).toMatchObject({ outcome: "succeeded", rowsAffected: 9 });
    expect(await scores()).toEqual({
      // R: days ≤ 30 → 5, ≤ 90 → 4, ≤ 180 → 3, ≤ 365 → 2, else 1. F: ≥ 2/3/5/10 orders → 2/3/4/5. M: ≥ 100/250/500/1000 → 2/3/4/5.
      // score = (2R + F + M) / 4, rounded to 2 decimals; level = highest minimum reached (0, 2.5, 3.5, 4.5).
      Ada: { r: 5, f: 5, m: 5, score: "5.00", days: 5, orders: 12, monetary: "1200.00", level: "Platinum" },
      Bo: { r: 4, f: 3, m: 4, score: "3.75", days: 45, orders: 3, monetary: "600.00", level: "Gold" },
      Cy: { r: 4, f: 3, m: 4, score: "3.75", days: 45, orders: 3, monetary: "600.00", level: "Gold" },
      // No orders, or only cancelled ones: 1/1/1, score 1.00, recency unknown (null), 0 orders, 0 spent.
      Di: { r: 1, f: 1, m: 1, score: "1.00", days: null, orders: 0, monetary: "0.00", level: "Bronze" },
      Ed: { r: 1, f: 1, m: 1, score: "1.00", days: null, orders: 0, monetary: "0.00", level: "Bronze" },
      // 400 paid − 150 refunded = 250 → M 3; (10 + 1 + 3) / 4 = 3.50 reaches Gold exactly.
      Fay: { r: 5, f: 1, m: 3, score: "3.50", days: 10, orders: 1, monetary: "250.00", level: "Gold" },
      // (4 + 1 + 1) / 4 = 1.50 would be Bronze; the hand-set Platinum stays.
      Gus: { r: 2, f: 1, m: 1, score: "1.50", days: 200, orders: 1, monetary: "50.00", level: "Platinum" },
      // Only the partly paid order counts, for what was paid (120).
      Hal: { r: 3, f: 1, m: 2, score: "2.25", days: 100, orders: 1, monetary: "120.00", level: "Bronze" },
      // The order 800 days ago is outside the window: one order of 100, 400 days ago.
      Ivy: { r: 1, f: 1, m: 2, score: "1.25", days: 400, orders: 1, monetary: "100.00", level: "Bronze" },
    });
  });

  test("quintiles, equal weights: ntile(5) among the 7 buying customers, ties sharing the higher tile", async () => {
    await settings("mode => 'quintiles', recency_weight => 1, frequency_weight => 1, monetary_weight => 1");
    await run();
    // Recency, oldest first: Ivy 400, Gus 200, Hal 100, Bo 45, Cy 45, Fay 10, Ada 5 → tiles 1 1 2 2 3 4 5;
    //   Bo and Cy tie (tiles 2 and 3) and both get 3.
    // Frequency: Fay, Gus, Hal, Ivy 1 order (tiles 1 1 2 2 → all 2), Bo, Cy 3 (tiles 3 4 → 4), Ada 12 (5).
    // Monetary: Gus 50 (1), Ivy 100 (1), Hal 120 (2), Fay 250 (2), Bo, Cy 600 (tiles 3 4 → 4), Ada 1200 (5).
    // Di and Ed have no counted order: 1/1/1. score = (R + F + M) / 3.
    expect(await scores()).toEqual({
      Ada: { r: 5, f: 5, m: 5, score: "5.00", days: 5, orders: 12, monetary: "1200.00", level: "Platinum" },
      Bo: { r: 3, f: 4, m: 4, score: "3.67", days: 45, orders: 3, monetary: "600.00", level: "Gold" },
      Cy: { r: 3, f: 4, m: 4, score: "3.67", days: 45, orders: 3, monetary: "600.00", level: "Gold" },
      Di: { r: 1, f: 1, m: 1, score: "1.00", days: null, orders: 0, monetary: "0.00", level: "Bronze" },
      Ed: { r: 1, f: 1, m: 1, score: "1.00", days: null, orders: 0, monetary: "0.00", level: "Bronze" },
      Fay: { r: 4, f: 2, m: 2, score: "2.67", days: 10, orders: 1, monetary: "250.00", level: "Silver" },
      Gus: { r: 1, f: 2, m: 1, score: "1.33", days: 200, orders: 1, monetary: "50.00", level: "Platinum" },
      Hal: { r: 2, f: 2, m: 2, score: "2.00", days: 100, orders: 1, monetary: "120.00", level: "Bronze" },
      Ivy: { r: 1, f: 2, m: 1, score: "1.33", days: 400, orders: 1, monetary: "100.00", level: "Bronze" },
    });
  });

  test("each run is logged: the run and every customer's R, F, M, score and level before and after", async () => {
    const { rows: runs } = await db.owner.query(
      "select reason, status, mode, customers_scored, levels_changed, job_run_id from crm.rfm_runs where organization_id = $1 order by requested_at",
      [org.id],
    );
    expect(runs.map(({ job_run_id, ...r }) => ({ ...r, jobRun: !!job_run_id }))).toEqual([
      // First run: Ada, Bo, Cy → Platinum/Gold/Gold, Fay → Gold (the others stay Bronze; Gus is hand-set).
      { reason: "scheduled", status: "completed", mode: "thresholds", customers_scored: 9, levels_changed: 4, jobRun: true },
      // Second: Fay Gold → Silver.
      { reason: "scheduled", status: "completed", mode: "quintiles", customers_scored: 9, levels_changed: 1, jobRun: true },
    ]);
    const { rows } = await db.owner.query(
      `select s.recency_score as r, s.frequency_score as f, s.monetary_score as m, s.score::text, b.name::text as before, a.name::text as after
         from crm.rfm_scores s join crm.rfm_runs x on x.id = s.run_id
         left join crm.customer_levels b on b.id = s.level_before_id left join crm.customer_levels a on a.id = s.level_after_id
        where s.customer_id = $1 order by x.requested_at`,
      [ids.Fay],
    );
    expect(rows).toEqual([
      { r: 5, f: 1, m: 3, score: "3.50", before: "Bronze", after: "Gold" },
      { r: 4, f: 2, m: 2, score: "2.67", before: "Gold", after: "Silver" },
    ]);
    const changes = await db.owner.query(
      "select source, reason from crm.customer_level_changes where customer_id = $1 order by changed_at, id",
      [ids.Fay],
    );
    expect(changes.rows).toEqual([
      { source: "rfm", reason: "RFM score (thresholds)" },
      { source: "rfm", reason: "RFM score (quintiles)" },
    ]);
  });

  test("running again with nothing changed scores everyone and writes nothing", async () => {
    const before = await customerRows();
    const r = await run();
    expect(r.rowsAffected).toBe(0);
    const { rows } = await db.owner.query(
      `select customers_scored, levels_changed, (select count(*)::int from crm.rfm_scores s where s.run_id = r.id) as logged
         from crm.rfm_runs r where organization_id = $1 order by requested_at desc limit 1`,
      [org.id],
    );
    expect(rows[0]).toEqual({ customers_scored: 9, levels_changed: 0, logged: 0 });
    expect(await customerRows()).toEqual(before);
  });

  test("a day later: no value changed, so no row is written; recency and rfmScoredAt stay as of the last change", async () => {
    const before = await customerRows();
    const r = await run({ asOf: new Date(Date.parse(AS_OF) + 86400_000).toISOString() });
    // Every buying customer's recency grew by a day, but the quintile order, the counts and the sums
    // did not change: nothing to write.
    expect(r.rowsAffected).toBe(0);
    expect(await customerRows()).toEqual(before);
    // The stored recency is counted to rfmScoredAt: its local date minus rfmRecencyDays is the local
    // date of the last counted order (UTC here), for every customer with one.
    const { rows } = await db.owner.query(
      `select c.name, (c.rfm_scored_at at time zone 'UTC')::date - c.rfm_recency_days as last_order,
              (select max(o.ordered_at at time zone 'UTC')::date from crm.orders o
                where o.customer_id = c.id and o.status in ('paid', 'partially_paid') and o.ordered_at > $2::timestamptz - interval '730 days') as expected
         from crm.customers c where c.organization_id = $1 and c.rfm_recency_days is not null order by c.name`,
      [org.id, AS_OF],
    );
    expect(rows.length).toBe(7);
    for (const row of rows) expect(row.last_order).toEqual(row.expected);
  });

  test("hand-set rule: the level stays until the flag is cleared; then the next run moves it", async () => {
    expect((await scores()).Gus.level).toBe("Platinum");
    // Clearing the flag (setCustomerLevel with setByHand false) hands the customer back to scoring.
    await asAdmin((c) => c.query("select crm.set_customer_level($1, $2, 'Back to RFM', false)", [ids.Gus, levels.Platinum]));
    await run();
    const gus = (await db.owner.query("select level_set_by_hand, rfm_score::text from crm.customers where id = $1", [ids.Gus])).rows[0];
    expect(gus).toEqual({ level_set_by_hand: false, rfm_score: "1.33" });
    expect((await scores()).Gus.level).toBe("Bronze");
  });

  test("retention: entries older than scoresRetentionDays are deleted unless still in force; runs left empty go", async () => {
    await settings("scores_retention_days => 30");
    const before = (await db.owner.query("select count(*)::int as n from crm.rfm_runs where organization_id = $1", [org.id])).rows[0].n;
    expect(before).toBeGreaterThanOrEqual(5);
    // Score "60 days later": every earlier run is past retention. Nothing changes in that run (the
    // quintile order stays, no order leaves the window), so it logs nothing.
    const later = new Date(Date.parse(AS_OF) + 60 * 86400_000).toISOString();
    expect((await run({ asOf: later })).rowsAffected).toBe(0);
    // Each customer keeps exactly one entry, the one in force, and it equals the customer's values.
    const { rows: entries } = await db.owner.query(
      `select c.name, s.recency_score = c.rfm_recency_score and s.frequency_score = c.rfm_frequency_score
                      and s.monetary_score = c.rfm_monetary_score and s.score = c.rfm_score and s.order_count = c.rfm_order_count
                      and s.monetary_value = c.rfm_monetary_value and s.recency_days is not distinct from c.rfm_recency_days
                      and s.level_after_id is not distinct from c.level_id and s.scored_at = c.rfm_scored_at as in_force
         from crm.rfm_scores s join crm.customers c on c.id = s.customer_id where s.organization_id = $1 order by c.name`,
      [org.id],
    );
    expect(entries).toEqual(["Ada", "Bo", "Cy", "Di", "Ed", "Fay", "Gus", "Hal", "Ivy"].map((name) => ({ name, in_force: true })));
    // Runs left: those holding an entry still in force, and the new run (inside the retention).
    const { rows: runs } = await db.owner.query(
      `select r.as_of = $2::timestamptz as is_new, exists (select 1 from crm.rfm_scores s where s.run_id = r.id) as holds
         from crm.rfm_runs r where r.organization_id = $1`,
      [org.id, later],
    );
    expect(runs.filter((r) => r.is_new)).toEqual([{ is_new: true, holds: false }]);
    expect(runs.filter((r) => !r.is_new).every((r) => r.holds)).toBe(true);
    expect(runs.length).toBeLessThan(before + 1);
    await settings("scores_retention_days => 180");
    await run();
  });
});

describe("settings are validated", () => {
  const refused = async (patch: string) =>
    sqlError(asUser(db, { sub: org.adminId, org: org.id }, (c) => c.query(`select crm.update_rfm_settings(${patch})`)));

  test("break-points strictly increasing, four of them; weights ≥ 0 and not all 0; known statuses; known mode", async () => {
    expect(await refused("recency_breaks => '{30,30,180,365}'")).toMatchObject({ code: "CRVAL", column: "recency_breaks" });
    expect(await refused("frequency_breaks => '{2,3,5}'")).toMatchObject({ code: "CRVAL", column: "frequency_breaks" });
    expect(await refused("monetary_breaks => '{100,90,500,1000}'")).toMatchObject({ code: "CRVAL", column: "monetary_breaks" });
    expect(await refused("monetary_weight => -1")).toMatchObject({ code: "CRVAL", column: "monetary_weight" });
    expect(await refused("recency_weight => 0, frequency_weight => 0, monetary_weight => 0")).toMatchObject({ code: "CRVAL", column: "recency_weight" });
    expect(await refused("counted_statuses => '{paid,cancelled}'")).toMatchObject({ code: "CRVAL", column: "counted_statuses" });
    expect(await refused("mode => 'deciles'")).toMatchObject({ code: "CRVAL", column: "mode" });
    expect(await refused("lookback_days => 0")).toMatchObject({ code: "CRVAL", column: "lookback_days" });
  });
});

describe("the level change and its promotion share the job's transaction", () => {
  let promotion: string;

  beforeAll(async () => {
    promotion = (
      await db.owner.query(
        `insert into crm.promotions (organization_id, name, discount_type, discount_value, condition)
         values ($1, 'Welcome to Gold', 'percent', 10, jsonb_build_object('type', 'customer_level', 'level_id', $2::text)) returning id`,
        [org.id, levels.Gold],
      )
    ).rows[0].id;
    // Back to a state where Bo and Cy will move to Gold again: put them at Bronze by hand, then clear the flag.
    for (const who of ["Bo", "Cy"]) {
      await asAdmin((c) => c.query("select crm.set_customer_level($1, $2, 'Reset', false)", [ids[who], levels.Bronze]));
    }
  });

  test("a failure in the promotion rolls back the level change and the scores; the run is recorded as failed", async () => {
    const before = await scores();
    const runsBefore = (await db.owner.query("select count(*)::int as n from crm.rfm_scores where organization_id = $1", [org.id])).rows[0].n;
    await db.owner.query(`
      create or replace function public.test_refuse_promotion() returns trigger language plpgsql as $$
      begin raise exception 'promotion service down' using errcode = 'P0001'; end $$;
      create trigger _999_test_refuse after insert on crm.customer_promotions for each row execute function public.test_refuse_promotion();`);
    try {
      await expect(run()).rejects.toThrow("promotion service down");
    } finally {
      await db.owner.query("drop trigger _999_test_refuse on crm.customer_promotions; drop function public.test_refuse_promotion()");
    }
    expect(await scores()).toEqual(before);
    expect((await db.owner.query("select count(*)::int as n from crm.rfm_scores where organization_id = $1", [org.id])).rows[0].n).toBe(runsBefore);
    expect((await db.owner.query("select count(*)::int as n from crm.customer_promotions where promotion_id = $1", [promotion])).rows[0].n).toBe(0);
    const failed = await db.owner.query(
      "select outcome, error from crm.job_runs where organization_id = $1 and task = 'rfm:score' order by started_at desc limit 1",
      [org.id],
    );
    expect(failed.rows[0]).toEqual({ outcome: "failed", error: "promotion service down" });
  });

  test("the next run moves Bo and Cy to Gold and gives them the promotion, in the same transaction", async () => {
    const r = await run();
    expect(r.outcome).toBe("succeeded");
    const { rows } = await db.owner.query(
      `select c.name, l.name::text as level, c.xmin::text = p.xmin::text as same_transaction, p.source, c.level_changed_at = p.assigned_at as same_instant
         from crm.customers c join crm.customer_levels l on l.id = c.level_id
         join crm.customer_promotions p on p.customer_id = c.id and p.promotion_id = $2
        where c.organization_id = $1 order by c.name`,
      [org.id, promotion],
    );
    expect(rows).toEqual([
      { name: "Bo", level: "Gold", same_transaction: true, source: "customer_level", same_instant: true },
      { name: "Cy", level: "Gold", same_transaction: true, source: "customer_level", same_instant: true },
    ]);
  });
});
