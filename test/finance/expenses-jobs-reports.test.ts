// Expenses (workflow, no self-approval, project cost), the invoices:overdue and invoices:recur
// tenant jobs through the worker, and the financial reports — over GraphQL and through the worker.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { customer } from "../helpers/commerce.ts";
import { runJobs } from "../helpers/worker.ts";
import { asMember, issuedInvoice, type Body } from "../helpers/finance.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let clerkId: string;
let clerk2Id: string;
let repId: string;
let clerk: string;
let clerk2: string;
let rep: string;
let admin: string;
let buyer: string;
let projectId: string;

const gql = async (query: string, variables: Record<string, unknown>, token: string): Promise<Body> =>
  (await server.gql(query, variables, { token })).body as Body;
const code = (r: Body) => r.errors?.[0]?.extensions?.code;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "exp-a");
  clerkId = await addMember(db, org, "exp-clerk", "Finance");
  clerk2Id = await addMember(db, org, "exp-clerk2", "Finance");
  repId = await addMember(db, org, "exp-rep", "Sales Representative");
  clerk = (await startSession(db, clerkId, org.id)).accessToken;
  clerk2 = (await startSession(db, clerk2Id, org.id)).accessToken;
  rep = (await startSession(db, repId, org.id)).accessToken;
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  buyer = await customer(db, org.id, repId, "Late Payer");
  projectId = (await db.owner.query("insert into crm.projects (organization_id, customer_id, name, manager_id) values ($1, $2, 'Rollout', $3) returning id", [
    org.id, buyer, repId,
  ])).rows[0].id;
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

const CREATE_EXPENSE = `mutation ($cat: UUID!, $amount: BigFloat!, $project: UUID) {
  createExpense(input: { expense: { categoryId: $cat, amount: $amount, currency: "USD", description: "Train to the client", spentOn: "2026-03-10", projectId: $project } }) {
    expense { rowId status submittedBy } } }`;
const step = (name: string, withReason = false) =>
  `mutation ($id: UUID!${withReason ? ", $reason: String!" : ""}) { ${name}(input: { expenseId: $id${withReason ? ", reason: $reason" : ""} }) { result { rowId status approverId decisionReason } } }`;

describe("expenses", () => {
  let travel: string;
  beforeAll(async () => {
    const r = await gql(`{ expenseCategories(orderBy: POSITION_ASC) { nodes { rowId name } } }`, {}, clerk);
    expect(r.data.expenseCategories.nodes.map((n: any) => n.name)).toEqual(["Travel", "Meals", "Software", "Marketing", "Office", "Other"]);
    travel = r.data.expenseCategories.nodes[0].rowId;
  });

  test("draft → submitted → approved → reimbursed; nobody approves their own; illegal moves refused", async () => {
    const e = await gql(CREATE_EXPENSE, { cat: travel, amount: "120.50", project: projectId }, clerk);
    expect(e.data.createExpense.expense).toMatchObject({ status: "draft", submittedBy: clerkId });
    const id = e.data.createExpense.expense.rowId;
    expect(code(await gql(step("approveExpense"), { id }, clerk2))).toBe("INVALID_STATE"); // not submitted yet
    expect(code(await gql(step("submitExpense"), { id }, clerk2))).toBe("FORBIDDEN"); // not theirs
    expect((await gql(step("submitExpense"), { id }, clerk)).data.submitExpense.result.status).toBe("submitted");
    const edit = await gql(`mutation ($id: UUID!) { updateExpense(input: { rowId: $id, patch: { amount: "1" } }) { expense { amount } } }`, { id }, clerk);
    expect(edit.data?.updateExpense ?? null).toBeNull();
    const self = await gql(step("approveExpense"), { id }, clerk);
    expect(code(self)).toBe("FORBIDDEN");
    expect(self.errors?.[0]?.message).toMatch(/own expense/);
    expect(code(await gql(step("reimburseExpense"), { id }, clerk2))).toBe("INVALID_STATE");
    const ok = await gql(step("approveExpense"), { id }, clerk2);
    expect(ok.data.approveExpense.result).toMatchObject({ status: "approved", approverId: clerk2Id });
    expect(code(await gql(step("rejectExpense", true), { id, reason: "late" }, clerk2))).toBe("INVALID_STATE");
    expect((await gql(step("reimburseExpense"), { id }, clerk2)).data.reimburseExpense.result.status).toBe("reimbursed");
    expect(code(await gql(step("approveExpense"), { id }, clerk2))).toBe("INVALID_STATE");
  });

  test("rejection needs a reason; rejected stays rejected; without expenses:approve, FORBIDDEN", async () => {
    const e = await gql(CREATE_EXPENSE, { cat: travel, amount: "30", project: projectId }, clerk2);
    const id = e.data.createExpense.expense.rowId;
    await gql(step("submitExpense"), { id }, clerk2);
    expect(code(await gql(step("approveExpense"), { id }, rep))).toBe("FORBIDDEN");
    expect(code(await gql(step("rejectExpense", true), { id, reason: " " }, clerk))).toBe("VALIDATION");
    const r = await gql(step("rejectExpense", true), { id, reason: "No receipt" }, clerk);
    expect(r.data.rejectExpense.result).toMatchObject({ status: "rejected", decisionReason: "No receipt" });
    expect(code(await gql(step("approveExpense"), { id }, clerk))).toBe("INVALID_STATE");
  });

  test("approved and reimbursed expenses roll up into the project's cost", async () => {
    const e = await gql(CREATE_EXPENSE, { cat: travel, amount: "9.45", project: projectId }, clerk2);
    await gql(step("submitExpense"), { id: e.data.createExpense.expense.rowId }, clerk2);
    const p = await gql(`query ($id: UUID!) { project(rowId: $id) { expenseCost } }`, { id: projectId }, clerk);
    expect(p.data.project.expenseCost).toEqual({ USD: "120.50" }); // the submitted one does not count yet
    await gql(step("approveExpense"), { id: e.data.createExpense.expense.rowId }, clerk);
    const q = await gql(`query ($id: UUID!) { project(rowId: $id) { expenseCost } }`, { id: projectId }, clerk);
    expect(q.data.project.expenseCost).toEqual({ USD: "129.95" });
  });
});

describe("invoices:overdue", () => {
  test("marks issued invoices past due as overdue and notifies the owner and the Finance members, once per invoice", async () => {
    const late = await issuedInvoice(db, org.id, clerkId, buyer, { issueDate: "2026-01-01", dueDate: "2026-01-31" });
    const current = await issuedInvoice(db, org.id, clerkId, buyer, { issueDate: "2026-01-01", dueDate: "2099-01-01" });
    const partly = await issuedInvoice(db, org.id, clerkId, buyer, { issueDate: "2026-01-01", dueDate: "2026-02-15" });
    await asMember(db, org.id, clerkId, "select crm.record_invoice_payment($1, 40, 'cash')", [partly.id]);
    for (let run = 0; run < 2; run++) {
      await db.owner.query("select crm_private.enqueue_tenant_job('invoices:overdue', $1)", [org.id]);
      await runJobs(db);
    }
    const { rows } = await db.owner.query("select id, status from crm.invoices where id = any ($1::uuid[]) order by number", [[late.id, current.id, partly.id]]);
    expect(Object.fromEntries(rows.map((r) => [r.id, r.status]))).toEqual({ [late.id]: "overdue", [current.id]: "issued", [partly.id]: "overdue" });
    const notes = await db.owner.query(
      "select recipient_id, record_id from crm.notifications where organization_id = $1 and kind = 'invoice_overdue' order by record_id, recipient_id",
      [org.id],
    );
    // Each overdue invoice: the customer's owner (the representative) and both Finance members.
    const expected = [late.id, partly.id].flatMap((inv) => [repId, clerkId, clerk2Id].map((u) => `${inv}:${u}`)).sort();
    expect(notes.rows.map((r) => `${r.record_id}:${r.recipient_id}`).sort()).toEqual(expected);
    const runs = await db.owner.query("select outcome, rows_affected::int from crm.job_runs where organization_id = $1 and task = 'invoices:overdue' order by started_at", [org.id]);
    expect(runs.rows).toEqual([{ outcome: "succeeded", rows_affected: 2 }, { outcome: "succeeded", rows_affected: 0 }]);
    // The representative sees the notification in-app.
    const mine = await gql(`{ notifications(filter: { kind: { equalTo: invoice_overdue } }) { totalCount nodes { title } } }`, {}, rep);
    expect(mine.errors).toBeUndefined();
    expect(mine.data.notifications.totalCount).toBe(2);
    expect(mine.data.notifications.nodes[0].title).toMatch(/^Invoice INV-2026-\d{4} is overdue$/);
    // Paying an overdue invoice in part keeps it overdue; in full makes it paid.
    await asMember(db, org.id, clerkId, "select crm.record_invoice_payment($1, 60, 'cash')", [partly.id]);
    expect((await db.owner.query("select status, balance from crm.invoices where id = $1", [partly.id])).rows[0]).toEqual({ status: "paid", balance: "0.00" });
  });
});

describe("invoices:overdue e-mails", () => {
  test("the customer gets one e-mail per overdue invoice through the message queue, unless they opted out", async () => {
    const payer = await customer(db, org.id, repId, "Mail Payer");
    const quiet = await customer(db, org.id, repId, "Quiet Payer");
    await db.owner.query("update crm.customers set email = 'pay@example.test' where id = $1", [payer]);
    await db.owner.query("update crm.customers set email = 'quiet@example.test' where id = $1", [quiet]);
    await db.owner.query("insert into crm.consents (organization_id, customer_id, channel, status, source) values ($1, $2, 'email', 'opted_out', 'test')", [org.id, quiet]);
    const mailed = await issuedInvoice(db, org.id, clerkId, payer, { issueDate: "2026-01-01", dueDate: "2026-01-31" });
    await issuedInvoice(db, org.id, clerkId, quiet, { issueDate: "2026-01-01", dueDate: "2026-01-31" });
    for (let run = 0; run < 2; run++) {
      await db.owner.query("select crm_private.enqueue_tenant_job('invoices:overdue', $1)", [org.id]);
      await runJobs(db);
    }
    const { rows } = await db.owner.query(
      "select customer_id, recipient, kind, subject, body from crm.messages where organization_id = $1 and customer_id = any ($2::uuid[])",
      [org.id, [payer, quiet]],
    );
    const number = (await db.owner.query("select number from crm.invoices where id = $1", [mailed.id])).rows[0].number as string;
    expect(rows.map((r) => ({ ...r, body: undefined }))).toEqual([
      { customer_id: payer, recipient: "pay@example.test", kind: "transactional", subject: `Invoice ${number} is overdue`, body: undefined },
    ]);
    expect(rows[0].body).toContain("was due on 2026-01-31");
  });
});

describe("invoices:recur", () => {
  test("a monthly schedule bills each period once, month ends kept, as drafts or issued per the setting", async () => {
    const s = await gql(
      `mutation ($c: UUID!) { createBillingSchedule(input: { billingSchedule: { customerId: $c, name: "Support plan", frequency: "monthly",
          startDate: "2026-01-31", items: [{ description: "Support", quantity: "1", unitPrice: "99.99", taxRate: "10" }] } }) {
          billingSchedule { rowId nextDate periodsBilled currency } } }`,
      { c: buyer },
      clerk,
    );
    expect(s.errors).toBeUndefined();
    const sid = s.data.createBillingSchedule.billingSchedule.rowId;
    const bad = await gql(`mutation ($c: UUID!) { createBillingSchedule(input: { billingSchedule: { customerId: $c, name: "x", frequency: "monthly", startDate: "2026-01-01", items: [{ quantity: "1" }] } }) { billingSchedule { rowId } } }`, { c: buyer }, clerk);
    expect(code(bad)).toBe("VALIDATION");
    const run = async (asOf: string) => {
      await db.owner.query("select crm_private.enqueue_tenant_job('invoices:recur', $1, $2)", [org.id, JSON.stringify({ asOf })]);
      await runJobs(db);
    };
    await run("2026-03-30");
    await run("2026-03-30");
    let inv = await db.owner.query("select schedule_period, status, total, notes from crm.invoices where schedule_id = $1 order by schedule_period", [sid]);
    expect(inv.rows.map((r) => [r.schedule_period, r.status, r.total])).toEqual([[1, "draft", "109.99"], [2, "draft", "109.99"]]);
    expect(inv.rows[1].notes).toContain("2026-02-28");
    await db.owner.query("update crm.finance_settings set recurring_auto_issue = true where organization_id = $1", [org.id]);
    await run("2026-03-31");
    inv = await db.owner.query("select schedule_period, status, issue_date::text, number from crm.invoices where schedule_id = $1 order by schedule_period", [sid]);
    expect(inv.rows).toHaveLength(3);
    expect(inv.rows[2]).toMatchObject({ schedule_period: 3, status: "issued", issue_date: "2026-03-31", number: expect.stringMatching(/^INV-2026-\d{4}$/) });
    const sched = await db.owner.query("select next_date::text, periods_billed from crm.billing_schedules where id = $1", [sid]);
    expect(sched.rows[0]).toEqual({ next_date: "2026-04-30", periods_billed: 3 });
    await db.owner.query("update crm.finance_settings set recurring_auto_issue = false where organization_id = $1", [org.id]);
  });
});

describe("reports (reports:financial)", () => {
  test("revenue by month, receivables aging and expenses by category, per currency", async () => {
    const o2 = await createOrg(db, "rep-b");
    const f = await addMember(db, o2, "rep-b-clerk", "Finance");
    const token = (await startSession(db, f, o2.id)).accessToken;
    const c = await customer(db, o2.id, o2.adminId, "Aging Co");
    const a = await issuedInvoice(db, o2.id, f, c, { amount: "100.00", issueDate: "2026-01-10", dueDate: "2026-01-20" }); // 71 days late on 04-01
    await issuedInvoice(db, o2.id, f, c, { amount: "200.00", issueDate: "2026-02-01", dueDate: "2026-03-15" }); // 17 days
    await issuedInvoice(db, o2.id, f, c, { amount: "300.00", issueDate: "2026-03-20", dueDate: "2026-04-19" }); // current
    await issuedInvoice(db, o2.id, f, c, { amount: "50.00", issueDate: "2025-11-01", dueDate: "2025-12-01", currency: "EUR" }); // 121 days
    await issuedInvoice(db, o2.id, f, c, { amount: "70.00", issueDate: "2026-01-01", dueDate: "2026-02-14", currency: "EUR" }); // 46 days
    await asMember(db, o2.id, f, "select crm.record_invoice_payment($1, 30.25, 'cash', null, '2026-02-03T12:00:00Z')", [a.id]);
    const r = await gql(
      `{ financeRevenueByMonth(fromDate: "2026-01-01", toDate: "2026-03-31") { month currency invoiced credited collected invoices }
         financeReceivablesAging(asOf: "2026-04-01") { currency current days1To30 days31To60 days61To90 daysOver90 total invoices } }`,
      {},
      token,
    );
    expect(r.errors).toBeUndefined();
    expect(r.data.financeRevenueByMonth).toEqual([
      { month: "2026-01-01", currency: "EUR", invoiced: "70.00", credited: "0", collected: "0", invoices: 1 },
      { month: "2026-01-01", currency: "USD", invoiced: "100.00", credited: "0", collected: "0", invoices: 1 },
      { month: "2026-02-01", currency: "USD", invoiced: "200.00", credited: "0", collected: "30.25", invoices: 1 },
      { month: "2026-03-01", currency: "USD", invoiced: "300.00", credited: "0", collected: "0", invoices: 1 },
    ]);
    expect(r.data.financeReceivablesAging).toEqual([
      { currency: "EUR", current: "0", days1To30: "0", days31To60: "70.00", days61To90: "0", daysOver90: "50.00", total: "120.00", invoices: 2 },
      { currency: "USD", current: "300.00", days1To30: "200.00", days31To60: "0", days61To90: "69.75", daysOver90: "0", total: "569.75", invoices: 3 },
    ]);
    const cats = await gql(`{ financeExpensesByCategory(fromDate: "2026-03-01", toDate: "2026-03-31") { month category currency approved pending expenses } }`, {}, clerk);
    expect(cats.data.financeExpensesByCategory).toEqual([
      { month: "2026-03-01", category: "Travel", currency: "USD", approved: "129.95", pending: "0", expenses: 2 },
    ]);
    const denied = await gql(`{ financeReceivablesAging { currency } }`, {}, rep);
    expect(code(denied)).toBe("FORBIDDEN");
  });
});
