// The GraphQL examples of docs/finance.md run, in order, against an organization seeded like the demo
// one: every block marked `# run as <user>` (with the JSON block after it as its variables,
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
let clientId: string;
const tokens: Record<string, string> = {};


beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "demo"); // its administrator is demo-admin
  const finance = await addMember(db, org, "demo-finance", "Finance");
  clientId = await addMember(db, org, "demo-client", "Viewer");
  await seedDemoData(db.owner, org.id, { seed: 4 });
  tokens["demo-admin"] = (await startSession(db, org.adminId, org.id)).accessToken;
  tokens["demo-finance"] = (await startSession(db, finance, org.id)).accessToken;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

test("every marked example of docs/finance.md runs against the demo data", async () => {
  const list = await docChain("finance.md");
  expect(list.length).toBeGreaterThanOrEqual(12);
  const q = async (sql: string, params: unknown[] = [org.id]) => (await db.owner.query(sql, params)).rows;
  // A customer with two orders that no invoice bills yet.
  const orders = await q(
    `select o.customer_id, array_agg(o.id order by o.ordered_at) as ids from crm.orders o
      where o.organization_id = $1 and o.status in ('paid', 'pending', 'partially_paid')
        and not exists (select 1 from crm.invoice_items x where x.order_id = o.id)
      group by o.customer_id, o.currency having count(*) >= 2 order by 1 limit 1`,
  );
  const values: Record<string, string> = {
    customer: orders[0].customer_id,
    "order 1": orders[0].ids[0],
    "order 2": orders[0].ids[1],
    draft: (await q("select id from crm.invoices where organization_id = $1 and status = 'draft' order by created_at limit 1"))[0].id,
    settings: (await q("select id from crm.finance_settings where organization_id = $1"))[0].id,
    "category Travel": (await q("select id from crm.expense_categories where organization_id = $1 and name = 'Travel'"))[0].id,
    project: (await q("select id from crm.projects where organization_id = $1 and deleted_at is null order by created_at limit 1"))[0].id,
    "client membership": (await q("select id from crm.organization_memberships where organization_id = $1 and user_id = $2", [org.id, clientId]))[0].id,
    "role Client Viewer": (await q("select id from crm.roles where organization_id = $1 and name = 'Client Viewer'"))[0].id,
  };
  const ran: string[] = [];
  for (const ex of list) {
    const variables = ex.variables ? JSON.parse(ex.variables.replace(/"<([^>]+)>"/g, (_, k: string) => JSON.stringify(values[k] ?? `missing ${k}`))) : {};
    const res = await server.gql<any>(ex.query, variables, { token: tokens[ex.who] });
    const name = ex.query.match(/(?:query|mutation) (\w+)/)?.[1] ?? "?";
    expect([name, res.body.errors]).toEqual([name, undefined]);
    ran.push(name);
    const data = res.body.data;
    if (name === "Draft") {
      values.invoice = data.createInvoice.result.rowId;
      // 2 × 650.00 = 1,300.00 + 19 % = 247.00; 84.50 untaxed: 1,631.50.
      expect(data.createInvoice.result).toMatchObject({ subtotal: "1384.50", taxTotal: "247.00", total: "1631.50", number: null });
    }
    if (name === "Issue") expect(data.issueInvoice.result.number).toMatch(/^INV-\d{4}-\d{4}$/);
    if (name === "Credit") expect(data.creditInvoice.result.invoice).toMatchObject({ creditedAmount: "84.50", balance: "1047.00", status: "partially_paid" });
    if (name === "Spend") values.expense = data.createExpense.expense.rowId;
    if (name === "Approve") expect(data.approveExpense.result.status).toBe("approved");
  }
  expect(ran).toEqual(expect.arrayContaining(["Draft", "Issue", "Pay", "Credit", "Invoice", "FromOrders", "VoidDraft", "Open", "Settings", "Schedule", "Spend", "Submit", "Approve", "Costs", "Client"]));
  // The client viewer now sees exactly its customer.
  const client = (await startSession(db, clientId, org.id)).accessToken;
  const seen = await server.gql<any>(`{ customers { nodes { rowId } } invoices { totalCount } }`, {}, { token: client });
  expect(seen.body.data.customers.nodes).toEqual([{ rowId: values.customer }]);
  expect(seen.body.data.invoices.totalCount).toBeGreaterThan(0);
});
