// Catalogue, orders, payments, refunds and cancellation through GraphQL over HTTP: exact totals on
// awkward cases, idempotency, refused input that writes nothing, the status machine, references
// that never cross organizations, and the role matrix of the commerce permission codes.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, sqlError, type TestDb } from "../helpers/db.ts";
import { startServer, type TestServer } from "../helpers/server.ts";
import { addMember, createOrg, startSession, type TestOrg } from "../helpers/identity.ts";
import { seedTenant, type SeededTenant } from "../helpers/tenant.ts";
import { commerceCounts, CREATE_ORDER, customer, level, product } from "../helpers/commerce.ts";

let db: TestDb;
let server: TestServer;
let org: TestOrg;
let other: SeededTenant;
const users = {} as Record<"admin" | "manager" | "rep" | "rep2" | "viewer", string>;
const tokens: Record<string, string> = {};
const p = {} as Record<"thirds" | "dime" | "one" | "shirt" | "book" | "sticker" | "jacket" | "cap" | "pin" | "old" | "euro", string>;
let year: number;

type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };
const as = async (who: string, query: string, variables: Record<string, unknown> = {}): Promise<Body> =>
  (await server.gql(query, variables, { token: tokens[who] })).body as Body;
const code = (b: Body) => b.errors?.[0]?.extensions?.code;
const field = (b: Body) => b.errors?.[0]?.extensions?.field;
let keys = 0;
const key = () => `key-${++keys}`;
const line = (productId: string, quantity: string | number, unitPrice?: string) => ({ productId, quantity: String(quantity), ...(unitPrice ? { unitPrice } : {}) });
const order = (who: string, c: string, items: unknown[], extra: Record<string, unknown> = {}) =>
  as(who, CREATE_ORDER, { c, items, key: key(), ...extra });

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "shop");
  other = await seedTenant(db, "elsewhere");
  users.admin = org.adminId;
  users.manager = await addMember(db, org, "shop-manager", "Sales Manager");
  users.rep = await addMember(db, org, "shop-rep", "Sales Representative");
  users.rep2 = await addMember(db, org, "shop-rep2", "Sales Representative");
  users.viewer = await addMember(db, org, "shop-viewer", "Viewer");
  for (const [who, id] of Object.entries(users)) tokens[who] = (await startSession(db, id, org.id)).accessToken;
  p.thirds = await product(db, org.id, { sku: "THIRD", price: "0.333" });
  p.dime = await product(db, org.id, { sku: "DIME", price: "0.10", tax: 5 });
  p.one = await product(db, org.id, { sku: "ONE", price: "1.00", tax: "33.3" });
  p.shirt = await product(db, org.id, { sku: "SHIRT", price: "19.99", tax: 19 });
  p.book = await product(db, org.id, { sku: "BOOK", price: "5.00", tax: 7 });
  p.sticker = await product(db, org.id, { sku: "STICKER", price: "0.01", tax: 0 });
  p.jacket = await product(db, org.id, { sku: "JACKET", price: "45.50", tax: 20 });
  p.cap = await product(db, org.id, { sku: "CAP", price: "9.99", tax: 5 });
  p.pin = await product(db, org.id, { sku: "PIN", price: "3.33", tax: 0 });
  p.old = await product(db, org.id, { sku: "OLD", price: "10", active: false });
  p.euro = await product(db, org.id, { sku: "EURO", price: "10", currency: "EUR" });
  year = new Date().getUTCFullYear();
  server = await startServer(db);
});
afterAll(async () => {
  await server?.stop();
  await db?.drop();
});

describe("catalogue", () => {
  test("products:* holders create and edit products; SKUs are unique per organization; everyone reads active products", async () => {
    const cat = await as("manager", `mutation { createProductCategory(input: { productCategory: { name: "Apparel" } }) { productCategory { rowId } } }`);
    const categoryId = cat.data.createProductCategory.productCategory.rowId;
    const created = await as("manager", `mutation ($c: UUID!) { createProduct(input: { product: { sku: "HOODIE-1", name: "Hoodie", unitPrice: "39.9", taxRate: "19", categoryId: $c } }) {
      product { rowId currency isActive category { name } } } }`, { c: categoryId });
    expect(created.data.createProduct.product).toMatchObject({ currency: "USD", isActive: true, category: { name: "Apparel" } });
    const dup = await as("admin", `mutation { createProduct(input: { product: { sku: "hoodie-1", name: "Again", unitPrice: "1" } }) { product { rowId } } }`);
    expect([code(dup), field(dup)]).toEqual(["CONFLICT", "sku"]);
    const badTax = await as("manager", `mutation { createProduct(input: { product: { sku: "T", name: "T", unitPrice: "1", taxRate: "150" } }) { product { rowId } } }`);
    expect([code(badTax), field(badTax)]).toEqual(["VALIDATION", "taxRate"]);
    expect(code(await as("rep", `mutation { createProduct(input: { product: { sku: "NOPE", name: "Nope", unitPrice: "1" } }) { product { rowId } } }`))).toBe("FORBIDDEN");
    const id = created.data.createProduct.product.rowId;
    const repSees = await as("rep", `query ($id: UUID!) { product(rowId: $id) { sku } }`, { id });
    expect(repSees.data.product).toEqual({ sku: "HOODIE-1" });
    // Inactive products are the managers' business.
    await as("manager", `mutation ($id: UUID!) { updateProduct(input: { rowId: $id, patch: { isActive: false } }) { product { isActive } } }`, { id });
    expect((await as("rep", `query ($id: UUID!) { product(rowId: $id) { sku } }`, { id })).data.product).toBeNull();
    expect((await as("manager", `query ($id: UUID!) { product(rowId: $id) { sku isActive } }`, { id })).data.product).toEqual({ sku: "HOODIE-1", isActive: false });
    const repEdit = await as("rep", `mutation ($id: UUID!) { updateProduct(input: { rowId: $id, patch: { name: "x" } }) { product { name } } }`, { id });
    expect(repEdit.data?.updateProduct?.product ?? null).toBeNull();
  });

  test("deleting a product hides it and needs products:delete; a deleted product cannot be ordered; restore brings it back", async () => {
    const id = await product(db, org.id, { sku: "GONE", price: "2" });
    expect(code(await as("rep", `mutation ($id: UUID!) { deleteProduct(input: { id: $id }) { result { rowId } } }`, { id }))).toBe("FORBIDDEN");
    const del = await as("manager", `mutation ($id: UUID!) { deleteProduct(input: { id: $id }) { result { deletedAt } } }`, { id });
    expect(del.data.deleteProduct.result.deletedAt).toBeTruthy();
    expect((await as("manager", `query ($id: UUID!) { product(rowId: $id) { sku } }`, { id })).data.product).toBeNull();
    const c = await customer(db, org.id, users.manager, "Deleted product buyer");
    const res = await order("manager", c, [line(id, 1)]);
    expect([code(res), field(res)]).toEqual(["VALIDATION", "items[0].productId"]);
    const restored = await as("manager", `mutation ($id: UUID!) { restoreProduct(input: { id: $id }) { result { sku deletedAt } } }`, { id });
    expect(restored.data.restoreProduct.result).toEqual({ sku: "GONE", deletedAt: null });
    expect(code(await as("manager", `mutation ($id: UUID!) { deleteProduct(input: { id: $id }) { result { rowId } } }`, { id: other.productId }))).toBe("NOT_FOUND");
  });
});

describe("createOrder: totals exact to the cent", () => {
  let buyer: string;
  beforeAll(async () => {
    buyer = await customer(db, org.id, users.manager, "Awkward Cases Ltd");
  });
  const totals = (b: Body) => {
    const r = b.data.createOrder.result;
    return { subtotal: r.subtotal, discountTotal: r.discountTotal, taxTotal: r.taxTotal, finalAmount: r.finalAmount };
  };

  test("three items at 0.333: each line is rounded once (0.33), so the order is 0.99, not 1.00", async () => {
    const res = await order("manager", buyer, [line(p.thirds, 1), line(p.thirds, 1), line(p.thirds, 1)]);
    expect(res.errors).toBeUndefined();
    expect(res.data.createOrder.result.orderItems.nodes.map((n: { lineSubtotal: string }) => n.lineSubtotal)).toEqual(["0.33", "0.33", "0.33"]);
    expect(totals(res)).toEqual({ subtotal: "0.99", discountTotal: "0.00", taxTotal: "0.00", finalAmount: "0.99" });
  });

  test("tax is rounded per line: three lines of 1.00 at 33.3 % pay 0.33 each (0.99), not round(0.999) = 1.00", async () => {
    const res = await order("manager", buyer, [line(p.one, 1), line(p.one, 1), line(p.one, 1)]);
    expect(res.data.createOrder.result.orderItems.nodes.map((n: { taxAmount: string }) => n.taxAmount)).toEqual(["0.33", "0.33", "0.33"]);
    expect(totals(res)).toEqual({ subtotal: "3.00", discountTotal: "0.00", taxTotal: "0.99", finalAmount: "3.99" });
  });

  test("half a cent rounds up (half-up, not half-even): 0.10 at 5 % is 0.01 of tax", async () => {
    const res = await order("manager", buyer, [line(p.dime, 1)]);
    expect(totals(res)).toEqual({ subtotal: "0.10", discountTotal: "0.00", taxTotal: "0.01", finalAmount: "0.11" });
  });

  test("mixed rates: 3 × 19.99 at 19 %, 5.00 at 7 %, 7 × 0.01 at 0 %", async () => {
    const res = await order("manager", buyer, [line(p.shirt, 3), line(p.book, 1), line(p.sticker, 7)]);
    const items = res.data.createOrder.result.orderItems.nodes;
    expect(items.map((n: { lineSubtotal: string; taxAmount: string; lineTotal: string }) => [n.lineSubtotal, n.taxAmount, n.lineTotal])).toEqual([
      ["59.97", "11.39", "71.36"],
      ["5.00", "0.35", "5.35"],
      ["0.07", "0.00", "0.07"],
    ]);
    expect(totals(res)).toEqual({ subtotal: "65.04", discountTotal: "0.00", taxTotal: "11.74", finalAmount: "76.78" });
  });

  test("percent and fixed promotions, best first, and a redeemed-points line, spread over mixed rates", async () => {
    // 15 % (assigned to the customer) and 10.00 off (a code); 250 points at 0.01 = 2.50.
    const buyer = await customer(db, org.id, users.manager, "Promotions Ltd");
    const pct = (await db.owner.query(
      "insert into crm.promotions (organization_id, name, discount_type, discount_value) values ($1, '15 percent', 'percent', 15) returning id",
      [org.id],
    )).rows[0].id;
    await db.owner.query("insert into crm.promotions (organization_id, name, code, discount_type, discount_value, currency) values ($1, 'Ten off', 'TENOFF', 'fixed_amount', 10, 'USD')", [org.id]);
    await as("manager", `mutation ($c: UUID!, $p: UUID!) { assignPromotion(input: { customerId: $c, promotionId: $p }) { result { rowId } } }`, { c: buyer, p: pct });
    await as("admin", `mutation ($c: UUID!) { adjustLoyaltyPoints(input: { customerId: $c, points: 1000, note: "Welcome gift" }) { result { balanceAfter } } }`, { c: buyer });
    const res = await order("manager", buyer, [line(p.jacket, 2), line(p.cap, 1), line(p.pin, 3)], { codes: ["tenoff"], points: 250 });
    expect(res.errors).toBeUndefined();
    const r = res.data.createOrder.result;
    // Lines 91.00, 9.99, 9.99 (110.98). 15 % = 16.65 → 13.65 / 1.50 / 1.50; then 10.00 → 8.20 / 0.90 / 0.90;
    // then 2.50 → 2.05 / 0.23 / 0.22. Tax on what is left: 67.10 × 20 % = 13.42, 7.36 × 5 % = 0.368 → 0.37, 0.
    expect(r.orderDiscounts.nodes).toEqual([
      { position: 1, kind: "promotion", code: null, points: null, amount: "16.65" },
      { position: 2, kind: "promotion", code: "TENOFF", points: null, amount: "10.00" },
      { position: 3, kind: "points", code: null, points: 250, amount: "2.50" },
    ]);
    expect(r.orderItems.nodes.map((n: { lineDiscount: string; taxAmount: string; lineTotal: string }) => [n.lineDiscount, n.taxAmount, n.lineTotal])).toEqual([
      ["23.90", "13.42", "80.52"],
      ["2.63", "0.37", "7.73"],
      ["2.62", "0.00", "7.37"],
    ]);
    expect(totals(res)).toEqual({ subtotal: "110.98", discountTotal: "29.15", taxTotal: "13.79", finalAmount: "95.62" });
    // Points: 250 redeemed; floor(81.83 × 1 point per unit × Bronze 1.0) = 81 earned.
    expect([r.pointsRedeemed, r.pointsEarned]).toEqual([250, 81]);
    const ledger = await as("manager", `query ($c: UUID!) { customer(rowId: $c) { loyaltyBalance loyaltyLedgers(orderBy: ROW_ID_ASC) { nodes { delta reason balanceAfter } } } }`, { c: buyer });
    expect(ledger.data.customer.loyaltyLedgers.nodes).toEqual([
      { delta: 1000, reason: "adjust", balanceAfter: 1000 },
      { delta: -250, reason: "redeem", balanceAfter: 750 },
      { delta: 81, reason: "order", balanceAfter: 831 },
    ]);
    expect(ledger.data.customer.loyaltyBalance).toBe(831);
    // Both promotions are used: the assignment, and a `code` assignment made on the spot.
    const used = await db.owner.query("select source, order_id from crm.customer_promotions where customer_id = $1 and used_at is not null order by source", [buyer]);
    expect(used.rows).toEqual([{ source: "code", order_id: r.rowId }, { source: "manual", order_id: r.rowId }]);
    expect((await db.owner.query("select sum(times_used)::int as n from crm.promotions where organization_id = $1", [org.id])).rows[0].n).toBe(2);
  });

  test("a fully discounted order is paid at once", async () => {
    await db.owner.query("insert into crm.promotions (organization_id, name, code, discount_type, discount_value) values ($1, 'Free', 'FREE100', 'percent', 100)", [org.id]);
    const res = await order("manager", buyer, [line(p.book, 2)], { codes: ["FREE100"] });
    expect(res.data.createOrder.result).toMatchObject({ status: "paid", finalAmount: "0.00", discountTotal: "10.00", taxTotal: "0.00" });
  });
});

describe("createOrder: idempotency, refusals, numbering", () => {
  let buyer: string;
  beforeAll(async () => {
    buyer = await customer(db, org.id, users.manager, "Retry Corp");
  });

  test("replaying the idempotency key returns the first order and writes nothing; other input under it is a conflict", async () => {
    const vars = { c: buyer, items: [line(p.book, 2)], key: "checkout-42" };
    const first = await as("manager", CREATE_ORDER, vars);
    const before = await commerceCounts(db, org.id);
    const again = await as("manager", CREATE_ORDER, vars);
    expect(again.data.createOrder.result).toEqual(first.data.createOrder.result);
    expect(await commerceCounts(db, org.id)).toEqual(before);
    const changed = await as("manager", CREATE_ORDER, { ...vars, items: [line(p.book, 3)] });
    expect([code(changed), field(changed)]).toEqual(["CONFLICT", "idempotencyKey"]);
    expect(await commerceCounts(db, org.id)).toEqual(before);
  });

  test.each([
    ["an unknown product", () => [line("00000000-0000-4000-8000-000000000000", 1)], "items[0].productId"],
    ["a zero quantity", () => [line(p.book, 1), line(p.book, 0)], "items[1].quantity"],
    ["a negative quantity", () => [line(p.book, -2)], "items[0].quantity"],
    ["an inactive product", () => [line(p.old, 1)], "items[0].productId"],
    ["another tenant's product", () => [line(other.productId, 1)], "items[0].productId"],
    ["two currencies", () => [line(p.book, 1), line(p.euro, 1)], "items[1].productId"],
    ["no items", () => [], "items"],
  ])("%s is VALIDATION with the field, and nothing is written", async (_what, items, expectedField) => {
    const before = await commerceCounts(db, org.id);
    const res = await order("manager", buyer, items());
    expect([code(res), field(res)]).toEqual(["VALIDATION", expectedField]);
    expect(await commerceCounts(db, org.id)).toEqual(before);
  });

  test("an unknown or foreign promotion code is VALIDATION on promotionCodes", async () => {
    const before = await commerceCounts(db, org.id);
    for (const c of ["NO-SUCH-CODE", "WELCOME" /* elsewhere's code */]) {
      const res = await order("manager", buyer, [line(p.book, 1)], { codes: [c] });
      expect([code(res), field(res)]).toEqual(["VALIDATION", "promotionCodes"]);
    }
    expect(await commerceCounts(db, org.id)).toEqual(before);
  });

  test("prices are the product's unless the caller holds orders:override_price", async () => {
    const c = await customer(db, org.id, users.rep, "Rep's customer");
    const refused = await order("rep", c, [line(p.book, 1, "4.00")]);
    expect([code(refused), field(refused)]).toEqual(["FORBIDDEN", "items[0].unitPrice"]);
    // Quoting the product's own price is not an override.
    expect((await order("rep", c, [line(p.book, 1, "5.00")])).errors).toBeUndefined();
    const cheaper = await order("manager", c, [line(p.book, 2, "4.125")]);
    expect(cheaper.data.createOrder.result.orderItems.nodes[0]).toMatchObject({ listPrice: "5.0000", unitPrice: "4.1250", lineSubtotal: "8.25" });
  });

  test("order numbers are gapless per year: a refused order takes no number", async () => {
    const c = await customer(db, org.id, users.manager, "Numbered");
    const a = await order("manager", c, [line(p.book, 1)]);
    await order("manager", c, [line(p.old, 1)]);
    const b = await order("manager", c, [line(p.book, 1)]);
    const n = (s: string) => Number(s.split("-")[2]);
    expect(a.data.createOrder.result.orderNumber).toMatch(new RegExp(`^ORD-${year}-\\d{6}$`));
    expect(n(b.data.createOrder.result.orderNumber)).toBe(n(a.data.createOrder.result.orderNumber) + 1);
  });
});

describe("payments, refunds, cancellation", () => {
  const PAY = `mutation ($o: UUID!, $a: BigFloat!, $m: String!, $k: String) { recordPayment(input: { orderId: $o, amount: $a, method: $m, idempotencyKey: $k }) {
    result { kind amount order { status paidAmount paidAt } } } }`;
  const REFUND = `mutation ($o: UUID!, $a: BigFloat) { refundOrder(input: { orderId: $o, amount: $a, reason: "damaged" }) {
    result { status paidAmount refundedAmount pointsEarned pointsReversed } } }`;

  test("recordPayment keeps the paid amount and status right; over-payment is refused; the history is on the customer", async () => {
    const c = await customer(db, org.id, users.manager, "Payer");
    const o = (await order("manager", c, [line(p.shirt, 1)])).data.createOrder.result; // 19.99 + 3.80 = 23.79
    expect(o.finalAmount).toBe("23.79");
    const part = await as("manager", PAY, { o: o.rowId, a: "10.00", m: "cash", k: "pay-1" });
    expect(part.data.recordPayment.result).toMatchObject({ kind: "payment", amount: "10.00", order: { status: "partially_paid", paidAmount: "10.00", paidAt: null } });
    // A retried payment with the same key is recorded once.
    const retry = await as("manager", PAY, { o: o.rowId, a: "10.00", m: "cash", k: "pay-1" });
    expect(retry.data.recordPayment.result.order.paidAmount).toBe("10.00");
    const over = await as("manager", PAY, { o: o.rowId, a: "13.80", m: "card" });
    expect([code(over), field(over)]).toEqual(["VALIDATION", "amount"]);
    expect(code(await as("manager", PAY, { o: o.rowId, a: "1.005", m: "card" }))).toBe("VALIDATION");
    expect(field(await as("manager", PAY, { o: o.rowId, a: "1", m: "bitcoin" }))).toBe("method");
    const rest = await as("manager", PAY, { o: o.rowId, a: "13.79", m: "card" });
    expect(rest.data.recordPayment.result.order).toMatchObject({ status: "paid", paidAmount: "23.79" });
    expect(rest.data.recordPayment.result.order.paidAt).toBeTruthy();
    expect(code(await as("manager", PAY, { o: o.rowId, a: "0.01", m: "card" }))).toBe("INVALID_STATE");
    const history = await as("manager", `query ($c: UUID!) { customer(rowId: $c) {
      orders { totalCount nodes { orderNumber status } }
      transactions(orderBy: RECEIVED_AT_ASC) { nodes { kind method amount currency } } } }`, { c });
    expect(history.data.customer.orders.totalCount).toBe(1);
    expect(history.data.customer.transactions.nodes).toEqual([
      { kind: "payment", method: "cash", amount: "10.00", currency: "USD" },
      { kind: "payment", method: "card", amount: "13.79", currency: "USD" },
    ]);
    const events = await as("manager", `query ($o: UUID!) { order(rowId: $o) { orderEvents(orderBy: ROW_ID_ASC) { nodes { event status amount } } } }`, { o: o.rowId });
    expect(events.data.order.orderEvents.nodes.map((e: { event: string }) => e.event)).toEqual(["created", "payment", "partially_paid", "payment", "paid"]);
  });

  test("refundOrder: partial refunds keep the order paid and take points back in proportion; the full refund ends it", async () => {
    const c = await customer(db, org.id, users.manager, "Refunded");
    const o = (await order("manager", c, [line(p.jacket, 2)])).data.createOrder.result; // 91.00 + 18.20 = 109.20; 91 points
    expect(o.pointsEarned).toBe(91);
    expect(code(await as("manager", REFUND, { o: o.rowId }))).toBe("INVALID_STATE"); // nothing paid yet
    await as("manager", PAY, { o: o.rowId, a: "109.20", m: "card" });
    const part = await as("manager", REFUND, { o: o.rowId, a: "54.60" });
    expect(part.data.refundOrder.result).toEqual({ status: "paid", paidAmount: "109.20", refundedAmount: "54.60", pointsEarned: 91, pointsReversed: 45 });
    const tooMuch = await as("manager", REFUND, { o: o.rowId, a: "54.61" });
    expect([code(tooMuch), field(tooMuch)]).toEqual(["VALIDATION", "amount"]);
    const rest = await as("manager", REFUND, { o: o.rowId });
    expect(rest.data.refundOrder.result).toEqual({ status: "refunded", paidAmount: "109.20", refundedAmount: "109.20", pointsEarned: 91, pointsReversed: 91 });
    expect(code(await as("manager", REFUND, { o: o.rowId }))).toBe("INVALID_STATE");
    expect(code(await as("manager", PAY, { o: o.rowId, a: "1", m: "card" }))).toBe("INVALID_STATE");
    const ledger = await db.owner.query("select delta, reason from crm.loyalty_ledger where customer_id = $1 order by id", [c]);
    expect(ledger.rows).toEqual([{ delta: 91, reason: "order" }, { delta: -45, reason: "refund" }, { delta: -46, reason: "refund" }]);
    const tx = await db.owner.query("select kind, method, amount::text from crm.transactions where order_id = $1 order by created_at, kind", [o.rowId]);
    expect(tx.rows).toEqual([{ kind: "payment", method: "card", amount: "109.20" }, { kind: "refund", method: "card", amount: "54.60" }, { kind: "refund", method: "card", amount: "54.60" }]);
  });

  test("cancelOrder: a pending order is undone (points back, promotion freed); a paid one must be refunded", async () => {
    const c = await customer(db, org.id, users.manager, "Canceller");
    await as("admin", `mutation ($c: UUID!) { adjustLoyaltyPoints(input: { customerId: $c, points: 500, note: "gift" }) { result { rowId } } }`, { c });
    const promo = (await db.owner.query(
      "insert into crm.promotions (organization_id, name, code, discount_type, discount_value, usage_limit) values ($1, 'Once', 'ONCE', 'percent', 10, 1) returning id",
      [org.id],
    )).rows[0].id;
    const o = (await order("manager", c, [line(p.jacket, 1)], { codes: ["ONCE"], points: 200 })).data.createOrder.result;
    expect((await db.owner.query("select times_used from crm.promotions where id = $1", [promo])).rows[0].times_used).toBe(1);
    const cancelled = await as("manager", `mutation ($o: UUID!) { cancelOrder(input: { orderId: $o, reason: "changed mind" }) { result { status cancelReason pointsReversed } } }`, { o: o.rowId });
    expect(cancelled.data.cancelOrder.result).toEqual({ status: "cancelled", cancelReason: "changed mind", pointsReversed: o.pointsEarned });
    const balance = await as("manager", `query ($c: UUID!) { customer(rowId: $c) { loyaltyBalance } }`, { c });
    expect(balance.data.customer.loyaltyBalance).toBe(500);
    expect((await db.owner.query("select times_used from crm.promotions where id = $1", [promo])).rows[0].times_used).toBe(0);
    // The freed single-use promotion serves the next order.
    const next = await order("manager", c, [line(p.jacket, 1)], { codes: ["ONCE"] });
    expect(next.data.createOrder.result.discountTotal).toBe("4.55");
    await as("manager", PAY, { o: next.data.createOrder.result.rowId, a: "1.00", m: "cash" });
    const paid = await as("manager", `mutation ($o: UUID!) { cancelOrder(input: { orderId: $o }) { result { status } } }`, { o: next.data.createOrder.result.rowId });
    expect(code(paid)).toBe("INVALID_STATE");
    expect(code(await as("manager", `mutation ($o: UUID!) { cancelOrder(input: { orderId: $o }) { result { status } } }`, { o: o.rowId }))).toBe("INVALID_STATE");
  });

  test("a customer with orders can be deleted and restored, but never purged", async () => {
    const c = await customer(db, org.id, users.manager, "Purge me");
    await order("manager", c, [line(p.book, 1)]);
    expect((await as("admin", `mutation ($id: UUID!) { deleteCustomer(input: { id: $id }) { result { deletedAt } } }`, { id: c })).errors).toBeUndefined();
    const purge = await as("admin", `mutation ($id: UUID!) { purgeCustomer(input: { id: $id }) { result } } `, { id: c });
    expect([code(purge), field(purge)]).toEqual(["INVALID_STATE", "id"]);
    expect((await db.owner.query("select count(*)::int as n from crm.orders where customer_id = $1", [c])).rows[0].n).toBe(1);
  });

  test("the status machine holds for every writer, and an order's totals never change", async () => {
    const c = await customer(db, org.id, users.manager, "Machine");
    const o = (await order("manager", c, [line(p.book, 1)])).data.createOrder.result;
    const illegal = await sqlError(db.owner.query("update crm.orders set status = 'refunded' where id = $1", [o.rowId]));
    expect(illegal.code).toBe("CRSTA");
    const totals = await sqlError(db.owner.query("update crm.orders set final_amount = 1, subtotal = 1, tax_total = 0 where id = $1", [o.rowId]));
    expect(totals.code).toBe("CRSTA");
    const notes = await as("manager", `mutation ($o: UUID!) { updateOrder(input: { rowId: $o, patch: { notes: "Gift wrap" } }) { order { notes } } }`, { o: o.rowId });
    expect(notes.errors).toBeUndefined();
    expect(notes.data.updateOrder.order.notes).toBe("Gift wrap");
  });
});

describe("another organization's records can never be referenced", () => {
  test("customer, product, promotion, level and order ids of another organization are refused and write nothing", async () => {
    const c = await customer(db, org.id, users.manager, "Local");
    const before = await commerceCounts(db, org.id);
    const foreignCustomer = await order("admin", other.customerId, [line(p.book, 1)]);
    expect([code(foreignCustomer), field(foreignCustomer)]).toEqual(["NOT_FOUND", "customerId"]);
    const foreignProduct = await order("admin", c, [line(other.productId, 1)]);
    expect([code(foreignProduct), field(foreignProduct)]).toEqual(["VALIDATION", "items[0].productId"]);
    const foreignPromotion = await as("admin", `mutation ($c: UUID!, $p: UUID!) { assignPromotion(input: { customerId: $c, promotionId: $p }) { result { rowId } } }`, { c, p: other.promotionId });
    expect([code(foreignPromotion), field(foreignPromotion)]).toEqual(["NOT_FOUND", "promotionId"]);
    const foreignLevel = await as("admin", `mutation ($c: UUID!, $l: UUID!) { setCustomerLevel(input: { customerId: $c, levelId: $l, reason: "x" }) { result { rowId } } }`, {
      c, l: await level(db, other.id, "Gold"),
    });
    expect([code(foreignLevel), field(foreignLevel)]).toEqual(["NOT_FOUND", "levelId"]);
    for (const m of [
      `mutation ($o: UUID!) { recordPayment(input: { orderId: $o, amount: "1", method: "cash" }) { result { rowId } } }`,
      `mutation ($o: UUID!) { refundOrder(input: { orderId: $o }) { result { rowId } } }`,
      `mutation ($o: UUID!) { cancelOrder(input: { orderId: $o }) { result { rowId } } }`,
    ]) {
      const res = await as("admin", m, { o: other.orderId });
      expect([code(res), field(res)]).toEqual(["NOT_FOUND", "orderId"]);
    }
    expect((await as("admin", `query ($o: UUID!) { order(rowId: $o) { rowId } }`, { o: other.orderId })).data.order).toBeNull();
    // Composite keys: a promotion or product pointing into the other organization is refused too.
    const scoped = await as("admin", `mutation ($p: UUID!) { createPromotion(input: { promotion: { name: "x", discountType: "percent", discountValue: "5", productId: $p } }) { promotion { rowId } } }`, { p: other.productId });
    // Refused by the policy (the product is not one the writer sees) before the composite key would.
    expect(code(scoped)).toBe("FORBIDDEN");
    const categorised = await as("admin", `mutation ($c: UUID!) { createProduct(input: { product: { sku: "X-1", name: "x", unitPrice: "1", categoryId: $c } }) { product { rowId } } }`, {
      c: (await db.owner.query("select id from crm.product_categories where organization_id = $1 limit 1", [other.id])).rows[0].id,
    });
    expect([code(categorised), field(categorised)]).toEqual(["VALIDATION", "categoryId"]);
    const levelCondition = await as("admin", `mutation ($cond: JSON!) { createPromotion(input: { promotion: { name: "x", discountType: "percent", discountValue: "5", condition: $cond } }) { promotion { rowId } } }`, {
      cond: { type: "customer_level", level_id: await level(db, other.id, "Gold") },
    });
    expect([code(levelCondition), field(levelCondition)]).toEqual(["VALIDATION", "condition"]);
    const after = await commerceCounts(db, org.id);
    expect({ ...after, "crm.audit_log": 0 }).toEqual({ ...before, "crm.audit_log": 0 });
  });
});

describe("role matrix of the commerce codes", () => {
  test("default grants: products:* and orders:override_price for Administrator and Sales Manager; loyalty:manage for the Administrator", async () => {
    const { rows } = await db.owner.query(
      `select rp.permission_code as code, array_agg(r.name::text order by r.name) as roles
         from crm.role_permissions rp join crm.roles r on r.id = rp.role_id
        where r.organization_id = $1 and not r.is_internal
          and rp.permission_code in ('products:create', 'products:update', 'products:delete', 'orders:override_price', 'loyalty:manage')
        group by 1 order by 1`,
      [org.id],
    );
    expect(rows).toEqual([
      { code: "loyalty:manage", roles: ["Administrator"] },
      { code: "orders:override_price", roles: ["Administrator", "Sales Manager"] },
      { code: "products:create", roles: ["Administrator", "Sales Manager"] },
      { code: "products:delete", roles: ["Administrator", "Sales Manager"] },
      { code: "products:update", roles: ["Administrator", "Sales Manager"] },
    ]);
  });

  test("a Sales Representative orders for their own customers, sees the orders they entered, and cannot take payments", async () => {
    const mine = await customer(db, org.id, users.rep, "Rep Own");
    const managers = await customer(db, org.id, users.manager, "Manager Own");
    const placed = await order("rep", mine, [line(p.book, 1)]);
    expect(placed.errors).toBeUndefined();
    const hidden = await order("rep", managers, [line(p.book, 1)]);
    expect([code(hidden), field(hidden)]).toEqual(["NOT_FOUND", "customerId"]);
    const byManager = await order("manager", mine, [line(p.cap, 1)]);
    const seen = await as("rep", `{ orders { nodes { rowId } } }`);
    const ids = seen.data.orders.nodes.map((n: { rowId: string }) => n.rowId);
    expect(ids).toContain(placed.data.createOrder.result.rowId);
    expect(ids).not.toContain(byManager.data.createOrder.result.rowId);
    const pay = await as("rep", `mutation ($o: UUID!) { recordPayment(input: { orderId: $o, amount: "1", method: "cash" }) { result { rowId } } }`, { o: placed.data.createOrder.result.rowId });
    expect(code(pay)).toBe("FORBIDDEN");
    // Another representative sees none of it.
    expect((await as("rep2", `{ orders { totalCount } }`)).data.orders.totalCount).toBe(0);
  });

  test("a Viewer reads every order and cannot create one; levels and points by hand are the Administrator's", async () => {
    const c = await customer(db, org.id, users.manager, "Viewed");
    const all = (await db.owner.query("select count(*)::int as n from crm.orders where organization_id = $1", [org.id])).rows[0].n;
    expect((await as("viewer", `{ orders { totalCount } }`)).data.orders.totalCount).toBe(all);
    expect(code(await order("viewer", c, [line(p.book, 1)]))).toBe("FORBIDDEN");
    const gold = await level(db, org.id, "Gold");
    const setLevel = `mutation ($c: UUID!, $l: UUID!) { setCustomerLevel(input: { customerId: $c, levelId: $l, reason: "VIP" }) { result { level { name } levelSetByHand } } }`;
    expect(code(await as("manager", setLevel, { c, l: gold }))).toBe("FORBIDDEN");
    expect((await as("admin", setLevel, { c, l: gold })).data.setCustomerLevel.result).toEqual({ level: { name: "Gold" }, levelSetByHand: true });
    expect(code(await as("manager", `mutation ($c: UUID!) { adjustLoyaltyPoints(input: { customerId: $c, points: 5, note: "x" }) { result { rowId } } }`, { c }))).toBe("FORBIDDEN");
  });
});

describe("orders list", () => {
  test("orders aggregate per currency", async () => {
    const c = await customer(db, org.id, users.manager, "Euro buyer");
    await order("manager", c, [line(p.euro, 2)]);
    const res = await as("manager", `{ orders(filter: { status: { notEqualTo: "cancelled" } }) { groupedAggregates(groupBy: [CURRENCY]) { keys sum { finalAmount } } } }`);
    const byCurrency = Object.fromEntries(res.data.orders.groupedAggregates.map((g: { keys: string[]; sum: { finalAmount: string } }) => [g.keys[0], g.sum.finalAmount]));
    expect(byCurrency.EUR).toBe("20.00");
    expect(Number(byCurrency.USD)).toBeGreaterThan(0);
  });
});
