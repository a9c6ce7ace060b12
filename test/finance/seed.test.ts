// The demo generator's finance part (src/db/seed-finance.ts): seed 002's 500 invoices in the demo
// organization, obeying what issueInvoice, recordInvoicePayment and creditInvoice enforce, with
// gapless numbers the next issueInvoice continues; and expenses.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { DEFAULT_VOLUME, seedDemoData } from "../../src/db/seed-demo.ts";
import { issuedInvoice } from "../helpers/finance.ts";

let db: TestDb;
let org: TestOrg;
let seedMs: number;
const logs: string[] = [];
const count = async (sql: string, params: unknown[] = [org.id]) => (await db.owner.query(sql, params)).rows[0].n as number;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "seeded-books");
  const t0 = Date.now();
  await seedDemoData(db.owner, org.id, { seed: 5, log: (m) => logs.push(m) });
  seedMs = Date.now() - t0;
});
afterAll(async () => {
  await db?.drop();
});

describe("invoices", () => {
  test(`${DEFAULT_VOLUME.invoices} invoices whose lines add up to their totals, every status represented`, async () => {
    expect(DEFAULT_VOLUME.invoices).toBe(500);
    expect(await count("select count(*)::int as n from crm.invoices where organization_id = $1")).toBe(500);
    expect(
      await count(`select count(*)::int as n from crm.invoices i
                     cross join lateral (select sum(line_subtotal) as s, sum(tax_amount) as t from crm.invoice_items x where x.invoice_id = i.id) l
                    where organization_id = $1 and (i.subtotal is distinct from l.s or i.tax_total is distinct from l.t or i.total <> l.s + l.t)`),
    ).toBe(0);
    expect(await count("select count(*)::int as n from crm.invoice_items where organization_id = $1 and line_subtotal <> round(quantity * unit_price, 2)")).toBe(0);
    expect(
      await count(`select count(*)::int as n from crm.invoices i where organization_id = $1
                    and amount_paid <> coalesce((select sum(amount) from crm.invoice_payments p where p.invoice_id = i.id), 0)`),
    ).toBe(0);
    const statuses = (await db.owner.query("select distinct status from crm.invoices where organization_id = $1 order by 1", [org.id])).rows.map((r) => r.status);
    expect(statuses).toEqual(["draft", "issued", "overdue", "paid", "partially_paid", "void"]);
    expect(await count("select count(*)::int as n from crm.invoices where organization_id = $1 and status = 'paid' and balance > 0")).toBe(0);
    expect(await count("select count(*)::int as n from crm.invoices where organization_id = $1 and status <> 'draft' and (billing_snapshot is null or billing_snapshot->'items' is null)")).toBe(0);
    expect(await count("select count(*)::int as n from crm.credit_notes where organization_id = $1")).toBeGreaterThan(0);
  });

  test("numbers are gapless per year from 0001, and issueInvoice continues them", async () => {
    const gaps = await db.owner.query(
      `select split_part(number, '-', 2) as year, count(*)::int as n, max(split_part(number, '-', 3)::int) as last, min(split_part(number, '-', 3)::int) as first
         from crm.invoices where organization_id = $1 and number is not null group by 1 order by 1`,
      [org.id],
    );
    expect(gaps.rows.length).toBeGreaterThanOrEqual(2);
    for (const r of gaps.rows) expect([r.first, r.last]).toEqual([1, r.n]);
    const year = new Date().getFullYear();
    const last = gaps.rows.find((r) => Number(r.year) === year)!;
    const customer = (await db.owner.query("select id from crm.customers where organization_id = $1 limit 1", [org.id])).rows[0].id;
    const next = await issuedInvoice(db, org.id, org.adminId, customer);
    expect(next.number).toBe(`INV-${year}-${String(last.n + 1).padStart(4, "0")}`);
  });

  test("expenses in every workflow state, never approved by their submitter; cheap", async () => {
    expect(await count("select count(*)::int as n from crm.expenses where organization_id = $1")).toBe(DEFAULT_VOLUME.expenses);
    expect(await count("select count(distinct status)::int as n from crm.expenses where organization_id = $1")).toBe(5);
    expect(await count("select count(*)::int as n from crm.expenses where organization_id = $1 and approver_id = submitted_by")).toBe(0);
    console.log(`demo seed with finance: ${seedMs} ms\n${logs.filter((l) => /invoice|credit|expenses|counters/.test(l)).join("\n")}`);
  });
});
