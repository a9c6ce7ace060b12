// Races, over HTTP against the real server (its pool gives each request its own connection and
// transaction): a single-use promotion is used exactly once, and a balance never goes negative.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { CREATE_ORDER, customer, product } from "../helpers/commerce.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let token: string;
let manager: string;
let book: string;
const PARALLEL = 20;

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const gql = async (query: string, variables: Record<string, unknown>): Promise<Body> => (await server.gql(query, variables, { token })).body as Body;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "race");
  manager = await addMember(db, org, "race-manager", "Sales Manager");
  token = (await startSession(db, manager, org.id)).accessToken;
  book = await product(db, org.id, { sku: "BOOK", price: "40.00", tax: 10 });
  server = await startServer(db, { PG_POOL_MAX: String(PARALLEL) });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("single-use promotions under concurrency", () => {
  test(`${PARALLEL} parallel orders of one customer holding a single-use promotion: exactly one gets it`, async () => {
    const c = await customer(db, org.id, manager, "Eager buyer");
    const promo = (await db.owner.query(
      "insert into crm.promotions (organization_id, name, discount_type, discount_value, usage_limit) values ($1, 'One shot', 'percent', 25, 1) returning id",
      [org.id],
    )).rows[0].id;
    await db.owner.query("insert into crm.customer_promotions (organization_id, customer_id, promotion_id, source) values ($1, $2, $3, 'manual')", [org.id, c, promo]);
    const results = await Promise.all(
      Array.from({ length: PARALLEL }, (_, i) => gql(CREATE_ORDER, { c, items: [{ productId: book, quantity: "1" }], key: `same-customer-${i}` })),
    );
    expect(results.filter((r) => r.errors)).toEqual([]);
    const discounts = results.map((r) => r.data.createOrder.result.discountTotal);
    expect(discounts.filter((d) => d === "10.00")).toHaveLength(1);
    expect(discounts.filter((d) => d === "0.00")).toHaveLength(PARALLEL - 1);
    const used = await db.owner.query(
      "select (select times_used from crm.promotions where id = $1) as times_used, (select count(*)::int from crm.order_discounts where promotion_id = $1) as lines",
      [promo],
    );
    expect(used.rows[0]).toEqual({ times_used: 1, lines: 1 });
  });

  test(`${PARALLEL} customers racing for one single-use code: one order uses it, the others get CONFLICT and write nothing`, async () => {
    const promo = (await db.owner.query(
      "insert into crm.promotions (organization_id, name, code, discount_type, discount_value, usage_limit) values ($1, 'Door buster', 'DOORBUSTER', 'fixed_amount', 15, 1) returning id",
      [org.id],
    )).rows[0].id;
    const buyers = await Promise.all(Array.from({ length: PARALLEL }, (_, i) => customer(db, org.id, manager, `Racer ${i}`)));
    const results = await Promise.all(
      buyers.map((c, i) => gql(CREATE_ORDER, { c, items: [{ productId: book, quantity: "1" }], key: `code-race-${i}`, codes: ["DOORBUSTER"] })),
    );
    const won = results.filter((r) => !r.errors);
    const lost = results.filter((r) => r.errors);
    expect(won).toHaveLength(1);
    expect(won[0]!.data.createOrder.result.discountTotal).toBe("15.00");
    expect(lost.map((r) => [r.errors![0]!.extensions!.code, r.errors![0]!.extensions!.field])).toEqual(Array(PARALLEL - 1).fill(["CONFLICT", "promotionCodes"]));
    const written = await db.owner.query(
      "select count(*)::int as orders, (select times_used from crm.promotions where id = $2) as times_used from crm.orders where customer_id = any ($1)",
      [buyers, promo],
    );
    expect(written.rows[0]).toEqual({ orders: 1, times_used: 1 });
  });
});

describe("loyalty balances under concurrency", () => {
  test(`${PARALLEL} parallel redemptions never take the balance below zero`, async () => {
    const c = await customer(db, org.id, manager, "Point collector");
    await db.owner.query(
      `insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, balance_after, note) values ($1, $2, 100, 'adjust', 100, 'start')`,
      [org.id, c],
    );
    const REDEEM = `mutation ($c: UUID!, $k: String) { redeemPoints(input: { customerId: $c, points: 15, idempotencyKey: $k }) { result { balanceAfter } } }`;
    const results = await Promise.all(Array.from({ length: PARALLEL }, (_, i) => gql(REDEEM, { c, k: `redeem-${i}` })));
    const ok = results.filter((r) => !r.errors);
    expect(ok).toHaveLength(6); // 6 × 15 = 90 of 100
    expect(results.filter((r) => r.errors).map((r) => r.errors![0]!.extensions)).toEqual(Array(PARALLEL - 6).fill({ code: "VALIDATION", field: "points" }));
    expect(ok.map((r) => r.data.redeemPoints.result.balanceAfter).sort((a: number, b: number) => a - b)).toEqual([10, 25, 40, 55, 70, 85]);
    // The ledger is a chain: every balance is the previous one plus the change, never below zero.
    const { rows } = await db.owner.query(
      `select count(*) filter (where balance_after <> coalesce(previous, 0) + delta)::int as broken, min(balance_after)::int as lowest
         from (select balance_after, delta, lag(balance_after) over (order by id) as previous from crm.loyalty_ledger where customer_id = $1) x`,
      [c],
    );
    expect(rows[0]).toEqual({ broken: 0, lowest: 10 });
  });

  test("orders redeeming points in parallel share the same balance", async () => {
    const c = await customer(db, org.id, manager, "Parallel spender");
    await db.owner.query(
      `insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, balance_after, note) values ($1, $2, 1000, 'adjust', 1000, 'start')`,
      [org.id, c],
    );
    const results = await Promise.all(
      Array.from({ length: PARALLEL }, (_, i) => gql(CREATE_ORDER, { c, items: [{ productId: book, quantity: "1" }], key: `points-race-${i}`, points: 300 })),
    );
    expect(results.filter((r) => !r.errors)).toHaveLength(3);
    expect(results.filter((r) => r.errors).every((r) => r.errors![0]!.extensions!.field === "redeemPoints")).toBe(true);
    const balance = await db.owner.query("select balance_after from crm.loyalty_ledger where customer_id = $1 order by id desc limit 1", [c]);
    // 1000 − 3 × 300 = 100, plus what the three orders earned (floor(37 × 1) each).
    expect(balance.rows[0].balance_after).toBe(100 + 3 * 37);
  });
});
