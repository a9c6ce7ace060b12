// The GraphQL examples of docs/commerce.md run, in order, against an organization seeded like the
// demo one: every block marked `# run as <user>` (with the JSON block after it as its variables,
// placeholders such as "<customer>" filled in from the data) answers without errors.
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { docChain } from "../helpers/doc-chains.ts";
import { seedDemoData } from "../../src/db/seed-demo.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
const tokens: Record<string, string> = {};


beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "demo"); // its administrator is demo-admin
  const manager = await addMember(db, org, "demo-manager", "Sales Manager");
  await seedDemoData(db.owner, org.id, { seed: 3 });
  tokens["demo-admin"] = (await startSession(db, org.adminId, org.id)).accessToken;
  tokens["demo-manager"] = (await startSession(db, manager, org.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

test("every marked example of docs/commerce.md runs against the demo data", async () => {
  const list = await docChain("commerce.md");
  expect(list.length).toBeGreaterThanOrEqual(10);
  const q = async (sql: string, params: unknown[]) => (await db.owner.query(sql, params)).rows;
  const products = await q("select id from crm.products where organization_id = $1 and is_active and deleted_at is null order by sku limit 3", [org.id]);
  const values: Record<string, string> = {
    // A customer with points to spend.
    customer: (await q(
      `select c.id from crm.customers c where c.organization_id = $1 and c.status = 'customer'
          and crm.customers_loyalty_balance(c) >= 500 order by c.name limit 1`, [org.id]))[0].id,
    "product 1": products[0].id,
    "product 2": products[1].id,
    "product 3": products[2].id,
    "level Platinum": (await q("select id from crm.customer_levels where organization_id = $1 and name = 'Platinum'", [org.id]))[0].id,
  };
  const ran: string[] = [];
  for (const ex of list) {
    const variables = ex.variables ? JSON.parse(ex.variables.replace(/"<([^>]+)>"/g, (_, k: string) => JSON.stringify(values[k] ?? `missing ${k}`))) : {};
    const res = await server.gql<any>(ex.query, variables, { token: tokens[ex.who] });
    const name = ex.query.match(/(?:query|mutation) (\w+)/)?.[1] ?? "?";
    expect([name, res.body.errors]).toEqual([name, undefined]);
    ran.push(name);
    // What later examples refer to.
    const data = res.body.data;
    if (data?.createOrder && !values.order) {
      values.order = data.createOrder.result.rowId;
      values["order final amount"] = data.createOrder.result.finalAmount;
    }
    if (data?.createPromotion) values["last promotion"] = data.createPromotion.promotion.rowId;
    if (name === "WithCodeAndPoints") {
      expect(data.createOrder.result.orderDiscounts.nodes.map((d: { kind: string }) => d.kind)).toEqual(["promotion", "points"]);
    }
    if (name === "Ledger") expect(data.customer.loyaltyLedgers.nodes.length).toBeGreaterThan(0);
  }
  expect(ran).toEqual(expect.arrayContaining(["PlaceOrder", "WithCodeAndPoints", "Pay", "PartialRefund", "Reward", "Ledger", "Goodwill", "Vip", "Sales"]));
});
