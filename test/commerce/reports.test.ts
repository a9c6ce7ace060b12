// salesReport and customerAnalytics against hand-computed figures: per currency, per period in the
// organization's time zone, cancelled orders left out, refunds netted, under row-level security.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { level } from "../helpers/commerce.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
const tokens: Record<string, string> = {};
const c = {} as Record<"a" | "b" | "c", string>;
let orderNo = 0;

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const as = async (who: string, query: string, variables: Record<string, unknown> = {}): Promise<Body> =>
  (await server.gql(query, variables, { token: tokens[who] })).body as Body;

/** An order as an import would write it (createOrder always places orders now). */
async function placed(customerId: string, at: string, currency: string, amount: string, status: string, refunded = "0") {
  const paid = ["paid", "refunded"].includes(status) ? amount : status === "partially_paid" ? "1" : "0";
  await db.owner.query(
    `insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount, refunded_amount, ordered_at)
     values ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)`,
    [org.id, `IMP-${++orderNo}`, customerId, status, currency, amount, paid, refunded, at],
  );
}

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "reports");
  await db.owner.query(`update crm.organizations set settings = settings || '{"timezone": "America/New_York"}' where id = $1`, [org.id]);
  const manager = await addMember(db, org, "reports-manager", "Sales Manager");
  const rep = await addMember(db, org, "reports-rep", "Sales Representative");
  tokens.manager = (await startSession(db, manager, org.id)).accessToken;
  tokens.rep = (await startSession(db, rep, org.id)).accessToken;
  const mk = async (name: string, created: string) =>
    (await db.owner.query("insert into crm.customers (organization_id, name, owner_id, created_at) values ($1, $2, $3, $4) returning id", [org.id, name, manager, created])).rows[0].id;
  c.a = await mk("Alpha", "2025-01-02T15:00:00Z");
  c.b = await mk("Beta", "2025-01-10T15:00:00Z");
  c.c = await mk("Gamma", "2025-03-01T15:00:00Z");
  await db.owner.query("update crm.customers set level_id = $1 where id = $2", [await level(db, org.id, "Gold"), c.a]);
  await placed(c.a, "2025-01-05T12:00:00Z", "USD", "100.00", "paid");
  await placed(c.a, "2025-01-20T12:00:00Z", "USD", "50.00", "paid", "20.00");
  // 03:00 UTC on 1 February is still 31 January in New York.
  await placed(c.a, "2025-02-01T03:00:00Z", "USD", "5.00", "paid");
  await placed(c.b, "2025-01-25T12:00:00Z", "USD", "30.00", "cancelled");
  await placed(c.b, "2025-02-10T12:00:00Z", "EUR", "80.00", "pending");
  await placed(c.c, "2025-03-03T12:00:00Z", "USD", "10.00", "pending");
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const SALES = `query ($f: Date!, $t: Date!, $i: String) { salesReport(fromDate: $f, toDate: $t, interval: $i) {
  periodStart currency orders revenue refunds netRevenue averageOrderValue } }`;

describe("salesReport", () => {
  test("per month and currency: cancelled orders left out, refunds netted, money never added across currencies", async () => {
    const res = await as("manager", SALES, { f: "2025-01-01", t: "2025-03-31", i: "month" });
    expect(res.errors).toBeUndefined();
    const row = (periodStart: string, currency: string, orders: number, revenue: string, refunds: string, net: string, aov: string) =>
      ({ periodStart, currency, orders, revenue, refunds, netRevenue: net, averageOrderValue: aov });
    expect(res.data.salesReport).toEqual([
      row("2025-01-01", "EUR", 0, "0.00", "0.00", "0.00", "0.00"),
      row("2025-01-01", "USD", 3, "155.00", "20.00", "135.00", "51.67"),
      row("2025-02-01", "EUR", 1, "80.00", "0.00", "80.00", "80.00"),
      row("2025-02-01", "USD", 0, "0.00", "0.00", "0.00", "0.00"),
      row("2025-03-01", "EUR", 0, "0.00", "0.00", "0.00", "0.00"),
      row("2025-03-01", "USD", 1, "10.00", "0.00", "10.00", "10.00"),
    ]);
  });

  test("per week (from Monday) and per day", async () => {
    const weeks = await as("manager", SALES, { f: "2025-01-01", t: "2025-01-12", i: "week" });
    expect(weeks.data.salesReport.map((r: { periodStart: string; currency: string; orders: number }) => [r.periodStart, r.currency, r.orders])).toEqual([
      ["2024-12-30", "USD", 1],
      ["2025-01-06", "USD", 0],
    ]);
    const days = await as("manager", SALES, { f: "2025-01-31", t: "2025-02-01", i: "day" });
    expect(days.data.salesReport.map((r: { periodStart: string; orders: number }) => [r.periodStart, r.orders])).toEqual([
      ["2025-01-31", 1],
      ["2025-02-01", 0],
    ]);
  });

  test("reports:read_all is needed; bad input is VALIDATION with the field", async () => {
    expect((await as("rep", SALES, { f: "2025-01-01", t: "2025-03-31" })).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect((await as("manager", SALES, { f: "2025-01-01", t: "2025-03-31", i: "year" })).errors?.[0]?.extensions).toEqual({ code: "VALIDATION", field: "interval" });
    expect((await as("manager", SALES, { f: "2025-04-01", t: "2025-03-31" })).errors?.[0]?.extensions).toEqual({ code: "VALIDATION", field: "fromDate" });
    expect((await as("manager", SALES, { f: "2000-01-01", t: "2025-03-31", i: "day" })).errors?.[0]?.extensions).toEqual({ code: "VALIDATION", field: "fromDate" });
  });
});

describe("customerAnalytics", () => {
  test("levels now, new customers per period, and the repeat-purchase rate of the window", async () => {
    const res = await as("manager", `{ customerAnalytics(fromDate: "2025-01-01", toDate: "2025-03-31") {
      levelDistribution { name rank customers } newCustomers { periodStart customers } customersWithOrders repeatCustomers repeatPurchaseRate } }`);
    expect(res.errors).toBeUndefined();
    expect(res.data.customerAnalytics).toEqual({
      levelDistribution: [
        { name: "Bronze", rank: 1, customers: 2 },
        { name: "Silver", rank: 2, customers: 0 },
        { name: "Gold", rank: 3, customers: 1 },
        { name: "Platinum", rank: 4, customers: 0 },
      ],
      newCustomers: [
        { periodStart: "2025-01-01", customers: 2 },
        { periodStart: "2025-02-01", customers: 0 },
        { periodStart: "2025-03-01", customers: 1 },
      ],
      // Alpha (3 orders), Beta (1; its cancelled order does not count), Gamma (1).
      customersWithOrders: 3,
      repeatCustomers: 1,
      repeatPurchaseRate: "0.3333",
    });
    expect((await as("rep", `{ customerAnalytics { repeatPurchaseRate } }`)).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });
});
