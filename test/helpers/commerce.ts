// Commerce fixtures written as the owner, and the GraphQL documents the commerce tests share.
import type { TestDb } from "./db.ts";

export async function product(
  db: TestDb,
  orgId: string,
  fields: { sku: string; price: string | number; tax?: string | number; currency?: string; active?: boolean; categoryId?: string; name?: string },
): Promise<string> {
  const { rows } = await db.owner.query(
    `insert into crm.products (organization_id, sku, name, unit_price, tax_rate, currency, is_active, category_id)
     values ($1, $2, $3, $4, $5, $6, $7, $8) returning id`,
    [orgId, fields.sku, fields.name ?? fields.sku, fields.price, fields.tax ?? 0, fields.currency ?? "USD", fields.active ?? true, fields.categoryId ?? null],
  );
  return rows[0].id;
}

export async function customer(db: TestDb, orgId: string, ownerId: string, name: string, extra: { referredById?: string } = {}): Promise<string> {
  const { rows } = await db.owner.query(
    "insert into crm.customers (organization_id, name, owner_id, referred_by_id) values ($1, $2, $3, $4) returning id",
    [orgId, name, ownerId, extra.referredById ?? null],
  );
  return rows[0].id;
}

export async function level(db: TestDb, orgId: string, name: string): Promise<string> {
  const { rows } = await db.owner.query("select id from crm.customer_levels where organization_id = $1 and name = $2", [orgId, name]);
  return rows[0].id;
}

/** The fields of an order the tests read back. */
export const ORDER = `rowId orderNumber status currency subtotal discountTotal taxTotal finalAmount paidAmount refundedAmount
  pointsEarned pointsRedeemed pointsReversed
  orderItems(orderBy: LINE_NO_ASC) { nodes { lineNo sku quantity listPrice unitPrice taxRate lineSubtotal lineDiscount taxAmount lineTotal } }
  orderDiscounts(orderBy: POSITION_ASC) { nodes { position kind code points amount } }`;

export const CREATE_ORDER = `mutation ($c: UUID!, $items: [OrderLineInput]!, $key: String!, $codes: [String], $points: Int, $deal: UUID) {
  createOrder(input: { customerId: $c, items: $items, idempotencyKey: $key, promotionCodes: $codes, redeemPoints: $points, dealId: $deal }) {
    result { ${ORDER} } } }`;

/** Row counts of every table an order writes to, for "nothing was written" assertions. */
export async function commerceCounts(db: TestDb, orgId: string): Promise<Record<string, number>> {
  const tables = [
    "crm.orders", "crm.order_items", "crm.order_discounts", "crm.order_events", "crm.transactions", "crm.loyalty_ledger",
    "crm.customer_promotions", "crm.audit_log",
  ];
  const counts: Record<string, number> = {};
  for (const t of tables) counts[t] = (await db.owner.query(`select count(*)::int as n from ${t} where organization_id = $1`, [orgId])).rows[0].n;
  counts.timesUsed = (await db.owner.query("select coalesce(sum(times_used), 0)::int as n from crm.promotions where organization_id = $1", [orgId])).rows[0].n;
  counts.numbers = (await db.owner.query("select coalesce(sum(last_value), 0)::int as n from crm_private.order_number_counters where organization_id = $1", [orgId])).rows[0].n;
  return counts;
}
