// Invoices over GraphQL against a real server: gapless numbering under concurrency, per organization
// and year; totals, partial payments, credit notes and over-payment to the cent; the status machine;
// invoices from orders; issued lines never edited.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { CREATE_ORDER, customer, product } from "../helpers/commerce.ts";
import { CREATE_INVOICE, INVOICE, type Body } from "../helpers/finance.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let other: TestOrg;
let finance: string;
let otherFinance: string;
let admin: string;
let buyer: string;
let otherBuyer: string;
const PARALLEL = 50;
const year = new Date().getUTCFullYear();

const gql = async (query: string, variables: Record<string, unknown>, token = finance): Promise<Body> =>
  (await server.gql(query, variables, { token })).body as Body;
const code = (r: Body) => r.errors?.[0]?.extensions?.code;

async function draft(c: string, token = finance, items: unknown[] = [{ description: "Work", quantity: "1", unitPrice: "100", taxRate: "0" }]) {
  const r = await gql(CREATE_INVOICE, { c, items }, token);
  expect(r.errors).toBeUndefined();
  return r.data.createInvoice.result as Record<string, any>;
}
const ISSUE = `mutation ($id: UUID!, $d: Date) { issueInvoice(input: { invoiceId: $id, issueDate: $d }) { result { ${INVOICE} } } }`;
const PAY = `mutation ($id: UUID!, $a: BigFloat!, $key: String) {
  recordInvoicePayment(input: { invoiceId: $id, amount: $a, method: "bank_transfer", idempotencyKey: $key }) {
    result { rowId amount currency invoice { ${INVOICE} } } } }`;
const CREDIT = `mutation ($id: UUID!, $a: BigFloat!) { creditInvoice(input: { invoiceId: $id, amount: $a, reason: "Correction" }) {
  result { rowId number amount invoice { ${INVOICE} } } } }`;
const VOID = `mutation ($id: UUID!) { voidInvoice(input: { invoiceId: $id, reason: "Issued in error" }) { result { ${INVOICE} } } }`;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "fin-a");
  other = await createOrg(db, "fin-b");
  const f = await addMember(db, org, "fin-a-clerk", "Finance");
  const g = await addMember(db, other, "fin-b-clerk", "Finance");
  finance = (await startSession(db, f, org.id)).accessToken;
  otherFinance = (await startSession(db, g, other.id)).accessToken;
  admin = (await startSession(db, org.adminId, org.id)).accessToken;
  buyer = await customer(db, org.id, org.adminId, "Buyer Ltd");
  otherBuyer = await customer(db, other.id, other.adminId, "Other Buyer");
  server = await startServer(db, { PG_POOL_MAX: "25" });
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("numbering", () => {
  test(`${PARALLEL} parallel issueInvoice calls get ${PARALLEL} distinct consecutive numbers, no gap`, async () => {
    const drafts = [];
    for (let i = 0; i < PARALLEL; i++) drafts.push(await draft(buyer));
    expect(drafts.every((d) => d.number === null && d.status === "draft")).toBe(true);
    const results = await Promise.all(drafts.map((d) => gql(ISSUE, { id: d.rowId })));
    expect(results.filter((r) => r.errors)).toEqual([]);
    const numbers = results.map((r) => r.data.issueInvoice.result.number as string).sort();
    expect(new Set(numbers).size).toBe(PARALLEL);
    expect(numbers).toEqual(Array.from({ length: PARALLEL }, (_, i) => `INV-${year}-${String(i + 1).padStart(4, "0")}`));
  });

  test("a second organization numbers independently; a failed issue gives its number back", async () => {
    const d = await draft(otherBuyer, otherFinance);
    const bad = await gql(`mutation ($id: UUID!) { issueInvoice(input: { invoiceId: $id, dueDate: "2000-01-01" }) { result { number } } }`, { id: d.rowId }, otherFinance);
    expect(code(bad)).toBe("VALIDATION");
    const r = await gql(ISSUE, { id: d.rowId }, otherFinance);
    expect(r.data.issueInvoice.result.number).toBe(`INV-${year}-0001`);
    const next = await gql(ISSUE, { id: (await draft(buyer)).rowId });
    expect(next.data.issueInvoice.result.number).toBe(`INV-${year}-${String(PARALLEL + 1).padStart(4, "0")}`);
  });

  test("a new year starts at 0001; the old year goes on where it was", async () => {
    const r1 = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: `${year + 1}-01-01` });
    expect(r1.data.issueInvoice.result).toMatchObject({ number: `INV-${year + 1}-0001`, issueDate: `${year + 1}-01-01`, dueDate: `${year + 1}-01-31` });
    const r2 = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: `${year + 1}-12-31` });
    expect(r2.data.issueInvoice.result.number).toBe(`INV-${year + 1}-0002`);
    const r3 = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: `${year}-06-30` });
    expect(r3.data.issueInvoice.result.number).toBe(`INV-${year}-${String(PARALLEL + 2).padStart(4, "0")}`);
  });

  test("prefix and padding are organization settings (settings:manage)", async () => {
    const s = await gql(`{ financeSettings { nodes { rowId invoicePrefix numberPadding } } }`, {});
    const id = s.data.financeSettings.nodes[0].rowId;
    expect(s.data.financeSettings.nodes[0]).toMatchObject({ invoicePrefix: "INV", numberPadding: 4 });
    const denied = await gql(`mutation ($id: UUID!) { updateFinanceSetting(input: { rowId: $id, patch: { invoicePrefix: "BILL" } }) { financeSetting { invoicePrefix } } }`, { id });
    expect(denied.data?.updateFinanceSetting ?? null).toBeNull();
    const ok = await gql(`mutation ($id: UUID!) { updateFinanceSetting(input: { rowId: $id, patch: { invoicePrefix: "BILL", numberPadding: 6 } }) { financeSetting { invoicePrefix numberPadding } } }`, { id }, admin);
    expect(ok.errors).toBeUndefined();
    const r = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: "2031-03-01" });
    expect(r.data.issueInvoice.result.number).toBe("BILL-2031-000001");
    await gql(`mutation ($id: UUID!) { updateFinanceSetting(input: { rowId: $id, patch: { invoicePrefix: "INV", numberPadding: 4 } }) { clientMutationId } }`, { id }, admin);
  });

  test("a void invoice keeps its number", async () => {
    const d = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: "2032-01-05" });
    const v = await gql(VOID, { id: d.data.issueInvoice.result.rowId });
    expect(v.data.voidInvoice.result).toMatchObject({ status: "void", number: "INV-2032-0001", voidReason: "Issued in error" });
    const n = await gql(ISSUE, { id: (await draft(buyer)).rowId, d: "2032-02-05" });
    expect(n.data.issueInvoice.result.number).toBe("INV-2032-0002");
  });
});

describe("money, exact to the cent", () => {
  // 3 × 19.99 at 19 %: 59.97 + 11.39 (11.3943); 0.5 × 33.3333 at 7 %: 16.67 (16.66665) + 1.17 (1.1669);
  // 1 × 0.005: 0.01 (half-up). Subtotal 76.65, tax 12.56, total 89.21.
  const items = [
    { description: "Widgets", quantity: "3", unitPrice: "19.99", taxRate: "19" },
    { description: "Half a day", quantity: "0.5", unitPrice: "33.3333", taxRate: "7" },
    { description: "Rounding", quantity: "1", unitPrice: "0.005", taxRate: "0" },
  ];
  let id: string;

  test("totals per line and per invoice", async () => {
    const d = await draft(buyer, finance, items);
    id = d.rowId;
    expect(d).toMatchObject({ subtotal: "76.65", taxTotal: "12.56", total: "89.21", amountPaid: "0.00", balance: "89.21" });
    expect(d.invoiceItems.nodes.map((l: any) => [l.lineSubtotal, l.taxAmount, l.lineTotal])).toEqual([
      ["59.97", "11.39", "71.36"], ["16.67", "1.17", "17.84"], ["0.01", "0.00", "0.01"],
    ]);
  });

  test("payments before issue, and over-payment, are refused; partial then full payment", async () => {
    expect(code(await gql(PAY, { id, a: "10.00" }))).toBe("INVALID_STATE");
    const issued = await gql(ISSUE, { id });
    expect(issued.data.issueInvoice.result.billingSnapshot.customer.name).toBe("Buyer Ltd");
    const p1 = await gql(PAY, { id, a: "50.00", key: "pay-1" });
    expect(p1.data.recordInvoicePayment.result.invoice).toMatchObject({ status: "partially_paid", amountPaid: "50.00", balance: "39.21" });
    const again = await gql(PAY, { id, a: "50.00", key: "pay-1" });
    expect(again.data.recordInvoicePayment.result.rowId).toBe(p1.data.recordInvoicePayment.result.rowId);
    const over = await gql(PAY, { id, a: "39.22" });
    expect(code(over)).toBe("VALIDATION");
    expect(over.errors?.[0]?.extensions?.field).toBe("amount");
    expect(code(await gql(PAY, { id, a: "0.001" }))).toBe("VALIDATION");
    const p2 = await gql(PAY, { id, a: "39.21" });
    expect(p2.data.recordInvoicePayment.result.invoice).toMatchObject({ status: "paid", amountPaid: "89.21", balance: "0.00" });
    expect(code(await gql(PAY, { id, a: "0.01" }))).toBe("INVALID_STATE");
  });

  test("a paid invoice is not voided without a credit note; credited in full, it is", async () => {
    expect(code(await gql(VOID, { id }))).toBe("INVALID_STATE");
    expect(code(await gql(CREDIT, { id, a: "89.22" }))).toBe("VALIDATION");
    const c1 = await gql(CREDIT, { id, a: "9.21" });
    expect(c1.data.creditInvoice.result).toMatchObject({ amount: "9.21", number: `CN-${year}-0001` });
    expect(c1.data.creditInvoice.result.invoice).toMatchObject({ creditedAmount: "9.21", balance: "-9.21", status: "paid" });
    expect(code(await gql(VOID, { id }))).toBe("INVALID_STATE");
    const c2 = await gql(CREDIT, { id, a: "80.00" });
    expect(c2.data.creditInvoice.result.invoice).toMatchObject({ creditedAmount: "89.21", balance: "-89.21" });
    expect(code(await gql(CREDIT, { id, a: "0.01" }))).toBe("VALIDATION");
    const v = await gql(VOID, { id });
    expect(v.data.voidInvoice.result).toMatchObject({ status: "void", number: expect.stringMatching(/^INV-/) });
  });

  test("a credit note lowers what is due: a partial credit then the rest paid", async () => {
    const d = await draft(buyer, finance, [{ description: "Service", quantity: "1", unitPrice: "1000", taxRate: "20" }]);
    await gql(ISSUE, { id: d.rowId });
    const c = await gql(CREDIT, { id: d.rowId, a: "200.00" });
    expect(c.data.creditInvoice.result.invoice).toMatchObject({ total: "1200.00", creditedAmount: "200.00", balance: "1000.00", status: "issued" });
    expect(code(await gql(PAY, { id: d.rowId, a: "1000.01" }))).toBe("VALIDATION");
    const p = await gql(PAY, { id: d.rowId, a: "1000.00" });
    expect(p.data.recordInvoicePayment.result.invoice).toMatchObject({ status: "paid", balance: "0.00" });
  });
});

describe("status machine and guards", () => {
  test("illegal moves are INVALID_STATE; an issued invoice's lines and amounts never change", async () => {
    const d = await draft(buyer);
    expect(code(await gql(CREDIT, { id: d.rowId, a: "1.00" }))).toBe("INVALID_STATE");
    await gql(ISSUE, { id: d.rowId });
    expect(code(await gql(ISSUE, { id: d.rowId }))).toBe("INVALID_STATE");
    const edit = await gql(`mutation ($id: UUID!) { updateInvoice(input: { rowId: $id, patch: { dueDate: "2099-01-01" } }) { invoice { dueDate } } }`, { id: d.rowId });
    expect(code(edit)).toBe("INVALID_STATE");
    const note = await gql(`mutation ($id: UUID!) { updateInvoice(input: { rowId: $id, patch: { notes: "Called the buyer" } }) { invoice { notes } } }`, { id: d.rowId });
    expect(note.data.updateInvoice.invoice.notes).toBe("Called the buyer");
    // Not even the owner edits an issued invoice's lines or moves it back.
    const line = await sqlError(db.owner.query("update crm.invoice_items set unit_price = 1 where invoice_id = $1", [d.rowId]));
    expect(line.code).toBe("CRSTA");
    const back = await sqlError(db.owner.query("update crm.invoices set status = 'draft' where id = $1", [d.rowId]));
    expect(back.code).toBe("CRSTA");
    await gql(VOID, { id: d.rowId });
    expect(code(await gql(VOID, { id: d.rowId }))).toBe("INVALID_STATE");
    expect(code(await gql(PAY, { id: d.rowId, a: "1.00" }))).toBe("INVALID_STATE");
  });

  test("who may: a Sales Representative neither creates nor sees invoices", async () => {
    const rep = await addMember(db, org, "fin-a-rep", "Sales Representative");
    const token = (await startSession(db, rep, org.id)).accessToken;
    const r = await gql(CREATE_INVOICE, { c: buyer, items: [{ description: "x", quantity: "1", unitPrice: "1" }] }, token);
    expect(code(r)).toBe("FORBIDDEN");
    const list = await gql(`{ invoices { totalCount } }`, {}, token);
    expect(list.data.invoices.totalCount).toBe(0);
  });
});

describe("invoices from orders", () => {
  test("bills the orders' lines at their net amounts and tax: the same total; an order is billed once", async () => {
    const book = await product(db, org.id, { sku: "BOOK", price: "19.99", tax: 7 });
    const pen = await product(db, org.id, { sku: "PEN", price: "2.345", tax: 19 });
    const o1 = await gql(CREATE_ORDER, { c: buyer, items: [{ productId: book, quantity: "3" }, { productId: pen, quantity: "7" }], key: "o1" }, admin);
    const o2 = await gql(CREATE_ORDER, { c: buyer, items: [{ productId: book, quantity: "1" }], key: "o2" }, admin);
    expect(o1.errors).toBeUndefined();
    const ids = [o1.data.createOrder.result.rowId, o2.data.createOrder.result.rowId];
    const sum = (Number(o1.data.createOrder.result.finalAmount) * 100 + Number(o2.data.createOrder.result.finalAmount) * 100) / 100;
    const r = await gql(`mutation ($ids: [UUID]!) { createInvoiceFromOrders(input: { orderIds: $ids }) { result { ${INVOICE} } } }`, { ids });
    expect(r.errors).toBeUndefined();
    expect(Number(r.data.createInvoiceFromOrders.result.total)).toBe(sum);
    expect(r.data.createInvoiceFromOrders.result.invoiceItems.nodes).toHaveLength(3);
    const twice = await gql(`mutation ($ids: [UUID]!) { createInvoiceFromOrders(input: { orderIds: $ids }) { result { rowId } } }`, { ids: [ids[1]] });
    expect(code(twice)).toBe("CONFLICT");
  });
});
