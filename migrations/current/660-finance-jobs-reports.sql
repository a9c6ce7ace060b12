-- Finance: overdue invoices (invoices:overdue), recurring billing (invoices:recur), financial
-- reports, and the payment provider's webhook secret.

-- Overdue notices --------------------------------------------------------------------------------------
alter type crm.notification_kind add value if not exists 'invoice_overdue';
insert into crm_private.notification_kind_defaults (kind, default_channel, description) values
  ('invoice_overdue', 'in_app', 'An invoice of a customer you own, or any invoice for Finance members, is past its due date')
on conflict (kind) do update set default_channel = excluded.default_channel, description = excluded.description;

-- When an invoice becomes overdue (only the invoices:overdue job moves it there), its customer's owner
-- and the members holding the Finance role are notified, once per invoice (the dedupe key). The
-- customer is not e-mailed yet: the messaging module will add its queued, consent-checked e-mail here.
create or replace function crm_private.tg_invoice_overdue_notify() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  recipients uuid[];
begin
  select array_agg(distinct u) into recipients from (
    select c.owner_id as u from crm.customers c where c.organization_id = new.organization_id and c.id = new.customer_id and c.owner_id is not null
    union
    select m.user_id from crm.organization_memberships m
      join crm.roles r on r.id = m.role_id and r.organization_id = m.organization_id and r.is_system and r.name = 'Finance'
     where m.organization_id = new.organization_id and m.is_active) x;
  perform crm_private.notify(new.organization_id, coalesce(recipients, '{}'), 'invoice_overdue',
    format('Invoice %s is overdue', new.number),
    format('%s %s was due on %s.', new.balance, new.currency, to_char(new.due_date, 'YYYY-MM-DD')),
    'invoice', new.id, null,
    jsonb_build_object('number', new.number, 'balance', new.balance::text, 'currency', new.currency, 'dueDate', new.due_date),
    'invoice_overdue:' || new.id::text);
  return null;
end
$$;
drop trigger if exists _300_overdue_notify on crm.invoices;
create trigger _300_overdue_notify after update of status on crm.invoices
  for each row when (new.status = 'overdue' and old.status is distinct from 'overdue') execute function crm_private.tg_invoice_overdue_notify();

-- The job: issued and partially paid invoices whose due date has passed (in the organization's time
-- zone) become overdue. Returns what it marked, for the job's log.
create or replace function crm_jobs.mark_overdue_invoices(payload jsonb default '{}'::jsonb)
  returns table (id uuid, number text, customer_id uuid, balance numeric, currency text, due_date date)
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.invoices i set status = 'overdue', overdue_at = now()
   where i.status in ('issued', 'partially_paid') and i.overdue_at is null
     and i.due_date < coalesce((payload->>'asOf')::date, (now() at time zone crm_jobs.organization_time_zone())::date)
  returning i.id, i.number, i.customer_id, i.balance, i.currency, i.due_date
$$;
grant execute on function crm_jobs.mark_overdue_invoices(jsonb) to crm_user;

-- Recurring billing ------------------------------------------------------------------------------------
create table if not exists crm.billing_schedules (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  project_id uuid,
  name text not null constraint billing_schedules_name_length check (length(btrim(name)) between 1 and 200),
  frequency text not null constraint billing_schedules_frequency_check check (frequency in ('monthly', 'quarterly', 'yearly')),
  items jsonb not null constraint billing_schedules_items_valid check (jsonb_typeof(items) = 'array' and jsonb_array_length(items) between 1 and 100),
  currency text not null constraint billing_schedules_currency_format check (currency ~ '^[A-Z]{3}$'),
  payment_terms_days int constraint billing_schedules_payment_terms_days_range check (payment_terms_days between 0 and 365),
  start_date date not null,
  next_date date not null,
  periods_billed int not null default 0,
  is_active boolean not null default true,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint billing_schedules_organization_id_id_key unique (organization_id, id),
  constraint billing_schedules_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint billing_schedules_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete set null (project_id)
);
create index if not exists billing_schedules_organization_id_customer_id_idx on crm.billing_schedules (organization_id, customer_id);
create index if not exists billing_schedules_organization_id_project_id_idx on crm.billing_schedules (organization_id, project_id);
create index if not exists billing_schedules_organization_id_next_date_idx on crm.billing_schedules (organization_id, next_date) where is_active;
create index if not exists billing_schedules_created_by_idx on crm.billing_schedules (created_by);
comment on table crm.billing_schedules is E'@behavior -delete\nRecurring billing of a customer: every month, quarter or year from startDate the daily invoices:recur job creates an invoice of these items (issued or a draft, per financeSettings.recurringAutoIssue). Stop it with isActive: false.';
comment on column crm.billing_schedules.organization_id is E'@behavior -insert -update';
comment on column crm.billing_schedules.items is 'The lines: [{"description": "Support plan", "quantity": "1", "unitPrice": "99.00", "taxRate": "20"}].';
comment on column crm.billing_schedules.currency is E'@hasDefault\nISO 4217 code; defaults to the organization''s settings.currency (else USD).';
comment on column crm.billing_schedules.next_date is E'@behavior -insert -update\nThe date of the next invoice: startDate + periodsBilled × the frequency (month ends stay month ends).';
comment on column crm.billing_schedules.periods_billed is E'@behavior -insert -update\nInvoices created so far.';
comment on column crm.billing_schedules.created_by is E'@behavior -insert -update';
comment on constraint billing_schedules_created_by_fkey on crm.billing_schedules is E'@fieldName creator\n@foreignFieldName createdBillingSchedules';

alter table crm.billing_schedules enable row level security;
drop policy if exists billing_schedules_select on crm.billing_schedules;
create policy billing_schedules_select on crm.billing_schedules for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:read')));
drop policy if exists billing_schedules_insert on crm.billing_schedules;
create policy billing_schedules_insert on crm.billing_schedules for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:create'))
              and exists (select 1 from crm.customers c where c.id = billing_schedules.customer_id)
              and (project_id is null or exists (select 1 from crm.projects p where p.id = billing_schedules.project_id)));
drop policy if exists billing_schedules_update on crm.billing_schedules;
create policy billing_schedules_update on crm.billing_schedules for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:update')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:update'))
              and (project_id is null or exists (select 1 from crm.projects p where p.id = billing_schedules.project_id)));
grant select on crm.billing_schedules to crm_user;
grant insert (customer_id, project_id, name, frequency, items, currency, payment_terms_days, start_date, is_active),
      update (project_id, name, items, payment_terms_days, is_active) on crm.billing_schedules to crm_user;

create or replace function crm_private.frequency_interval(frequency text) returns interval
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case frequency when 'monthly' then interval '1 month' when 'quarterly' then interval '3 months' else interval '1 year' end
$$;

-- The schedule's lines as invoice lines (checked on every write, so the job never meets a bad one).
create or replace function crm_private.schedule_lines(items jsonb) returns crm.invoice_line[]
  language sql immutable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(row(x->>'description', (x->>'quantity')::numeric, (x->>'unitPrice')::numeric,
                                 coalesce((x->>'taxRate')::numeric, 0), nullif(x->>'productId', '')::uuid)::crm.invoice_line order by n), '{}')
    from jsonb_array_elements(items) with ordinality e(x, n)
$$;

create or replace function crm_private.tg_billing_schedule_defaults() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  line crm.invoice_line;
begin
  if tg_op = 'INSERT' then
    new.currency := coalesce(new.currency, (select settings->>'currency' from crm.organizations where id = new.organization_id), 'USD');
    new.next_date := new.start_date;
    new.periods_billed := 0;
  end if;
  begin
    foreach line in array crm_private.schedule_lines(new.items) loop
      if coalesce(length(btrim(line.description)), 0) = 0 or line.quantity is null or line.quantity <= 0 or line.unit_price is null
         or line.unit_price < 0 or line.tax_rate not between 0 and 100 then
        raise exception 'bad line';
      end if;
    end loop;
  exception when others then
    raise exception 'Each item needs a description, a positive quantity, a unit price of zero or more and a tax rate between 0 and 100.'
      using errcode = 'CRVAL', column = 'items';
  end;
  return new;
end
$$;
drop trigger if exists _120_defaults on crm.billing_schedules;
create trigger _120_defaults before insert or update on crm.billing_schedules for each row execute function crm_private.tg_billing_schedule_defaults();
drop trigger if exists _100_updated_at on crm.billing_schedules;
create trigger _100_updated_at before update on crm.billing_schedules for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.billing_schedules;
create trigger _800_audit after insert or update or delete on crm.billing_schedules for each row execute function crm_private.tg_audit();

-- The job's step for one schedule and period, as the system principal (SECURITY DEFINER: it goes
-- through the same functions a person uses, which check invoices:create and invoices:update).
create or replace function crm.bill_schedule_period(schedule_id uuid, period int) returns crm.invoices
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  s crm.billing_schedules;
  i crm.invoices;
  d date;
begin
  perform crm_private.require_permission('invoices:create');
  select * into s from crm.billing_schedules x where x.id = bill_schedule_period.schedule_id and x.organization_id = crm.current_org_id() for update;
  if s.id is null then
    raise exception 'No such billing schedule.' using errcode = 'CRNFD', column = 'scheduleId';
  end if;
  select * into i from crm.invoices x where x.organization_id = s.organization_id and x.schedule_id = s.id and x.schedule_period = period;
  if i.id is not null then
    return i;  -- already billed: nothing twice
  end if;
  d := s.start_date + (period - 1) * crm_private.frequency_interval(s.frequency);
  i := crm.create_invoice(s.customer_id, crm_private.schedule_lines(s.items), s.currency, s.project_id, null, s.payment_terms_days,
                          format('%s — period %s (%s)', s.name, period, to_char(d, 'YYYY-MM-DD')));
  update crm.invoices x set schedule_id = s.id, schedule_period = period where x.id = i.id returning * into i;
  if (crm_private.finance_settings(s.organization_id)).recurring_auto_issue then
    i := crm.issue_invoice(i.id, d);
  end if;
  update crm.billing_schedules x set periods_billed = greatest(x.periods_billed, period),
         next_date = x.start_date + greatest(x.periods_billed, period) * crm_private.frequency_interval(x.frequency)
   where x.id = s.id;
  return i;
end
$$;
comment on function crm.bill_schedule_period(uuid, int) is E'@behavior -queryField -mutationField\nUsed by the invoices:recur job.';
grant execute on function crm.bill_schedule_period(uuid, int) to crm_user;

-- invoices:recur: every period of every active schedule whose date has come and that has no invoice
-- yet (periods missed while the worker was down are billed too, at most 24 per schedule and run).
create or replace function crm_jobs.bill_recurring(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  with today as (
    select coalesce((payload->>'asOf')::date, (now() at time zone crm_jobs.organization_time_zone())::date) as d
  ), due as (
    select s.id, n
      from crm.billing_schedules s, today
     cross join lateral generate_series(s.periods_billed + 1, s.periods_billed + 24) n
     where s.is_active and s.next_date <= today.d
       and s.start_date + (n - 1) * case s.frequency when 'monthly' then interval '1 month' when 'quarterly' then interval '3 months'
                                                      else interval '1 year' end <= today.d
  )
  select count(crm.bill_schedule_period(due.id, due.n)) from (select * from due order by id, n) due
$$;
grant execute on function crm_jobs.bill_recurring(jsonb) to crm_user;

-- Financial reports (reports:financial) --------------------------------------------------------------
-- They run with the caller's rights (row-level security decides which invoices and expenses count).
drop function if exists crm.finance_revenue_by_month(date, date);
drop function if exists crm.finance_receivables_aging(date);
drop function if exists crm.finance_expenses_by_category(date, date);
drop type if exists crm.finance_revenue_row cascade;
create type crm.finance_revenue_row as (month date, currency text, invoiced numeric, credited numeric, collected numeric, invoices int);
comment on type crm.finance_revenue_row is 'One month in one currency: invoiced (totals of invoices issued that month, void ones left out), credited (credit notes written that month) and collected (payments received that month).';
drop type if exists crm.finance_aging_row cascade;
create type crm.finance_aging_row as (currency text, "current" numeric, days_1_to_30 numeric, days_31_to_60 numeric, days_61_to_90 numeric,
                                      days_over_90 numeric, total numeric, invoices int);
comment on type crm.finance_aging_row is 'Open balances of one currency by days past due: current (not yet due), 1–30, 31–60, 61–90, over 90.';
drop type if exists crm.finance_expense_row cascade;
create type crm.finance_expense_row as (month date, category text, currency text, approved numeric, pending numeric, expenses int);
comment on type crm.finance_expense_row is 'Expenses of one month, category and currency: approved (approved and reimbursed) and pending (submitted).';

-- Revenue by month, per currency, in the organization's time zone.
create or replace function crm.finance_revenue_by_month(from_date date, to_date date) returns crm.finance_revenue_row[]
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text := crm_jobs.organization_time_zone();
  r crm.finance_revenue_row[];
begin
  if not crm.has_permission('reports:financial') then
    raise exception 'You need the reports:financial permission to do this.' using errcode = 'CRFBD';
  end if;
  if from_date is null or to_date is null or to_date < from_date or to_date - from_date > 3700 then
    raise exception 'Give a period of at most ten years: fromDate on or before toDate.' using errcode = 'CRVAL', column = 'to_date';
  end if;
  with inv as (
    select date_trunc('month', i.issue_date)::date as m, i.currency as cur, sum(i.total) as amount, count(*)::int as n
      from crm.invoices i
     where i.issued_at is not null and i.status <> 'void' and i.issue_date between from_date and to_date
     group by 1, 2
  ), cred as (
    select date_trunc('month', (c.created_at at time zone tz)::date)::date as m, c.currency as cur, sum(c.amount) as amount
      from crm.credit_notes c
     where c.created_at >= (from_date::timestamp at time zone tz) and c.created_at < ((to_date + 1)::timestamp at time zone tz)
     group by 1, 2
  ), col as (
    select date_trunc('month', (p.received_at at time zone tz)::date)::date as m, p.currency as cur, sum(p.amount) as amount
      from crm.invoice_payments p
     where p.received_at >= (from_date::timestamp at time zone tz) and p.received_at < ((to_date + 1)::timestamp at time zone tz)
     group by 1, 2
  ), keys as (select m, cur from inv union select m, cur from cred union select m, cur from col)
  select coalesce(array_agg(row(k.m, k.cur, coalesce(inv.amount, 0), coalesce(cred.amount, 0), coalesce(col.amount, 0),
                                coalesce(inv.n, 0))::crm.finance_revenue_row order by k.m, k.cur), '{}')
    into r
    from keys k
    left join inv on inv.m = k.m and inv.cur = k.cur
    left join cred on cred.m = k.m and cred.cur = k.cur
    left join col on col.m = k.m and col.cur = k.cur;
  return r;
end
$$;
comment on function crm.finance_revenue_by_month(date, date) is 'Revenue per month and currency (reports:financial): invoiced (issued, not void, by issue date), credited (credit notes) and collected (payments received).';

-- Receivables aging, per currency: open balances of issued invoices by days past due, as of a date.
create or replace function crm.finance_receivables_aging(as_of date default null) returns crm.finance_aging_row[]
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  d date := coalesce(as_of, (now() at time zone crm_jobs.organization_time_zone())::date);
  r crm.finance_aging_row[];
begin
  if not crm.has_permission('reports:financial') then
    raise exception 'You need the reports:financial permission to do this.' using errcode = 'CRFBD';
  end if;
  select coalesce(array_agg(x order by x.currency), '{}') into r from (
    select i.currency,
           coalesce(sum(i.balance) filter (where d - i.due_date <= 0), 0),
           coalesce(sum(i.balance) filter (where d - i.due_date between 1 and 30), 0),
           coalesce(sum(i.balance) filter (where d - i.due_date between 31 and 60), 0),
           coalesce(sum(i.balance) filter (where d - i.due_date between 61 and 90), 0),
           coalesce(sum(i.balance) filter (where d - i.due_date > 90), 0),
           sum(i.balance), count(*)::int
      from crm.invoices i
     where i.status in ('issued', 'partially_paid', 'overdue') and i.balance > 0 and i.issue_date <= d
     group by i.currency) x;
  return r;
end
$$;
comment on function crm.finance_receivables_aging(date) is 'Open balances of issued invoices per currency by days past due (reports:financial): current (not yet due), 1–30, 31–60, 61–90 and over 90 days, as of a date (default today).';

create or replace function crm.finance_expenses_by_category(from_date date, to_date date) returns crm.finance_expense_row[]
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.finance_expense_row[];
begin
  if not crm.has_permission('reports:financial') then
    raise exception 'You need the reports:financial permission to do this.' using errcode = 'CRFBD';
  end if;
  if from_date is null or to_date is null or to_date < from_date or to_date - from_date > 3700 then
    raise exception 'Give a period of at most ten years: fromDate on or before toDate.' using errcode = 'CRVAL', column = 'to_date';
  end if;
  select coalesce(array_agg(x order by x.month, x.category, x.currency), '{}') into r from (
    select date_trunc('month', e.spent_on)::date as month, c.name::text as category, e.currency,
           coalesce(sum(e.amount) filter (where e.status in ('approved', 'reimbursed')), 0),
           coalesce(sum(e.amount) filter (where e.status = 'submitted'), 0),
           count(*)::int
      from crm.expenses e join crm.expense_categories c on c.id = e.category_id
     where e.spent_on between from_date and to_date and e.status in ('submitted', 'approved', 'reimbursed')
     group by 1, 2, 3) x;
  return r;
end
$$;
comment on function crm.finance_expenses_by_category(date, date) is 'Expenses per month, category and currency (reports:financial): approved (approved and reimbursed) and pending (submitted).';

grant execute on function crm.finance_revenue_by_month(date, date), crm.finance_receivables_aging(date),
  crm.finance_expenses_by_category(date, date) to crm_user;

-- Payment provider webhook secret ----------------------------------------------------------------------
create table if not exists crm_private.payment_webhook_secrets (
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  provider text not null,
  secret text not null,
  updated_at timestamptz not null default now(),
  primary key (organization_id, provider)
);
alter table crm_private.payment_webhook_secrets enable row level security;
drop policy if exists no_access on crm_private.payment_webhook_secrets;
create policy no_access on crm_private.payment_webhook_secrets using (false);

drop function if exists crm.set_payment_webhook_secret(text, text);
create or replace function crm.set_payment_webhook_secret(provider text, secret text default null) returns boolean
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
  perform crm_private.require_permission('settings:manage');
  if set_payment_webhook_secret.provider is distinct from 'stripe' then
    raise exception 'The provider must be stripe.' using errcode = 'CRVAL', column = 'provider';
  end if;
  if set_payment_webhook_secret.secret is null then
    delete from crm_private.payment_webhook_secrets s where s.organization_id = crm.current_org_id() and s.provider = set_payment_webhook_secret.provider;
    return false;
  end if;
  if set_payment_webhook_secret.secret !~ '^whsec_[A-Za-z0-9+/=_-]{8,200}$' then
    raise exception 'A Stripe signing secret starts with whsec_.' using errcode = 'CRVAL', column = 'secret';
  end if;
  insert into crm_private.payment_webhook_secrets (organization_id, provider, secret) values (crm.current_org_id(), set_payment_webhook_secret.provider, set_payment_webhook_secret.secret)
  on conflict (organization_id, provider) do update set secret = excluded.secret, updated_at = now();
  return true;
end
$$;
comment on function crm.set_payment_webhook_secret(text, text) is 'Store (or, with secret null, remove) the signing secret of the organization''s Stripe webhook endpoint (settings:manage). It is never shown again.';
grant execute on function crm.set_payment_webhook_secret(text, text) to crm_user;

-- The payment webhook (called by the server with the owner's connection after the signature is
-- verified): the secret of an organization, and recording a payment as its system principal.
create or replace function crm_private.payment_webhook_secret(org uuid, provider text) returns text
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select s.secret from crm_private.payment_webhook_secrets s where s.organization_id = org and s.provider = payment_webhook_secret.provider
$$;

-- Returns the invoice's status after the payment, or raises (NOT_FOUND, VALIDATION, INVALID_STATE).
create or replace function crm_private.record_provider_payment(org uuid, provider text, event_id text, invoice_id uuid, amount_minor bigint,
                                                               currency text, reference text)
  returns crm.invoice_payments
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
  p crm.invoice_payments;
begin
  perform set_config('jwt.claims.org', org::text, true), set_config('jwt.claims.sub', crm.system_principal_id(org)::text, true);
  -- The invoice first, locked: replays of one event queue here, then find the payment recorded.
  select * into i from crm.invoices x where x.organization_id = org and x.id = record_provider_payment.invoice_id for update;
  if i.id is null then
    raise exception 'No such invoice.' using errcode = 'CRNFD', column = 'invoiceId';
  end if;
  select * into p from crm.invoice_payments x where x.organization_id = org and x.provider = record_provider_payment.provider
     and x.provider_event_id = event_id;
  if p.id is not null then
    return p;  -- a replay
  end if;
  if upper(currency) <> i.currency then
    raise exception 'The payment is in %, the invoice in %.', upper(currency), i.currency using errcode = 'CRVAL', column = 'currency';
  end if;
  return crm_private.invoice_payment(i, amount_minor / power(10::numeric, crm_private.currency_scale(i.currency)), 'card', reference,
                                     now(), null, null, provider, event_id);
end
$$;
