// RFM benchmark (area `rfm` of npm run bench): on the scale organization (about 1,000,000 orders over
// 50,000 customers), the full rfm:score job through the tenant runner (as the system principal, under
// row-level security, levels, promotions, audit and the change log included) — first run, steady runs
// with no order changed, and runs after about 1% of the customers bought (rows written printed) — beside
//   - the floor: the bare statement that aggregates the same orders and ranks them with ntile(5),
//     as the owner, writing nothing;
//   - the per-customer loop (one query per customer for its orders, one update per customer), run on
//     a sample of customers and extrapolated to the organization.
// The worker's memory (this process runs the job) before and after. Prints a table; asserts nothing.
//
//   npm run bench -- rfm [--small]
//
// BENCH_RFM_RUNS (default 3) timed runs per mode, BENCH_RFM_SAMPLE (default 500) customers in the loop.
import { pino } from "pino";
import type { BenchContext } from "./context.ts";
import { runTenantJob } from "../../worker/tenant/runner.ts";
import { scoreRfm } from "../../worker/tasks/rfm-score.ts";

const RUNS = Number(process.env.BENCH_RFM_RUNS ?? 3);
const SAMPLE = Number(process.env.BENCH_RFM_SAMPLE ?? 500);

const mb = (n: number) => (n / 1024 / 1024).toFixed(1);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const FLOOR = `
  select count(*) as n, sum(r + f + m) as checksum from (
    select ntile(5) over (order by max(ordered_at)) as r,
           ntile(5) over (order by count(*)) as f,
           ntile(5) over (order by sum(paid_amount - refunded_amount)) as m
      from crm.orders
     where organization_id = $1 and status = any ('{paid,partially_paid}') and ordered_at > now() - interval '730 days'
     group by customer_id) x`;

export default async function rfmBench(ctx: BenchContext): Promise<void> {
  const { db, orgId } = ctx;
  const logger = pino({ level: "silent" });
  const q1 = async (sql: string, params: unknown[] = []) => (await db.owner.query(sql, params)).rows[0];
  const { orders, customers } = await q1(
    `select (select count(*)::int from crm.orders where organization_id = $1) as orders,
            (select count(*)::int from crm.customers where organization_id = $1 and deleted_at is null) as customers`,
    [orgId],
  );
  process.stdout.write(`\nrfm: ${orders.toLocaleString("en")} orders, ${customers.toLocaleString("en")} customers in the organization\n`);

  const memory = () => process.memoryUsage();
  global.gc?.();
  const before = memory();

  let lastWritten = 0;
  const job = async () => {
    const t0 = performance.now();
    const r = await runTenantJob({ ownerPool: db.owner, authPool: ctx.sqlPool }, { organizationId: orgId, task: "rfm:score", logger }, scoreRfm);
    if (r.outcome !== "succeeded") throw new Error(`rfm:score ${r.outcome}`);
    lastWritten = Number(r.rowsAffected ?? 0);
    return performance.now() - t0;
  };
  // About 1% of the customers buy again: one paid order each, an hour ago (as an import would load it).
  let batch = 0;
  const newOrders = async () => {
    batch++;
    await db.owner.query(
      `insert into crm.orders (organization_id, order_number, customer_id, status, currency, subtotal, final_amount, paid_amount, ordered_at)
       select $1, 'RFM-BENCH-' || $2::int || '-' || c.id, c.id, 'paid', 'USD', 120, 120, 120, now() - interval '1 hour'
         from crm.customers c where c.organization_id = $1 and c.deleted_at is null
        order by md5(c.id::text || $2::int) limit $3`,
      [orgId, batch, Math.max(1, Math.round(customers / 100))],
    );
  };
  const lastRun = async () =>
    q1("select customers_scored, levels_changed from crm.rfm_runs where organization_id = $1 order by requested_at desc limit 1", [orgId]);

  const rows: string[] = [];
  const w = [64, 10, 10, 10];
  const line = (cells: (string | number)[]) => `| ${cells.map((c, i) => (i === 0 ? String(c).padEnd(w[i]!) : String(c).padStart(w[i]!))).join(" | ")} |`;

  // Floor: the bare ntile statement (median of RUNS after one warm-up).
  await db.owner.query(FLOOR, [orgId]);
  const floors: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await db.owner.query(FLOOR, [orgId]);
    floors.push(performance.now() - t0);
  }
  const floor = median(floors);
  process.stdout.write(`floor (aggregate + ntile): ${floors.map((x) => x.toFixed(0)).join(", ")} ms\n`);

  // The job: the first run moves many levels (the seeded levels follow spend, not RFM), later runs few.
  const modeRows: [string, number, number][] = [];
  for (const mode of ["thresholds", "quintiles"]) {
    await db.owner.query("update crm.rfm_settings set mode = $2 where organization_id = $1", [orgId, mode]);
    const first = await job();
    const firstRun = await lastRun();
    const firstWritten = lastWritten;
    const steady: number[] = [];
    const steadyWritten: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      steady.push(await job());
      steadyWritten.push(lastWritten);
    }
    const s = median(steady);
    const bought: number[] = [];
    const boughtWritten: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      await newOrders();
      bought.push(await job());
      boughtWritten.push(lastWritten);
    }
    const b = median(bought);
    const label = mode === "thresholds" ? "first run" : "mode switched from thresholds";
    process.stdout.write(
      `rfm:score ${mode}: ${label} ${first.toFixed(0)} ms (${firstWritten} rows written, ${firstRun.levels_changed} levels changed), ` +
        `steady ${steady.map((x) => x.toFixed(0)).join(", ")} ms (${steadyWritten.join(", ")} written), ` +
        `after 1% new orders ${bought.map((x) => x.toFixed(0)).join(", ")} ms (${boughtWritten.join(", ")} written)\n`,
    );
    rows.push(line([`rfm:score, ${mode}, ${label} (${firstWritten.toLocaleString("en")} written)`, first.toFixed(0), (first / floor).toFixed(2), ""]));
    rows.push(line([`rfm:score, ${mode}, steady (median of ${RUNS}, ${median(steadyWritten)} written)`, s.toFixed(0), (s / floor).toFixed(2), ""]));
    rows.push(line([`rfm:score, ${mode}, 1% bought (median of ${RUNS}, ~${median(boughtWritten)} written)`, b.toFixed(0), (b / floor).toFixed(2), ""]));
    modeRows.push([mode, first, s]);
  }
  await db.owner.query("update crm.rfm_settings set mode = 'thresholds' where organization_id = $1", [orgId]);
  await job();

  // The per-customer loop: one query for the customer's orders, one update, per customer; a sample,
  // in one transaction rolled back, extrapolated to every customer.
  const sample = (await db.owner.query<{ id: string }>(
    "select id from crm.customers where organization_id = $1 and deleted_at is null order by id limit $2",
    [orgId, SAMPLE],
  )).rows.map((r) => r.id);
  const client = await db.owner.connect();
  let loopMs: number;
  try {
    await client.query("begin");
    const t0 = performance.now();
    for (const id of sample) {
      const { rows: agg } = await client.query<{ days: number | null; n: number; money: string | null }>(
        `select current_date - max(ordered_at)::date as days, count(*)::int as n, sum(paid_amount - refunded_amount) as money
           from crm.orders where organization_id = $1 and customer_id = $2 and status = any ('{paid,partially_paid}')
            and ordered_at > now() - interval '730 days'`,
        [orgId, id],
      );
      const a = agg[0]!;
      const r = a.days == null ? 1 : 1 + [30, 90, 180, 365].filter((b) => a.days! <= b).length;
      const f = 1 + [2, 3, 5, 10].filter((b) => a.n >= b).length;
      const m = 1 + [100, 250, 500, 1000].filter((b) => Number(a.money ?? 0) >= b).length;
      await client.query(
        `update crm.customers set rfm_recency_score = $2::int, rfm_frequency_score = $3::int, rfm_monetary_score = $4::int,
                rfm_score = round(($2::int + $3::int + $4::int) / 3.0, 2), rfm_recency_days = $5, rfm_order_count = $6,
                rfm_monetary_value = coalesce($7::numeric, 0), rfm_scored_at = now() where id = $1`,
        [id, r, f, m, a.days, a.n, a.money],
      );
    }
    loopMs = ((performance.now() - t0) / sample.length) * customers;
    process.stdout.write(`per-customer loop: ${(performance.now() - t0).toFixed(0)} ms for ${sample.length} customers\n`);
  } finally {
    await client.query("rollback");
    client.release();
  }

  global.gc?.();
  const after = memory();
  const steadyThresholds = modeRows[0]![2];
  process.stdout.write(
    [
      "",
      `RFM scoring of the whole organization (ms; floor = the bare ntile statement over the same orders, median of ${RUNS})`,
      "",
      line(["case", "ms", "÷ floor", "÷ job"]),
      `|${"-".repeat(w[0]! + 2)}|${"-".repeat(w[1]! + 2)}|${"-".repeat(w[2]! + 2)}|${"-".repeat(w[3]! + 2)}|`,
      line(["floor: aggregate + ntile(5), owner, no writes", floor.toFixed(0), "1.00", ""]),
      ...rows,
      line([`per-customer loop (${sample.length} customers, extrapolated)`, loopMs.toFixed(0), (loopMs / floor).toFixed(1), (loopMs / steadyThresholds).toFixed(0) + "×"]),
      "",
      `worker memory (this process): rss ${mb(before.rss)} → ${mb(after.rss)} MB, heap used ${mb(before.heapUsed)} → ${mb(after.heapUsed)} MB`,
      "",
    ].join("\n"),
  );
}
