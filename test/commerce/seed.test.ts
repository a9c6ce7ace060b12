// The demo generator's commerce part (src/db/seed-commerce.ts): a catalogue, promotions and an order
// history that obeys the rules createOrder, recordPayment, refundOrder and the loyalty ledger
// enforce, with a long tail of customers, reproducible from the seed.
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { asUser, createTestDb, type TestDb } from "../helpers/db.ts";
import { createOrg, type TestOrg } from "../helpers/identity.ts";
import { DEFAULT_VOLUME, seedDemoData } from "../../src/db/seed-demo.ts";
import { withIndexesRebuilt } from "../../src/db/seed-commerce.ts";

let db: TestDb;
let org: TestOrg;
const count = async (sql: string, params: unknown[] = [org.id]) => (await db.owner.query(sql, params)).rows[0].n as number;

beforeAll(async () => {
  db = await createTestDb();
  org = await createOrg(db, "seeded-shop");
  await seedDemoData(db.owner, org.id, { seed: 11 });
});
afterAll(async () => {
  await db?.drop();
});

describe("catalogue and promotions", () => {
  test("products in categories, with prices, tax rates and audit rows like the triggers write", async () => {
    expect(await count("select count(*)::int as n from crm.products where organization_id = $1")).toBe(DEFAULT_VOLUME.products);
    expect(await count("select count(distinct category_id)::int as n from crm.products where organization_id = $1")).toBe(6);
    expect(await count("select count(*)::int as n from crm.products where organization_id = $1 and (unit_price <= 0 or currency <> 'USD')")).toBe(0);
    for (const table of ["products", "product_categories"]) {
      const rows = await count(`select count(*)::int as n from crm.${table} where organization_id = $1`);
      expect([table, await count("select count(*)::int as n from crm.audit_log where organization_id = $1 and table_name = $2 and operation = 'INSERT'", [org.id, table])]).toEqual([table, rows]);
    }
    expect(await count("select count(*)::int as n from crm.promotions where organization_id = $1 and condition is not null")).toBeGreaterThanOrEqual(4);
  });
});

describe("order history", () => {
  test("the requested number of orders, every one of them with lines whose amounts add up to its totals", async () => {
    expect(await count("select count(*)::int as n from crm.orders where organization_id = $1")).toBe(DEFAULT_VOLUME.orders);
    expect(
      await count(
        `select count(*)::int as n from crm.orders o
           left join (select order_id, sum(line_subtotal) as s, sum(tax_amount) as t, sum(line_total) as f from crm.order_items group by 1) i on i.order_id = o.id
          where o.organization_id = $1 and (o.subtotal, o.tax_total, o.final_amount) is distinct from (i.s, i.t, i.f)`,
      ),
    ).toBe(0);
    expect(
      await count(
        `select count(*)::int as n from crm.order_items i join crm.products p on p.id = i.product_id
          where i.organization_id = $1 and (i.line_subtotal <> round(i.quantity * i.unit_price, 2)
                or i.tax_amount <> round(i.line_subtotal * i.tax_rate / 100, 2) or i.sku <> p.sku or i.tax_rate <> p.tax_rate)`,
      ),
    ).toBe(0);
  });

  test("only buying customers ordered, within their customer years; a long tail; a year-end season", async () => {
    const { rows } = await db.owner.query(
      `select count(*) filter (where c.status not in ('customer', 'churned'))::int as non_buyers,
              count(*) filter (where o.ordered_at < c.created_at or o.ordered_at > now())::int as out_of_time
         from crm.orders o join crm.customers c on c.id = o.customer_id where o.organization_id = $1`,
      [org.id],
    );
    expect(rows[0]).toEqual({ non_buyers: 0, out_of_time: 0 });
    const tail = await db.owner.query(
      `select max(n)::int as top, percentile_cont(0.5) within group (order by n)::float8 as median
         from (select count(*) as n from crm.orders where organization_id = $1 group by customer_id) x`,
      [org.id],
    );
    expect(tail.rows[0].top).toBeGreaterThan(3 * tail.rows[0].median);
    const season = await count(
      `select (100 * count(*) filter (where extract(month from ordered_at) = 12 or (extract(month from ordered_at) = 11 and extract(day from ordered_at) >= 15))
              / count(*))::int as n from crm.orders where organization_id = $1`,
    );
    // 47 of 365 days (13 %) would be no season at all.
    expect(season).toBeGreaterThan(20);
  });

  test("statuses, payments and refunds agree with each other", async () => {
    const statuses = (await db.owner.query("select distinct status from crm.orders where organization_id = $1 order by 1", [org.id])).rows.map((r) => r.status);
    expect(statuses).toEqual(expect.arrayContaining(["cancelled", "paid", "refunded"]));
    expect(
      await count(
        `select count(*)::int as n from crm.orders o where o.organization_id = $1 and (
           o.paid_amount <> coalesce((select sum(t.amount) from crm.transactions t where t.order_id = o.id and t.kind = 'payment'), 0)
           or o.refunded_amount <> coalesce((select sum(t.amount) from crm.transactions t where t.order_id = o.id and t.kind = 'refund'), 0)
           or (o.status = 'paid') <> (o.paid_amount = o.final_amount and o.refunded_amount < o.paid_amount and o.final_amount > 0)
           or (o.status = 'refunded') <> (o.refunded_amount = o.paid_amount and o.paid_amount > 0)
           or (o.status in ('pending', 'cancelled')) <> (o.paid_amount = 0))`,
      ),
    ).toBe(0);
  });

  test("order numbers are gapless per year, and createOrder continues them", async () => {
    expect(
      await count(
        `select count(*)::int as n from (
           select split_part(order_number, '-', 2) as y, split_part(order_number, '-', 3)::int as k,
                  row_number() over (partition by split_part(order_number, '-', 2) order by split_part(order_number, '-', 3)::int) as expected
             from crm.orders where organization_id = $1) x where k <> expected`,
      ),
    ).toBe(0);
    const year = new Date().getUTCFullYear();
    const last = await count(`select coalesce(max(split_part(order_number, '-', 3)::int), 0) as n from crm.orders where organization_id = $1 and order_number like 'ORD-${year}-%'`);
    const buyer = (await db.owner.query("select id from crm.customers where organization_id = $1 and deleted_at is null limit 1", [org.id])).rows[0].id;
    const productId = (await db.owner.query("select id from crm.products where organization_id = $1 and is_active limit 1", [org.id])).rows[0].id;
    const placed = await asUser(db, { sub: org.adminId, org: org.id }, (c) =>
      c.query("select order_number from crm.create_order($1, array[row($2, 1, null)::crm.order_line], 'after-seed')", [buyer, productId]),
    );
    expect(placed.rows[0].order_number).toBe(`ORD-${year}-${String(last + 1).padStart(6, "0")}`);
  });

  test("loyalty: points earned at the customer's level, taken back when cancelled or refunded, a chained ledger, expired as the job would", async () => {
    expect(
      await count(
        `select count(*)::int as n from crm.orders o join crm.customers c on c.id = o.customer_id join crm.customer_levels l on l.id = c.level_id
          where o.organization_id = $1 and o.points_earned <> floor(o.subtotal * l.points_multiplier)`,
      ),
    ).toBe(0);
    expect(await count("select count(*)::int as n from crm.orders where organization_id = $1 and status in ('cancelled', 'refunded') and points_reversed <> points_earned")).toBe(0);
    expect(
      await count(
        `select count(*)::int as n from (
           select balance_after, delta, lag(balance_after) over (partition by customer_id order by id) as previous
             from crm.loyalty_ledger where organization_id = $1) x
          where balance_after <> coalesce(previous, 0) + delta or balance_after < 0`,
      ),
    ).toBe(0);
    expect(await count("select count(*)::int as n from crm.loyalty_ledger where organization_id = $1 and reason = 'expire'")).toBeGreaterThan(0);
    expect((await db.owner.query("select crm_private.expire_loyalty_points($1) as n", [org.id])).rows[0].n).toBe(0);
  });

  test("levels follow the customers' share of the orders: every level is used, Platinum the fewest", async () => {
    const { rows } = await db.owner.query(
      `select l.name::text as name, count(c.id)::int as n, coalesce(avg(x.orders), 0)::float8 as orders
         from crm.customer_levels l left join crm.customers c on c.level_id = l.id
         left join (select customer_id, count(*) as orders from crm.orders group by 1) x on x.customer_id = c.id
        where l.organization_id = $1 group by l.name, l.rank order by l.rank`,
      [org.id],
    );
    expect(rows.map((r) => r.name)).toEqual(["Bronze", "Silver", "Gold", "Platinum"]);
    for (const r of rows) expect(r.n).toBeGreaterThan(0);
    expect(rows[3].n).toBeLessThan(rows[2].n);
    expect(rows[3].orders).toBeGreaterThan(rows[1].orders);
  });

  test("the same seed gives the same history", async () => {
    const volume = { customers: 30, deals: 5, projects: 1, tasks: 10, taskDependencies: 0, workLogs: 5, notes: 5, products: 12, orders: 150 };
    const now = new Date("2026-01-15T12:00:00Z");
    const fingerprint = async (orgId: string) =>
      (await db.owner.query(
        `select string_agg(concat_ws('|', c.name, o.order_number, o.status, o.final_amount, o.ordered_at, o.points_earned,
                                     (select string_agg(i.sku || 'x' || i.quantity, ',' order by i.line_no) from crm.order_items i where i.order_id = o.id)),
                           ';' order by o.order_number)
           from crm.orders o join crm.customers c on c.id = o.customer_id where o.organization_id = $1`,
        [orgId],
      )).rows[0].string_agg as string;
    const a = await createOrg(db, "shop-a");
    const b = await createOrg(db, "shop-b");
    await seedDemoData(db.owner, a.id, { seed: 99, volume, now });
    await seedDemoData(db.owner, b.id, { seed: 99, volume, now });
    const fa = await fingerprint(a.id);
    expect(fa.split(";")).toHaveLength(150);
    expect(await fingerprint(b.id)).toBe(fa);
  });
});

describe("bulk load", () => {
  test("indexes and foreign keys set aside for a large load come back exactly as they were, comments included", async () => {
    const tables = ["crm.orders", "crm.order_items", "crm.transactions", "crm.loyalty_ledger"];
    const shape = async () =>
      (await db.owner.query(
        `select string_agg(x, E'\n' order by x) as s from (
           select pg_get_indexdef(indexrelid) || ' ' || coalesce(obj_description(indexrelid, 'pg_class'), '') as x from pg_index where indrelid = any ($1::regclass[])
           union all
           select conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated || ' ' || coalesce(obj_description(oid, 'pg_constraint'), '')
             from pg_constraint where conrelid = any ($1::regclass[])) y`,
        [tables],
      )).rows[0].s as string;
    const before = await shape();
    expect(before).toContain("@fieldName creator");
    const client = await db.owner.connect();
    try {
      await client.query("begin");
      const logged: string[] = [];
      await withIndexesRebuilt(client, tables, (m) => logged.push(m), async () => {
        const during = await client.query("select count(*)::int as n from pg_index where indrelid = 'crm.orders'::regclass");
        expect(during.rows[0].n).toBe(3); // primary key, (organization_id, id), order number
      });
      expect(logged[0]).toMatch(/indexes built .* foreign keys validated/);
      await client.query("commit");
    } finally {
      client.release();
    }
    expect(await shape()).toBe(before);
  });
});

