// Commerce benchmark: createOrder throughput at 1 and 8 clients beside a plain INSERT of the same
// rows, and salesReport / customerAnalytics latency beside the hand-written SQL that computes the
// same figures (the floor), on an organization seeded like `seed:demo --scale` (about 1,000,000
// orders). Prints tables; asserts nothing.
//
//   node test/bench/commerce.ts [--small]      (on its own: builds a scratch database)
//   npm run bench                              (run.ts calls the default export with its context)
//
// BENCH_SECONDS (default 10) per throughput case, BENCH_ITERATIONS (default 30) per report case,
// BENCH_CLIENTS (default 1,8), BENCH_DATABASE_URL (a superuser URL of another server).
import crypto from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import type { TestDb } from "../helpers/db.ts";
import type { TestServer } from "../helpers/server.ts";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 30);
const CLIENTS = (process.env.BENCH_CLIENTS ?? "1,8").split(",").map(Number);

/** What the commerce cases need from a bench run (the shared bench context has these fields). */
export interface CommerceBenchContext {
  db: Pick<TestDb, "owner" | "ownerUrl" | "authUrl">;
  orgId: string;
  small: boolean;
  server: () => Promise<TestServer>;
  callers: { name: string; userId: string; token: () => Promise<string> }[];
}

interface Stats {
  count: number;
  perSecond: number;
  p50: number;
  p95: number;
  errors: number;
}

let reported = 0;
/** The first few failures are printed: a benchmark of errors measures nothing. */
function report(e: unknown): false {
  if (reported++ < 3) process.stderr.write(`bench request failed: ${e instanceof Error ? e.message : JSON.stringify(e)}\n`);
  return false;
}

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

/** `clients` loops, each running `once()` back to back for `seconds`; every call timed. */
async function load(clients: number, seconds: number, once: (client: number, i: number) => Promise<boolean>): Promise<Stats> {
  const latencies: number[] = [];
  let errors = 0;
  let i = 0;
  // Warm-up (plans, caches, connections), untimed.
  await Promise.all(Array.from({ length: clients }, (_, c) => once(c, i++).catch((e) => report(e))));
  const end = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        const ok = await once(c, i++).catch((e) => report(e));
        latencies.push(performance.now() - t0);
        if (!ok) errors++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { count: latencies.length, perSecond: latencies.length / elapsed, p50: percentile(latencies, 50), p95: percentile(latencies, 95), errors };
}

/** `iterations` calls one after the other (after three to warm up), every call timed. */
async function timed(iterations: number, once: () => Promise<boolean>): Promise<Stats> {
  const latencies: number[] = [];
  let errors = 0;
  for (let i = 0; i < iterations + 3; i++) {
    const t0 = performance.now();
    const ok = await once().catch(() => false);
    if (i >= 3) latencies.push(performance.now() - t0);
    if (!ok) errors++;
  }
  latencies.sort((a, b) => a - b);
  const seconds = latencies.reduce((s, x) => s + x, 0) / 1000;
  return { count: latencies.length, perSecond: latencies.length / seconds, p50: percentile(latencies, 50), p95: percentile(latencies, 95), errors };
}

/** A transaction as crm_user with a member's claims, as the API runs every request. */
async function asMember<T>(client: pg.PoolClient, userId: string, orgId: string, fn: () => Promise<T>): Promise<T> {
  await client.query("begin");
  try {
    await client.query(
      "select set_config('role', 'crm_user', true), set_config('jwt.claims.sub', $1, true), set_config('jwt.claims.org', $2, true)",
      [userId, orgId],
    );
    const r = await fn();
    await client.query("commit");
    return r;
  } catch (e) {
    await client.query("rollback").catch(() => undefined);
    throw e;
  }
}

const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : "-");
const row = (cells: (string | number)[], widths: number[]) =>
  `| ${cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]!) : String(c).padStart(widths[i]!))).join(" | ")} |`;

export default async function commerceBench(ctx: CommerceBenchContext): Promise<void> {
  const { db, orgId } = ctx;
  const manager = ctx.callers.find((c) => c.name === "Sales Manager") ?? ctx.callers[0]!;
  const server = await ctx.server();
  const orders = (await db.owner.query<{ n: number }>("select count(*)::int as n from crm.orders where organization_id = $1", [orgId])).rows[0]!.n;
  process.stdout.write(`\ncommerce: ${orders.toLocaleString("en")} orders in the organization; ${SECONDS} s per throughput case, ${ITERATIONS} requests per report case\n`);

  // createOrder ----------------------------------------------------------------------------------
  // Buying customers and active products of the organization; each order has three lines.
  const customers = (await db.owner.query<{ id: string }>(
    "select id from crm.customers where organization_id = $1 and deleted_at is null and status = 'customer' order by id limit 2000", [orgId],
  )).rows.map((r) => r.id);
  const products = (await db.owner.query<{ id: string; price: string; tax: string; sku: string; name: string; currency: string }>(
    "select id, unit_price::text as price, tax_rate::text as tax, sku::text, name, currency from crm.products where organization_id = $1 and is_active and deleted_at is null order by sku limit 50",
    [orgId],
  )).rows;
  const run = crypto.randomBytes(4).toString("hex");
  const lines = (i: number) => [products[i % products.length]!, products[(i * 7 + 3) % products.length]!, products[(i * 13 + 5) % products.length]!];
  const CREATE = `mutation ($c: UUID!, $items: [OrderLineInput]!, $key: String!) {
    createOrder(input: { customerId: $c, items: $items, idempotencyKey: $key }) { result { rowId orderNumber finalAmount } } }`;
  const token = await manager.token();
  const auth = new pg.Pool({ connectionString: db.authUrl, max: Math.max(...CLIENTS) });
  const owner = new pg.Pool({ connectionString: db.ownerUrl, max: Math.max(...CLIENTS) });
  const throughput: string[] = [];
  for (const clients of CLIENTS) {
    const http = await load(clients, SECONDS, async (c, i) => {
      const body = await server.gql(CREATE, {
        c: customers[(c * 997 + i) % customers.length],
        items: lines(i).map((p, k) => ({ productId: p.id, quantity: String(1 + (k % 2)) })),
        key: `bench-http-${run}-${clients}-${i}`,
      }, { token });
      return body.body.errors ? report(body.body.errors) : true;
    });
    const sql = await load(clients, SECONDS, async (c, i) => {
      const client = await auth.connect();
      try {
        await asMember(client, manager.userId, orgId, () =>
          client.query(
            `select id from crm.create_order($1, (select array_agg(row(p, q, null)::crm.order_line order by k)
                                                   from unnest($2::uuid[], $3::numeric[]) with ordinality x (p, q, k)), $4)`,
            [customers[(c * 997 + i) % customers.length], lines(i).map((p) => p.id), [1, 2, 1], `bench-sql-${run}-${clients}-${i}`],
          ),
        );
        return true;
      } finally {
        client.release();
      }
    });
    // The floor: the same order and line rows, precomputed, in one transaction as the owner.
    let plainNo = 0;
    const plain = await load(clients, SECONDS, async (c, i) => {
      const client = await owner.connect();
      try {
        await client.query("begin");
        const items = lines(i).map((p, k) => {
          const qty = 1 + (k % 2);
          const sub = Math.round(qty * Number(p.price) * 100) / 100;
          const taxAmount = Math.round(sub * Number(p.tax)) / 100;
          return { ...p, qty, sub, taxAmount };
        });
        const subtotal = items.reduce((s, x) => s + x.sub, 0).toFixed(2);
        const tax = items.reduce((s, x) => s + x.taxAmount, 0).toFixed(2);
        const { rows } = await client.query(
          `insert into crm.orders (organization_id, order_number, customer_id, currency, subtotal, tax_total, final_amount, created_by)
           values ($1, $2, $3, $4, $5, $6, $5::numeric + $6::numeric, $7) returning id`,
          [orgId, `PLAIN-${run}-${clients}-${++plainNo}`, customers[(c * 997 + i) % customers.length], items[0]!.currency, subtotal, tax, manager.userId],
        );
        await client.query(
          `insert into crm.order_items (organization_id, order_id, line_no, product_id, sku, product_name, quantity, list_price, unit_price, tax_rate,
                                        line_subtotal, tax_amount, line_total)
           select $1, $2, k, p, s, n, q, pr, pr, t, sub, tx, sub + tx
             from unnest($3::uuid[], $4::text[], $5::text[], $6::numeric[], $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[])
                  with ordinality x (p, s, n, q, pr, t, sub, tx, k)`,
          [orgId, rows[0].id, items.map((x) => x.id), items.map((x) => x.sku), items.map((x) => x.name), items.map((x) => x.qty),
           items.map((x) => x.price), items.map((x) => x.tax), items.map((x) => x.sub), items.map((x) => x.taxAmount)],
        );
        await client.query("commit");
        return true;
      } catch (e) {
        await client.query("rollback");
        throw e;
      } finally {
        client.release();
      }
    });
    const w = [28, 7, 9, 7, 7, 6];
    throughput.push(
      row([`createOrder over HTTP`, clients, f1(http.perSecond), f1(http.p50), f1(http.p95), http.errors], w),
      row([`createOrder in SQL`, clients, f1(sql.perSecond), f1(sql.p50), f1(sql.p95), sql.errors], w),
      row([`plain INSERT (floor)`, clients, f1(plain.perSecond), f1(plain.p50), f1(plain.p95), plain.errors], w),
      row([`  ratio HTTP / floor`, clients, (http.perSecond / plain.perSecond).toFixed(2), "", "", ""], w),
    );
  }
  // The plain rows are not orders anyone placed: remove them (they have no points, payments or events).
  await db.owner.query("delete from crm.order_items where order_id in (select id from crm.orders where organization_id = $1 and order_number like 'PLAIN-%')", [orgId]);
  await db.owner.query("delete from crm.orders where organization_id = $1 and order_number like 'PLAIN-%'", [orgId]);

  process.stdout.write(
    [
      "",
      "createOrder (3 lines, no promotion, points earned), orders per second and ms per order",
      "",
      "| case                         | clients | orders/s |     p50 |     p95 | errors |",
      "|------------------------------|---------|----------|---------|---------|--------|",
      ...throughput,
      "",
    ].join("\n"),
  );

  // Reports --------------------------------------------------------------------------------------
  const to = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.now() - 365 * 86_400_000).toISOString().slice(0, 10);
  const tz = (await db.owner.query<{ tz: string }>("select crm_private.org_timezone($1) as tz", [orgId])).rows[0]!.tz;
  const SALES = `query ($f: Date!, $t: Date!) { salesReport(fromDate: $f, toDate: $t, interval: "month") { periodStart currency orders revenue netRevenue } }`;
  const ANALYTICS = `query ($f: Date!, $t: Date!) { customerAnalytics(fromDate: $f, toDate: $t) {
    levelDistribution { name customers } newCustomers { periodStart customers } customersWithOrders repeatPurchaseRate } }`;
  const SALES_FLOOR = `
    select date_trunc('month', ordered_at at time zone $4)::date as period, currency, count(*), sum(final_amount), sum(refunded_amount),
           sum(discount_total), sum(tax_total)
      from crm.orders
     where organization_id = $1 and status <> 'cancelled'
       and ordered_at >= ($2::date::timestamp at time zone $4) and ordered_at < (($3::date + 1)::timestamp at time zone $4)
     group by 1, 2`;
  const ANALYTICS_FLOOR = `
    select (select json_agg(x) from (select l.id, count(c.id) from crm.customer_levels l left join crm.customers c on c.level_id = l.id and c.deleted_at is null
                                      where l.organization_id = $1 group by l.id) x) as levels,
           (select json_agg(x) from (select date_trunc('month', created_at at time zone $4)::date, count(*) from crm.customers
                                      where organization_id = $1 and deleted_at is null
                                        and created_at >= ($2::date::timestamp at time zone $4) and created_at < (($3::date + 1)::timestamp at time zone $4)
                                      group by 1) x) as new_customers,
           (select json_build_object('with_orders', count(*), 'repeat', count(*) filter (where n >= 2))
              from (select customer_id, count(*) as n from crm.orders
                     where organization_id = $1 and status <> 'cancelled'
                       and ordered_at >= ($2::date::timestamp at time zone $4) and ordered_at < (($3::date + 1)::timestamp at time zone $4)
                     group by customer_id) y) as repeat`;
  const reports: string[] = [];
  for (const [label, query, fn, floor] of [
    ["salesReport, 12 months by month", SALES, "select crm.sales_report($1, $2, 'month')", SALES_FLOOR],
    ["customerAnalytics, 12 months", ANALYTICS, "select crm.customer_analytics($1, $2, 'month')", ANALYTICS_FLOOR],
  ] as const) {
    const http = await timed(ITERATIONS, async () => !(await server.gql(query, { f: from, t: to }, { token })).body.errors);
    const client = await auth.connect();
    const sql = await timed(ITERATIONS, () => asMember(client, manager.userId, orgId, () => client.query(fn, [from, to])).then(() => true));
    client.release();
    const bare = await timed(ITERATIONS, () => db.owner.query(floor, [orgId, from, to, tz]).then(() => true));
    const w = [32, 8, 8, 8, 8, 8, 8, 7];
    reports.push(row([label, f1(http.p50), f1(http.p95), f1(sql.p50), f1(sql.p95), f1(bare.p50), f1(bare.p95), (http.p50 / bare.p50).toFixed(2)], w));
  }
  process.stdout.write(
    [
      "",
      "Reports as a Sales Manager (ms): over HTTP, the SQL function under row-level security, and the hand-written SQL floor (owner, no RLS)",
      "",
      "| report                           | HTTP p50 |    p95 | SQL p50 |    p95 | floor p50 |  p95 | HTTP/floor |",
      "|----------------------------------|----------|--------|---------|--------|-----------|------|------------|",
      ...reports,
      "",
    ].join("\n"),
  );

  // Loyalty expiry: the nightly statement for the whole organization (nothing due twice in a row).
  const t0 = performance.now();
  const expired = (await db.owner.query<{ n: number }>("select crm_private.expire_loyalty_points($1) as n", [orgId])).rows[0]!.n;
  process.stdout.write(`loyalty:expire for the organization: ${(performance.now() - t0).toFixed(0)} ms (${expired} customers had points expire)\n`);
  await auth.end();
  await owner.end();
}

// On its own: a scratch database seeded like seed:demo --scale (or --small), a server, a manager.
if (import.meta.main) {
  process.env.GRAPHILE_ENV ??= "production";
  const small = process.argv.includes("--small");
  const { ensureDatabase, ensureRoles, migrate, applyCurrentMigration, withCredentials, withDatabase } = await import("../../src/db/bootstrap.ts");
  const { startEmbeddedPostgres } = await import("../../src/db/embedded.ts");
  const { seedDemoData, settleAfterBulkLoad, SCALE_VOLUME, DEFAULT_VOLUME } = await import("../../src/db/seed-demo.ts");
  const { startServer } = await import("../helpers/server.ts");
  const { startSession } = await import("../helpers/identity.ts");
  const passwords = { owner: "bench-owner", authenticator: "bench-authenticator" };
  let rootUrl = process.env.BENCH_DATABASE_URL;
  const dataDir = path.join(os.tmpdir(), `cairn-bench-commerce-${process.pid}`);
  const embedded = rootUrl ? undefined : await startEmbeddedPostgres({ dataDir, port: 57000 + (process.pid % 2000), durable: false });
  rootUrl ??= embedded!.superuserUrl();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      void (embedded?.stop() ?? Promise.resolve()).finally(() => fs.rm(dataDir, { recursive: true, force: true }).finally(() => process.exit(130)));
    });
  }
  const name = "cairn_bench_commerce";
  const admin = new pg.Client({ connectionString: rootUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.end();
  await ensureRoles(rootUrl, passwords);
  await ensureDatabase(rootUrl, name);
  const dbUrl = withDatabase(rootUrl, name);
  const ownerUrl = withCredentials(dbUrl, "crm_owner", passwords.owner);
  const authUrl = withCredentials(dbUrl, "crm_authenticator", passwords.authenticator);
  await migrate(ownerUrl);
  await applyCurrentMigration(ownerUrl);
  const ownerPool = new pg.Pool({ connectionString: ownerUrl, max: 4 });
  const db = { ownerUrl, authUrl, owner: ownerPool } as unknown as TestDb;
  const orgId = (await ownerPool.query<{ id: string }>("insert into crm.organizations (name, slug) values ('Bench Shop', 'bench-shop') returning id")).rows[0]!.id;
  process.stdout.write(`seeding ${small ? "the default volume" : "--scale"}…\n`);
  const seeded = await seedDemoData(ownerPool, orgId, { volume: small ? DEFAULT_VOLUME : SCALE_VOLUME, log: (m) => process.stdout.write(`  ${m}\n`) });
  process.stdout.write(`seeded in ${(seeded.durationMs / 1000).toFixed(1)} s\n`);
  const t0 = Date.now();
  await settleAfterBulkLoad(ownerPool);
  process.stdout.write(`vacuum (analyze) in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const managerId = (await ownerPool.query<{ user_id: string }>(
    `select m.user_id from crm.organization_memberships m join crm.roles r on r.id = m.role_id
      where m.organization_id = $1 and r.name = 'Sales Manager' and m.is_active order by m.created_at limit 1`, [orgId],
  )).rows[0]!.user_id;
  let server: TestServer | undefined;
  try {
    server = await startServer(db, { LOG_LEVEL: "info", PAGE_SIZE_MAX: "100", PG_POOL_MAX: String(Math.max(...CLIENTS) + 2) });
    const running = server;
    await commerceBench({
      db, orgId, small,
      server: async () => running,
      callers: [{ name: "Sales Manager", userId: managerId, token: async () => (await startSession(db, managerId, orgId)).accessToken }],
    });
  } finally {
    await server?.stop();
    await ownerPool.end();
    const cleanup = new pg.Client({ connectionString: rootUrl });
    await cleanup.connect();
    await cleanup.query(`drop database if exists ${name} with (force)`);
    await cleanup.end();
    if (embedded) await embedded.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  }
}
