// Finance fixtures and the GraphQL documents the finance tests share.
import type { TestDb } from "./db.ts";

export type Body = { data?: any; errors?: { message: string; extensions?: Record<string, unknown> }[] };

/** The fields of an invoice the tests read back. */
export const INVOICE = `rowId number status customerId currency issueDate dueDate subtotal taxTotal total creditedAmount amountPaid balance
  notes voidReason billingSnapshot
  invoiceItems(orderBy: LINE_NO_ASC) { nodes { lineNo description quantity unitPrice taxRate lineSubtotal taxAmount lineTotal } }`;

export const CREATE_INVOICE = `mutation ($c: UUID!, $items: [InvoiceLineInput]!, $currency: String) {
  createInvoice(input: { customerId: $c, items: $items, currency: $currency }) { result { ${INVOICE} } } }`;

/** Runs SQL in one committed transaction as a member (claims set like the API sets them). */
export async function asMember<T = any>(db: TestDb, orgId: string, userId: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = await db.owner.connect();
  try {
    await c.query("begin");
    await c.query("select set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)", [userId, orgId]);
    const r = await c.query(sql, params);
    await c.query("commit");
    return r.rows as T[];
  } catch (e) {
    await c.query("rollback");
    throw e;
  } finally {
    c.release();
  }
}

/** An issued invoice of one line, written through the business functions as `userId`. */
export async function issuedInvoice(
  db: TestDb,
  orgId: string,
  userId: string,
  customerId: string,
  opts: { amount?: string; issueDate?: string; dueDate?: string; currency?: string } = {},
): Promise<{ id: string; number: string }> {
  const [d] = await asMember(db, orgId, userId, "select (crm.create_invoice($1, array[row('Services', 1, $2::numeric, 0, null)::crm.invoice_line], $3)).id", [
    customerId, opts.amount ?? "100.00", opts.currency ?? null,
  ]);
  const [i] = await asMember(db, orgId, userId, "select id, number from crm.issue_invoice($1, $2::date, $3::date)", [d.id, opts.issueDate ?? null, opts.dueDate ?? null]);
  return i;
}
