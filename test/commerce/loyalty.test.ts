// Loyalty points: earning (rate × level multiplier), the organization's settings, standalone
// redemption, the append-only ledger, and the nightly loyalty:expire job.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { jobs, runJobs } from "../helpers/worker.ts";
import { CREATE_ORDER, customer, level, product } from "../helpers/commerce.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let manager: string;
const tokens: Record<string, string> = {};
let book: string;
let n = 0;

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const as = async (who: string, query: string, variables: Record<string, unknown> = {}): Promise<Body> =>
  (await server.gql(query, variables, { token: tokens[who] })).body as Body;
const code = (b: Body) => b.errors?.[0]?.extensions?.code;
const order = (c: string, extra: Record<string, unknown> = {}) =>
  as("manager", CREATE_ORDER, { c, items: [{ productId: book, quantity: "1" }], key: `loyalty-${++n}`, ...extra });
const ledger = async (c: string) =>
  (await db.owner.query("select delta, reason, balance_after from crm.loyalty_ledger where customer_id = $1 order by id", [c])).rows;

/** A ledger entry written as the owner, with its balance chained to the customer's last one. */
async function entry(c: string, delta: number, reason: string, expiresInDays: number | null = null) {
  await db.owner.query(
    `insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, expires_at, balance_after)
     values ($1, $2, $3, $4, case when $5::int is not null then now() + make_interval(days => $5::int) end,
             coalesce((select balance_after from crm.loyalty_ledger where customer_id = $2 order by id desc limit 1), 0) + $3)`,
    [org.id, c, delta, reason, expiresInDays],
  );
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "points");
  manager = await addMember(db, org, "points-manager", "Sales Manager");
  tokens.admin = (await startSession(db, org.adminId, org.id)).accessToken;
  tokens.manager = (await startSession(db, manager, org.id)).accessToken;
  book = await product(db, org.id, { sku: "BOOK", price: "40.00", tax: 10 });
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("earning and redeeming", () => {
  test("points per currency unit spent (net of discounts and tax) times the level's multiplier, rounded down", async () => {
    const c = await customer(db, org.id, manager, "Gold member");
    await db.owner.query("update crm.customers set level_id = $1 where id = $2", [await level(db, org.id, "Gold"), c]);
    const first = await order(c);
    expect(first.data.createOrder.result.pointsEarned).toBe(60); // 40.00 × 1 × 1.5
    const s = await as("admin", `{ loyaltySettings { nodes { rowId pointsPerUnit pointValue pointsExpireDays isEnabled } } }`);
    const settings = s.data.loyaltySettings.nodes[0];
    expect(settings).toMatchObject({ pointsPerUnit: "1.0000", pointValue: "0.0100", pointsExpireDays: 365, isEnabled: true });
    const UPDATE = `mutation ($id: UUID!, $patch: LoyaltySettingPatch!) { updateLoyaltySetting(input: { rowId: $id, patch: $patch }) { loyaltySetting { pointsPerUnit } } }`;
    const byManager = await as("manager", UPDATE, { id: settings.rowId, patch: { pointsPerUnit: "2.5" } });
    expect(byManager.data?.updateLoyaltySetting?.loyaltySetting ?? null).toBeNull();
    expect((await as("admin", UPDATE, { id: settings.rowId, patch: { pointsPerUnit: "2.5" } })).data.updateLoyaltySetting.loyaltySetting.pointsPerUnit).toBe("2.5000");
    expect((await order(c)).data.createOrder.result.pointsEarned).toBe(150); // 40 × 2.5 × 1.5
    await as("admin", UPDATE, { id: settings.rowId, patch: { pointsPerUnit: "1", isEnabled: false } });
    expect((await order(c)).data.createOrder.result.pointsEarned).toBe(0);
    expect(code(await order(c, { points: 10 }))).toBe("INVALID_STATE");
    expect(code(await as("manager", `mutation ($c: UUID!) { redeemPoints(input: { customerId: $c, points: 10 }) { result { rowId } } }`, { c }))).toBe("INVALID_STATE");
    await as("admin", UPDATE, { id: settings.rowId, patch: { isEnabled: true } });
    expect(await ledger(c)).toEqual([
      { delta: 60, reason: "order", balance_after: 60 },
      { delta: 150, reason: "order", balance_after: 210 },
    ]);
  });

  test("redeemPoints by itself: never more than the balance, once per idempotency key, for visible customers only", async () => {
    const c = await customer(db, org.id, manager, "Redeemer");
    await entry(c, 100, "adjust", 30);
    const REDEEM = `mutation ($c: UUID!, $p: Int!, $k: String) { redeemPoints(input: { customerId: $c, points: $p, note: "Mug", idempotencyKey: $k }) {
      result { delta reason balanceAfter note } } }`;
    const ok = await as("manager", REDEEM, { c, p: 40, k: "mug-1" });
    expect(ok.data.redeemPoints.result).toEqual({ delta: -40, reason: "redeem", balanceAfter: 60, note: "Mug" });
    expect((await as("manager", REDEEM, { c, p: 40, k: "mug-1" })).data.redeemPoints.result.balanceAfter).toBe(60);
    expect(code(await as("manager", REDEEM, { c, p: 50, k: "mug-1" }))).toBe("CONFLICT");
    const tooMany = await as("manager", REDEEM, { c, p: 61 });
    expect(tooMany.errors?.[0]?.extensions).toEqual({ code: "VALIDATION", field: "points" });
    expect(tooMany.errors?.[0]?.message).toBe("The customer has only 60 points.");
    expect(code(await as("manager", REDEEM, { c, p: 0 }))).toBe("VALIDATION");
    const rep = await addMember(db, org, "points-rep", "Sales Representative");
    tokens.rep = (await startSession(db, rep, org.id)).accessToken;
    expect(code(await as("rep", REDEEM, { c, p: 1 }))).toBe("NOT_FOUND");
    expect(await ledger(c)).toEqual([
      { delta: 100, reason: "adjust", balance_after: 100 },
      { delta: -40, reason: "redeem", balance_after: 60 },
    ]);
  });

  test("the ledger is append-only, for the owner too", async () => {
    const { rows } = await db.owner.query("select id from crm.loyalty_ledger where organization_id = $1 limit 1", [org.id]);
    expect((await sqlError(db.owner.query("update crm.loyalty_ledger set delta = 1000 where id = $1", [rows[0].id]))).code).toBe("42501");
    expect((await sqlError(db.owner.query("delete from crm.loyalty_ledger where id = $1", [rows[0].id]))).code).toBe("42501");
    expect((await sqlError(db.owner.query("insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, balance_after) select organization_id, customer_id, -1000, 'adjust', -900 from crm.loyalty_ledger where id = $1", [rows[0].id]))).code).toBe("23514");
  });
});

describe("loyalty:expire", () => {
  test("points past their expiry date expire; debits use the soonest-expiring points first; nothing expires twice", async () => {
    const spent = await customer(db, org.id, manager, "Spent before expiry");
    await entry(spent, 100, "order", -10);
    await entry(spent, 100, "order", 100);
    await entry(spent, -150, "redeem");
    const partly = await customer(db, org.id, manager, "Partly spent");
    await entry(partly, 100, "order", -10);
    await entry(partly, 50, "order", 100);
    await entry(partly, -30, "redeem");
    const idle = await customer(db, org.id, manager, "Idle");
    await entry(idle, 40, "order", -1);
    const never = await customer(db, org.id, manager, "Never expires");
    await entry(never, 25, "adjust", null);

    await db.owner.query("select crm_private.enqueue_tenant_job('loyalty:expire', $1)", [org.id]);
    await runJobs(db);
    expect(await jobs(db, "loyalty:expire")).toEqual([]);
    // A tenant job: recorded in the organization's job runs, its ledger entries written by the system principal.
    const run = await db.owner.query("select outcome, rows_affected from crm.job_runs where organization_id = $1 and task = 'loyalty:expire'", [org.id]);
    expect(run.rows).toEqual([{ outcome: "succeeded", rows_affected: "2" }]);
    const by = await db.owner.query("select distinct created_by from crm.loyalty_ledger where organization_id = $1 and reason = 'expire'", [org.id]);
    expect(by.rows).toEqual([{ created_by: (await db.owner.query("select crm.system_principal_id($1) as id", [org.id])).rows[0].id }]);
    const last = async (c: string) => (await ledger(c)).at(-1);
    expect(await last(spent)).toEqual({ delta: -150, reason: "redeem", balance_after: 50 });
    expect(await last(partly)).toEqual({ delta: -70, reason: "expire", balance_after: 50 });
    expect(await last(idle)).toEqual({ delta: -40, reason: "expire", balance_after: 0 });
    expect(await last(never)).toEqual({ delta: 25, reason: "adjust", balance_after: 25 });
    // Again: nothing more is due.
    expect((await db.owner.query("select crm_private.expire_loyalty_points($1) as n", [org.id])).rows[0].n).toBe(0);
    // In 200 days the rest of the dated points are gone too.
    expect((await db.owner.query("select crm_private.expire_loyalty_points($1, now() + interval '200 days') as n", [org.id])).rows[0].n).toBeGreaterThanOrEqual(3);
    expect([await last(spent), await last(partly), await last(never)]).toEqual([
      { delta: -50, reason: "expire", balance_after: 0 },
      { delta: -50, reason: "expire", balance_after: 0 },
      { delta: 25, reason: "adjust", balance_after: 25 },
    ]);
  });

  test("the run waits for loyalty writes in flight and sees their balances", async () => {
    const c = await customer(db, org.id, manager, "Mid-flight");
    await entry(c, 80, "order", -1);
    await entry(c, 20, "order", 30);
    const writer = await db.owner.connect();
    const runner = await db.owner.connect();
    try {
      await writer.query("begin");
      await writer.query("select set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)", [manager, org.id]);
      await writer.query("select crm.redeem_points($1, 10)", [c]);
      const pid = (await runner.query("select pg_backend_pid() as pid")).rows[0].pid;
      const run = runner.query("select crm_private.expire_loyalty_points($1) as n", [org.id]);
      // The run is blocked on the organization's loyalty lock until the writer commits.
      for (let i = 0; i < 100; i++) {
        const w = await db.owner.query("select wait_event_type from pg_stat_activity where pid = $1", [pid]);
        if (w.rows[0]?.wait_event_type === "Lock") break;
        await new Promise((r) => setTimeout(r, 20));
      }
      expect((await db.owner.query("select wait_event_type from pg_stat_activity where pid = $1", [pid])).rows[0].wait_event_type).toBe("Lock");
      await writer.query("commit");
      await run;
    } finally {
      writer.release();
      runner.release();
    }
    expect(await ledger(c)).toEqual([
      { delta: 80, reason: "order", balance_after: 80 },
      { delta: 20, reason: "order", balance_after: 100 },
      { delta: -10, reason: "redeem", balance_after: 90 },
      { delta: -70, reason: "expire", balance_after: 20 },
    ]);
  });
});
