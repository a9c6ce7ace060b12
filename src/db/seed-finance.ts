// Demo finance data for seed:demo (src/db/seed-demo.ts): invoices over the organization's customers
// (seed 002's volume: 500), their lines, payments and a few credit notes, and expenses — written
// set-based by the database inside the demo seed's transaction, like the order history
// (seed-commerce.ts): one INSERT … SELECT per table over generate_series, with a deterministic
// pseudo-random number per row (hashint8extended of the row's index and the seed).
// Shape:
//   - issue dates spread evenly over the last 18 months (so two years of numbering), numbered
//     gaplessly per year in issue order, and the counters set to the last number of each year;
//     the newest few are drafts (no number);
//   - 1 to 4 lines each, quantities 1–10, prices 25–2,500, tax 0, 7, 19 or 20 %, exact to the cent;
//   - payment terms 14, 30 or 45 days; invoices past due are mostly paid (a payment per invoice,
//     some in two instalments), some overdue (a few in part), 3 % void; not yet due: issued, partly or
//     fully paid; 2 % of the paid ones corrected by a credit note;
//   - expenses over the categories, 70 % approved or reimbursed, the rest submitted, rejected or draft,
//     some linked to projects.
// Audit entries and the guards of issued invoices are switched off in the seed's transaction (the
// rows are written as an import would, already issued); the billing snapshot is built the way
// issueInvoice builds it.
import type pg from "pg";

const TRIGGERS: [string, string][] = [
  ["invoices", "_800_audit"],
  ["invoices", "_110_guard"],
  ["invoices", "_300_overdue_notify"],
  ["invoice_items", "_800_audit"],
  ["invoice_items", "_200_guard"],
  ["invoice_payments", "_800_audit"],
  ["credit_notes", "_800_audit"],
  ["expenses", "_800_audit"],
];

export async function writeFinanceHistory(
  client: pg.ClientBase,
  opts: { orgId: string; seed: number; now: number; currency: string; invoices: number; expenses: number; log: (m: string) => void },
): Promise<Record<string, number>> {
  const counts: Record<string, number> = { invoices: 0, invoiceItems: 0, invoicePayments: 0, creditNotes: 0, expenses: 0 };
  const { rows: have } = await client.query<{ customers: number; members: string[] }>(
    `select (select count(*)::int from crm.customers where organization_id = $1 and deleted_at is null) as customers,
            array(select m.user_id::text from crm.organization_memberships m join crm.users u on u.id = m.user_id
                   where m.organization_id = $1 and m.is_active and u.system_organization_id is null order by m.created_at) as members`,
    [opts.orgId],
  );
  if (!have[0]!.customers || (!opts.invoices && !opts.expenses)) return counts;
  const timed = async (label: string, sql: string, params: unknown[] = []) => {
    const t0 = Date.now();
    const r = await client.query(sql, params);
    opts.log(`${label}: ${r.rowCount ?? 0} rows in ${Date.now() - t0} ms`);
    return r.rowCount ?? 0;
  };
  await client.query(`create or replace function pg_temp.fin_u(g bigint, salt int) returns float8 language sql immutable parallel safe
    as $$ select (hashint8extended(g, ${(opts.seed >>> 0) + 7}::bigint * 1000 + salt) & 9007199254740991)::float8 / 9007199254740992 $$`);
  for (const [t, g] of TRIGGERS) await client.query(`alter table crm.${t} disable trigger ${g}`);
  const today = new Date(opts.now).toISOString().slice(0, 10);
  const p = [opts.orgId, opts.invoices, today, opts.currency];

  await timed(
    "invoice plan",
    `create temp table seed_invoices on commit drop as
     with c as (select array_agg(id order by created_at, id) as ids, (select array_agg(id) from crm.projects where organization_id = $1 and deleted_at is null) as projects
                  from crm.customers where organization_id = $1 and deleted_at is null),
     g as (
       select g, gen_random_uuid() as id,
              c.ids[1 + floor(pg_temp.fin_u(g, 1) * cardinality(c.ids))::int] as customer_id,
              $3::date - (floor(540.0 * ($2::int - g) / greatest($2::int, 1)))::int as day,
              (array[14, 30, 30, 45])[1 + floor(pg_temp.fin_u(g, 2) * 4)::int] as terms,
              1 + floor(pg_temp.fin_u(g, 3) * 4)::int as lines,
              pg_temp.fin_u(g, 4) as r
         from generate_series(1, $2::int) g, c
     )
     select g.*, g.day + g.terms as due,
            case when g.g > $2::int - greatest(3, $2::int / 100) then 'draft'
                 when g.day + g.terms >= $3::date then (case when g.r < 0.7 then 'issued' when g.r < 0.85 then 'partially_paid' else 'paid' end)
                 when g.r < 0.03 then 'void'
                 when g.r < 0.11 then 'overdue'
                 when g.r < 0.14 then 'overdue_partly'
                 else 'paid' end as plan
       from g`,
    p.slice(0, 3),
  );
  counts.invoiceItems = await timed(
    "invoice lines",
    `create temp table seed_invoice_items on commit drop as
     select i.id as invoice_id, i.g, l as line_no,
            (array['Consulting (day rate)', 'Campaign design', 'Landing page', 'Monthly retainer', 'Analytics plan', 'Workshop',
                   'Content writing', 'SEO audit', 'Ad management', 'Print production'])[1 + floor(pg_temp.fin_u(i.g * 8 + l, 5) * 10)::int] as description,
            (1 + floor(pg_temp.fin_u(i.g * 8 + l, 6) * 10))::numeric as quantity,
            round((25 + pg_temp.fin_u(i.g * 8 + l, 7) ^ 3 * 2475)::numeric, 2) as unit_price,
            (array[0, 7, 19, 20])[1 + floor(pg_temp.fin_u(i.g * 8 + l, 8) * 4)::int]::numeric as tax_rate
       from seed_invoices i cross join lateral generate_series(1, i.lines) l`,
  );
  await client.query(
    `alter table seed_invoice_items add column line_subtotal numeric, add column tax_amount numeric;
     update seed_invoice_items set line_subtotal = round(quantity * unit_price, 2);
     update seed_invoice_items set tax_amount = round(line_subtotal * tax_rate / 100, 2)`,
  );

  counts.invoices = await timed(
    "invoices",
    `with totals as (select invoice_id, sum(line_subtotal) as subtotal, sum(tax_amount) as tax from seed_invoice_items group by 1),
     s as (select s.legal_name, s.billing_address, s.tax_id, s.billing_email, s.payment_instructions, o.name as org_name
             from crm.finance_settings s join crm.organizations o on o.id = s.organization_id where s.organization_id = $1),
     numbered as (
       select i.*, t.subtotal, t.tax,
              case when i.plan <> 'draft' then row_number() over (partition by (i.plan = 'draft'), extract(year from i.day) order by i.day, i.g) end as seq
         from seed_invoices i join totals t on t.invoice_id = i.id
     ),
     prior as (select year, last_value from crm_private.invoice_number_counters where organization_id = $1 and kind = 'invoice')
     insert into crm.invoices (id, organization_id, customer_id, number, status, issue_date, due_date, payment_terms_days, payment_instructions,
                               currency, subtotal, tax_total, total, amount_paid, billing_snapshot, issued_at, paid_at, overdue_at, voided_at,
                               void_reason, created_at, updated_at)
     select n.id, $1, n.customer_id,
            case when n.plan <> 'draft' then format('%s-%s-%s', coalesce((select invoice_prefix from crm.finance_settings where organization_id = $1), 'INV'),
                 extract(year from n.day)::int,
                 lpad((n.seq + coalesce((select last_value from prior where year = extract(year from n.day)::int), 0))::text,
                      greatest(coalesce((select number_padding from crm.finance_settings where organization_id = $1), 4), 4), '0')) end,
            case n.plan when 'overdue_partly' then 'overdue' else n.plan end,
            case when n.plan <> 'draft' then n.day end, case when n.plan <> 'draft' then n.due end, n.terms, coalesce(s.payment_instructions, ''),
            $3, n.subtotal, n.tax, n.subtotal + n.tax,
            case n.plan when 'paid' then n.subtotal + n.tax when 'partially_paid' then round((n.subtotal + n.tax) * 0.4, 2)
                        when 'overdue_partly' then round((n.subtotal + n.tax) * 0.25, 2) else 0 end,
            case when n.plan <> 'draft' then jsonb_build_object(
              'organization', jsonb_build_object('name', coalesce(nullif(s.legal_name, ''), s.org_name), 'address', s.billing_address, 'taxId', s.tax_id, 'email', s.billing_email),
              'customer', (select jsonb_build_object('name', c.name, 'email', c.email, 'phone', c.phone, 'address', c.billing_address) from crm.customers c where c.id = n.customer_id),
              'paymentInstructions', coalesce(s.payment_instructions, ''),
              'items', (select jsonb_agg(jsonb_build_object('lineNo', x.line_no, 'description', x.description, 'quantity', x.quantity::text,
                          'unitPrice', x.unit_price::text, 'taxRate', x.tax_rate::text, 'lineSubtotal', x.line_subtotal::text,
                          'taxAmount', x.tax_amount::text, 'lineTotal', (x.line_subtotal + x.tax_amount)::text) order by x.line_no)
                          from seed_invoice_items x where x.invoice_id = n.id)) end,
            case when n.plan <> 'draft' then n.day::timestamp + interval '10 hours' end,
            case when n.plan = 'paid' then least(n.due, $2::date)::timestamp + interval '12 hours' end,
            case when n.plan in ('overdue', 'overdue_partly') then n.due::timestamp + interval '1 day 3 hours' end,
            case when n.plan = 'void' then n.day::timestamp + interval '2 days' end,
            case when n.plan = 'void' then 'Issued in error' end,
            n.day::timestamp + interval '9 hours', n.day::timestamp + interval '9 hours'
       from numbered n cross join s`,
    [opts.orgId, today, opts.currency],
  );
  await timed(
    "invoice lines written",
    `insert into crm.invoice_items (organization_id, invoice_id, line_no, description, quantity, unit_price, tax_rate, line_subtotal, tax_amount, line_total)
     select $1, invoice_id, line_no, description, quantity, unit_price, tax_rate, line_subtotal, tax_amount, line_subtotal + tax_amount from seed_invoice_items`,
    [opts.orgId],
  );
  await timed(
    "number counters",
    `insert into crm_private.invoice_number_counters as c (organization_id, kind, year, last_value)
     select $1, 'invoice', split_part(number, '-', 2)::int, max(split_part(number, '-', 3)::bigint) from crm.invoices
      where organization_id = $1 and number is not null group by 3
     on conflict (organization_id, kind, year) do update set last_value = greatest(c.last_value, excluded.last_value)`,
    [opts.orgId],
  );
  // Payments: one per paid invoice (a quarter of them in two instalments), one for part-paid ones.
  counts.invoicePayments = await timed(
    "invoice payments",
    `insert into crm.invoice_payments (organization_id, invoice_id, customer_id, amount, currency, method, reference, received_at, recorded_by, created_at)
     select i.organization_id, i.id, i.customer_id, x.amount, i.currency,
            (array['bank_transfer', 'bank_transfer', 'card', 'check', 'other'])[1 + floor(pg_temp.fin_u(s.g, 9) * 5)::int],
            'DEMO-' || s.g || '-' || x.k, x.at, $2::uuid, x.at
       from crm.invoices i join seed_invoices s on s.id = i.id
      cross join lateral (
        select k, case when k = 1 and parts = 2 then round(i.amount_paid / 2, 2) when k = 2 then i.amount_paid - round(i.amount_paid / 2, 2) else i.amount_paid end as amount,
               least(i.issue_date + (k * greatest(i.due_date - i.issue_date, 2) / (parts + 1)), $3::date)::timestamp + interval '11 hours' as at
          from (select case when i.status = 'paid' and pg_temp.fin_u(s.g, 10) < 0.25 then 2 else 1 end as parts) pp, generate_series(1, pp.parts) k
      ) x
      where i.organization_id = $1 and i.amount_paid > 0`,
    [opts.orgId, have[0]!.members[0] ?? null, today],
  );
  // A few paid invoices corrected by a credit note of a tenth (owed back to the customer).
  counts.creditNotes = await timed(
    "credit notes",
    `with picked as (
       select i.id, i.currency, i.issue_date + 20 as day, round(i.total / 10, 2) as amount,
              row_number() over (partition by extract(year from i.issue_date + 20) order by i.issue_date, i.id)
                + coalesce((select c.last_value from crm_private.invoice_number_counters c where c.organization_id = $1 and c.kind = 'credit_note'
                             and c.year = extract(year from i.issue_date + 20)::int), 0) as seq
         from crm.invoices i join seed_invoices s on s.id = i.id
        where i.organization_id = $1 and i.status = 'paid' and pg_temp.fin_u(s.g, 11) < 0.02 and i.total >= 1
     ), ins as (
       insert into crm.credit_notes (organization_id, invoice_id, number, amount, currency, reason, created_at)
       select $1, p.id, format('CN-%s-%s', extract(year from p.day)::int, lpad(p.seq::text, 4, '0')), p.amount, p.currency,
              'Goodwill discount', p.day::timestamp + interval '10 hours'
         from picked p
       returning invoice_id, amount, number
     ), upd as (
       update crm.invoices i set credited_amount = ins.amount from ins where i.id = ins.invoice_id returning 1
     )
     insert into crm_private.invoice_number_counters as c (organization_id, kind, year, last_value)
     select $1, 'credit_note', split_part(number, '-', 2)::int, max(split_part(number, '-', 3)::bigint) from ins group by 3
     on conflict (organization_id, kind, year) do update set last_value = greatest(c.last_value, excluded.last_value)`,
    [opts.orgId],
  );
  counts.creditNotes = (await client.query("select count(*)::int as n from crm.credit_notes where organization_id = $1", [opts.orgId])).rows[0].n;

  const members = have[0]!.members;
  if (opts.expenses > 0 && members.length >= 2) {
    counts.expenses = await timed(
      "expenses",
      `with cat as (select array_agg(id order by position) as ids from crm.expense_categories where organization_id = $1 and is_active),
            pr as (select coalesce(array_agg(id order by created_at, id), '{}') as ids from crm.projects where organization_id = $1 and deleted_at is null),
            g as (select g, $4::uuid[] as m,
                         pg_temp.fin_u(g + 100000, 12) as r, $3::date - floor(pg_temp.fin_u(g + 100000, 13) * 365)::int as day
                    from generate_series(1, $2) g)
       insert into crm.expenses (organization_id, category_id, amount, currency, spent_on, description, receipt_reference, project_id,
                                 submitted_by, status, submitted_at, approver_id, decided_at, decision_reason, reimbursed_at, created_at, updated_at)
       select $1, cat.ids[1 + floor(pg_temp.fin_u(g + 100000, 14) * cardinality(cat.ids))::int],
              round((5 + pg_temp.fin_u(g + 100000, 15) ^ 2 * 1500)::numeric, 2), $5, day,
              (array['Train tickets', 'Client lunch', 'Software licence', 'Conference fee', 'Office supplies', 'Taxi', 'Hotel', 'Ad credits'])[1 + floor(pg_temp.fin_u(g + 100000, 16) * 8)::int],
              'RCPT-' || g,
              case when cardinality(pr.ids) > 0 and pg_temp.fin_u(g + 100000, 17) < 0.4 then pr.ids[1 + floor(pg_temp.fin_u(g + 100000, 18) * cardinality(pr.ids))::int] end,
              m[2 + floor(pg_temp.fin_u(g + 100000, 19) * (cardinality(m) - 1))::int],
              st, case when st <> 'draft' then day::timestamp + interval '18 hours' end,
              case when st in ('approved', 'rejected', 'reimbursed') then m[1] end,
              case when st in ('approved', 'rejected', 'reimbursed') then day::timestamp + interval '2 days' end,
              case when st = 'rejected' then 'No receipt attached' end,
              case when st = 'reimbursed' then day::timestamp + interval '9 days' end,
              day::timestamp + interval '17 hours', day::timestamp + interval '17 hours'
         from g cross join cat cross join pr
        cross join lateral (select case when $3::date - day < 7 and r < 0.5 then 'submitted' when r < 0.35 then 'reimbursed' when r < 0.7 then 'approved'
                                        when r < 0.85 then 'submitted' when r < 0.95 then 'rejected' else 'draft' end as st) s`,
      [opts.orgId, opts.expenses, today, members, opts.currency],
    );
  }
  for (const [t, g] of TRIGGERS) await client.query(`alter table crm.${t} enable trigger ${g}`);
  return counts;
}
