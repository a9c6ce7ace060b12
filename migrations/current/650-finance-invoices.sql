-- Finance: settings, invoices and their lines, gapless numbering, payments and credit notes.
-- Money follows commerce's rules (crm_private.round_money: half away from zero, once per line, to
-- the currency's minor unit). docs/finance.md describes the lifecycle.

-- Permission codes of this module (invoices:*, expenses:*, reports:financial are in the catalog since
-- 000002). The client codes let a member linked to one customer see that customer's records.
do $$
begin
  perform crm_private.register_permission('customers:read_client', 'View the one customer you are linked to as its client', array['Client Viewer']);
  perform crm_private.register_permission('invoices:read_client', 'View the invoices of the customer you are linked to as its client', array['Client Viewer']);
  perform crm_private.register_permission('projects:read_client', 'View the projects of the customer you are linked to as its client', array['Client Viewer']);
end
$$;

insert into crm_private.default_roles (name, description, position) values
  ('Client Viewer', 'A customer''s own contact: sees only the customer they are linked to, its invoices and its projects.', 6)
on conflict (name) do update set description = excluded.description, position = excluded.position;
-- Existing organizations get the new default role and its grants.
insert into crm.roles (organization_id, name, description, is_system)
select o.id, 'Client Viewer', d.description, true
  from crm.organizations o cross join crm_private.default_roles d
 where d.name = 'Client Viewer'
on conflict (organization_id, name) do nothing;
insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
select r.organization_id, r.id, g.permission_code, null
  from crm_private.default_role_grants g
  join crm.roles r on r.name::text = g.role_name and r.is_system
 where g.role_name = 'Client Viewer'
on conflict do nothing;

-- Finance settings: one row per organization ---------------------------------------------------------
create table if not exists crm.finance_settings (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  invoice_prefix text not null default 'INV' constraint finance_settings_invoice_prefix_format check (invoice_prefix ~ '^[A-Z][A-Z0-9]{0,9}$'),
  credit_note_prefix text not null default 'CN' constraint finance_settings_credit_note_prefix_format check (credit_note_prefix ~ '^[A-Z][A-Z0-9]{0,9}$'),
  number_padding int not null default 4 constraint finance_settings_number_padding_range check (number_padding between 4 and 10),
  default_payment_terms_days int not null default 30 constraint finance_settings_default_payment_terms_days_range check (default_payment_terms_days between 0 and 365),
  payment_instructions text not null default '' constraint finance_settings_payment_instructions_length check (length(payment_instructions) <= 2000),
  legal_name text not null default '' constraint finance_settings_legal_name_length check (length(legal_name) <= 300),
  billing_address text not null default '' constraint finance_settings_billing_address_length check (length(billing_address) <= 1000),
  tax_id text not null default '' constraint finance_settings_tax_id_length check (length(tax_id) <= 100),
  billing_email citext constraint finance_settings_billing_email_format check (billing_email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  pdf_header text not null default '' constraint finance_settings_pdf_header_length check (length(pdf_header) <= 500),
  pdf_footer text not null default '' constraint finance_settings_pdf_footer_length check (length(pdf_footer) <= 1000),
  pdf_accent_color text not null default '#1F4E79' constraint finance_settings_pdf_accent_color_format check (pdf_accent_color ~ '^#[0-9A-Fa-f]{6}$'),
  pdf_text_color text not null default '#222222' constraint finance_settings_pdf_text_color_format check (pdf_text_color ~ '^#[0-9A-Fa-f]{6}$'),
  recurring_auto_issue boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint finance_settings_organization_unique unique (organization_id)
);
comment on table crm.finance_settings is E'@behavior -insert -delete\nThe organization''s invoicing settings: number prefix and padding, payment terms and instructions, the billing details copied onto every issued invoice, the PDF''s header, footer and colours, and whether recurring billing issues its invoices. Edited with settings:manage.';
comment on column crm.finance_settings.organization_id is E'@behavior -insert -update';
comment on column crm.finance_settings.invoice_prefix is 'Invoice numbers are <prefix>-<year>-<number>: INV-2025-0001.';
comment on column crm.finance_settings.number_padding is 'Digits of the number part (at least 4; more digits are used when the count needs them).';
comment on column crm.finance_settings.recurring_auto_issue is 'Billing schedules create issued invoices (true) or drafts to review (false).';

alter table crm.finance_settings enable row level security;
drop policy if exists finance_settings_select on crm.finance_settings;
create policy finance_settings_select on crm.finance_settings for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists finance_settings_update on crm.finance_settings;
create policy finance_settings_update on crm.finance_settings for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));
grant select on crm.finance_settings to crm_user;
grant update (invoice_prefix, credit_note_prefix, number_padding, default_payment_terms_days, payment_instructions, legal_name,
              billing_address, tax_id, billing_email, pdf_header, pdf_footer, pdf_accent_color, pdf_text_color, recurring_auto_issue)
  on crm.finance_settings to crm_user;

create or replace function crm_private.tg_seed_finance() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.finance_settings (organization_id, legal_name) values (new.id, new.name) on conflict (organization_id) do nothing;
  insert into crm.expense_categories (organization_id, name, position)
  select new.id, v.name, v.pos from (values ('Travel', 1), ('Meals', 2), ('Software', 3), ('Marketing', 4), ('Office', 5), ('Other', 6)) v (name, pos)
  on conflict (organization_id, name) do nothing;
  return null;
end
$$;

-- Per-organization counters: one row per organization, kind (invoice, credit_note) and year, taken
-- FOR UPDATE by the issuing transaction (concurrent issuers queue on it; a rollback gives the number back).
create table if not exists crm_private.invoice_number_counters (
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  kind text not null,
  year int not null,
  last_value bigint not null,
  primary key (organization_id, kind, year)
);
alter table crm_private.invoice_number_counters enable row level security;
drop policy if exists no_access on crm_private.invoice_number_counters;
create policy no_access on crm_private.invoice_number_counters using (false);

-- Invoices -------------------------------------------------------------------------------------------
create table if not exists crm.invoices (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  project_id uuid,
  deal_id uuid,
  schedule_id uuid,
  schedule_period int,
  number text,
  status text not null default 'draft'
    constraint invoices_status_check check (status in ('draft', 'issued', 'partially_paid', 'paid', 'overdue', 'void')),
  issue_date date,
  due_date date,
  payment_terms_days int not null default 30 constraint invoices_payment_terms_days_range check (payment_terms_days between 0 and 365),
  payment_instructions text not null default '' constraint invoices_payment_instructions_length check (length(payment_instructions) <= 2000),
  currency text not null constraint invoices_currency_format check (currency ~ '^[A-Z]{3}$' and currency not in ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND', 'CLF', 'UYW')),
  subtotal numeric(16, 2) not null default 0,
  tax_total numeric(16, 2) not null default 0,
  total numeric(16, 2) not null default 0,
  credited_amount numeric(16, 2) not null default 0,
  amount_paid numeric(16, 2) not null default 0,
  balance numeric(16, 2) generated always as (total - credited_amount - amount_paid) stored,
  notes text constraint invoices_notes_length check (length(notes) <= 5000),
  billing_snapshot jsonb,
  issued_at timestamptz,
  issued_by uuid references crm.users (id) on delete set null,
  paid_at timestamptz,
  overdue_at timestamptz,
  voided_at timestamptz,
  void_reason text constraint invoices_void_reason_length check (length(void_reason) <= 1000),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint invoices_total_valid check (total = subtotal + tax_total and subtotal >= 0 and tax_total >= 0),
  constraint invoices_credited_amount_range check (credited_amount >= 0 and credited_amount <= total),
  constraint invoices_amount_paid_range check (amount_paid >= 0 and amount_paid <= total),
  constraint invoices_number_valid check ((number is null) = (status = 'draft' or (status = 'void' and issued_at is null))),
  constraint invoices_dates_order check (due_date is null or issue_date is null or due_date >= issue_date),
  constraint invoices_number_unique unique (organization_id, number),
  constraint invoices_organization_id_id_key unique (organization_id, id),
  constraint invoices_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete restrict,
  constraint invoices_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete set null (project_id),
  constraint invoices_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete set null (deal_id)
);
create index if not exists invoices_organization_id_customer_id_idx on crm.invoices (organization_id, customer_id, issue_date);
create index if not exists invoices_organization_id_project_id_idx on crm.invoices (organization_id, project_id);
create index if not exists invoices_organization_id_deal_id_idx on crm.invoices (organization_id, deal_id);
create index if not exists invoices_organization_id_status_idx on crm.invoices (organization_id, status, due_date);
create index if not exists invoices_organization_id_issue_date_idx on crm.invoices (organization_id, issue_date);
create index if not exists invoices_organization_id_due_date_idx on crm.invoices (organization_id, due_date);
create index if not exists invoices_organization_id_created_at_idx on crm.invoices (organization_id, created_at);
create unique index if not exists invoices_schedule_period_unique on crm.invoices (organization_id, schedule_id, schedule_period) where schedule_id is not null;
create index if not exists invoices_organization_id_schedule_id_idx on crm.invoices (organization_id, schedule_id);
create index if not exists invoices_created_by_idx on crm.invoices (created_by);
create index if not exists invoices_issued_by_idx on crm.invoices (issued_by);
comment on table crm.invoices is E'@behavior -insert -delete +aggregates\nA bill to a customer. Created with createInvoice or createInvoiceFromOrders (a draft without a number), numbered by issueInvoice, paid with recordInvoicePayment, corrected with creditInvoice, cancelled with voidInvoice. See docs/finance.md.';
comment on column crm.invoices.organization_id is E'@behavior -update';
comment on column crm.invoices.customer_id is E'@behavior -update';
comment on column crm.invoices.project_id is E'@behavior -update\nThe project it bills (set when it is created).';
comment on column crm.invoices.deal_id is E'@behavior -update\nThe deal it bills (set when it is created).';
comment on column crm.invoices.schedule_id is E'@behavior -update\nThe billing schedule that created it.';
comment on column crm.invoices.schedule_period is E'@behavior -update\nWhich period of its billing schedule it bills (1 = the first).';
comment on column crm.invoices.number is E'@behavior -update\n<prefix>-<year>-<number>, gapless per organization and year, given by issueInvoice; drafts have none; a void invoice keeps it.';
comment on column crm.invoices.status is E'@behavior -update\ndraft → issued → partially_paid → paid; issued or partially_paid → overdue (the daily invoices:overdue job); draft, issued, overdue → void; partially_paid and paid → void only once fully credited.';
comment on column crm.invoices.issue_date is E'@behavior -update';
comment on column crm.invoices.currency is E'@behavior -update';
comment on column crm.invoices.subtotal is E'@behavior -update\nSum of the lines'' subtotals.';
comment on column crm.invoices.tax_total is E'@behavior -update\nSum of the lines'' tax, each rounded half-up to the minor unit.';
comment on column crm.invoices.total is E'@behavior -update\nsubtotal + taxTotal.';
comment on column crm.invoices.credited_amount is E'@behavior -update\nCredit notes issued against it (creditInvoice).';
comment on column crm.invoices.amount_paid is E'@behavior -update\nPayments recorded (recordInvoicePayment, the payment webhook); a payment is never more than the balance.';
comment on column crm.invoices.balance is E'@behavior -insert -update\nWhat is still due: total − creditedAmount − amountPaid (below zero: owed back to the customer after a credit note).';
comment on column crm.invoices.billing_snapshot is E'@behavior -update\nThe organization''s and the customer''s billing details as they were when the invoice was issued (the PDF prints these).';
comment on column crm.invoices.issued_at is E'@behavior -update';
comment on column crm.invoices.issued_by is E'@behavior -update';
comment on column crm.invoices.paid_at is E'@behavior -update';
comment on column crm.invoices.overdue_at is E'@behavior -update\nWhen the invoices:overdue job found it past due (and notified).';
comment on column crm.invoices.voided_at is E'@behavior -update';
comment on column crm.invoices.void_reason is E'@behavior -update';
comment on column crm.invoices.created_by is E'@behavior -update';
comment on constraint invoices_created_by_fkey on crm.invoices is E'@fieldName creator\n@foreignFieldName createdInvoices';
comment on constraint invoices_issued_by_fkey on crm.invoices is E'@fieldName issuer\n@foreignFieldName issuedInvoices';

create table if not exists crm.invoice_items (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  invoice_id uuid not null,
  line_no int not null constraint invoice_items_line_no_range check (line_no between 1 and 1000),
  description text not null constraint invoice_items_description_length check (length(btrim(description)) between 1 and 1000),
  product_id uuid,
  order_id uuid,
  quantity numeric(12, 3) not null constraint invoice_items_quantity_range check (quantity > 0),
  unit_price numeric(16, 4) not null constraint invoice_items_unit_price_range check (unit_price >= 0 and unit_price < 1000000000),
  tax_rate numeric(7, 4) not null default 0 constraint invoice_items_tax_rate_range check (tax_rate between 0 and 100),
  line_subtotal numeric(16, 2) not null,
  tax_amount numeric(16, 2) not null,
  line_total numeric(16, 2) not null,
  constraint invoice_items_line_total_valid check (line_total = line_subtotal + tax_amount),
  constraint invoice_items_line_no_unique unique (organization_id, invoice_id, line_no),
  constraint invoice_items_organization_id_id_key unique (organization_id, id),
  constraint invoice_items_invoice_fkey foreign key (organization_id, invoice_id) references crm.invoices (organization_id, id) on delete cascade,
  constraint invoice_items_product_fkey foreign key (organization_id, product_id) references crm.products (organization_id, id) on delete restrict,
  constraint invoice_items_order_fkey foreign key (organization_id, order_id) references crm.orders (organization_id, id) on delete restrict
);
create index if not exists invoice_items_organization_id_product_id_idx on crm.invoice_items (organization_id, product_id);
create index if not exists invoice_items_organization_id_order_id_idx on crm.invoice_items (organization_id, order_id);
comment on table crm.invoice_items is E'@behavior -insert -update -delete\nA line of an invoice. Written by createInvoice / createInvoiceFromOrders; never changed once the invoice is issued (correct with creditInvoice).';
comment on column crm.invoice_items.line_subtotal is 'quantity × unitPrice, rounded half-up to the currency''s minor unit.';
comment on column crm.invoice_items.tax_amount is 'lineSubtotal × taxRate / 100, rounded half-up to the minor unit.';

create table if not exists crm.invoice_payments (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  invoice_id uuid not null,
  customer_id uuid not null,
  amount numeric(16, 2) not null constraint invoice_payments_amount_range check (amount > 0),
  currency text not null constraint invoice_payments_currency_format check (currency ~ '^[A-Z]{3}$'),
  method text not null constraint invoice_payments_method_check check (method in ('cash', 'check', 'card', 'bank_transfer', 'other')),
  reference text constraint invoice_payments_reference_length check (length(reference) <= 200),
  note text constraint invoice_payments_note_length check (length(note) <= 2000),
  provider text constraint invoice_payments_provider_check check (provider in ('stripe')),
  provider_event_id text constraint invoice_payments_provider_event_id_length check (length(provider_event_id) <= 200),
  idempotency_key text constraint invoice_payments_idempotency_key_length check (length(idempotency_key) between 1 and 200),
  received_at timestamptz not null default now(),
  recorded_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  constraint invoice_payments_organization_id_id_key unique (organization_id, id),
  constraint invoice_payments_invoice_fkey foreign key (organization_id, invoice_id) references crm.invoices (organization_id, id) on delete cascade,
  constraint invoice_payments_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade
);
create unique index if not exists invoice_payments_idempotency_key_unique on crm.invoice_payments (organization_id, idempotency_key) where idempotency_key is not null;
create unique index if not exists invoice_payments_provider_event_id_unique on crm.invoice_payments (organization_id, provider, provider_event_id) where provider_event_id is not null;
create index if not exists invoice_payments_organization_id_invoice_id_idx on crm.invoice_payments (organization_id, invoice_id, received_at);
create index if not exists invoice_payments_organization_id_customer_id_idx on crm.invoice_payments (organization_id, customer_id);
create index if not exists invoice_payments_organization_id_received_at_idx on crm.invoice_payments (organization_id, received_at);
create index if not exists invoice_payments_recorded_by_idx on crm.invoice_payments (recorded_by);
comment on table crm.invoice_payments is E'@behavior -insert -update -delete +aggregates\nMoney received against an invoice: recordInvoicePayment or the payment provider''s webhook. Never edited.';
comment on column crm.invoice_payments.provider_event_id is 'The payment provider''s event id (a replayed event records nothing).';
comment on constraint invoice_payments_recorded_by_fkey on crm.invoice_payments is E'@fieldName recorder\n@foreignFieldName recordedInvoicePayments';

create table if not exists crm.credit_notes (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  invoice_id uuid not null,
  number text not null,
  amount numeric(16, 2) not null constraint credit_notes_amount_range check (amount > 0),
  currency text not null constraint credit_notes_currency_format check (currency ~ '^[A-Z]{3}$'),
  reason text not null constraint credit_notes_reason_length check (length(btrim(reason)) between 1 and 1000),
  issued_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  constraint credit_notes_number_unique unique (organization_id, number),
  constraint credit_notes_organization_id_id_key unique (organization_id, id),
  constraint credit_notes_invoice_fkey foreign key (organization_id, invoice_id) references crm.invoices (organization_id, id) on delete cascade
);
create index if not exists credit_notes_organization_id_invoice_id_idx on crm.credit_notes (organization_id, invoice_id);
create index if not exists credit_notes_issued_by_idx on crm.credit_notes (issued_by);
comment on table crm.credit_notes is E'@behavior -insert -update -delete\nA correction of an issued invoice (creditInvoice): lowers what the customer owes; numbered CN-<year>-<number>.';
comment on constraint credit_notes_issued_by_fkey on crm.credit_notes is E'@fieldName issuer\n@foreignFieldName issuedCreditNotes';

-- Client principals: a member linked to one customer (see 690-finance-client-viewer.sql).
alter table crm.organization_memberships add column if not exists client_customer_id uuid;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'organization_memberships_client_customer_fkey') then
    alter table crm.organization_memberships add constraint organization_memberships_client_customer_fkey
      foreign key (organization_id, client_customer_id) references crm.customers (organization_id, id) on delete set null (client_customer_id);
  end if;
end
$$;
create index if not exists organization_memberships_organization_id_client_customer_id_idx
  on crm.organization_memberships (organization_id, client_customer_id);
comment on column crm.organization_memberships.client_customer_id is E'@behavior -insert -update\nA client principal: the one customer this member belongs to (set with setClientCustomer). Such a member sees only that customer, its invoices and its projects.';
comment on constraint organization_memberships_client_customer_fkey on crm.organization_memberships is E'@fieldName clientCustomer\n@foreignFieldName clientMemberships';

-- The customer the caller is linked to as a client principal, or null (policy helper).
create or replace function crm.client_customer_id() returns uuid
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select m.client_customer_id from crm.organization_memberships m
   where m.user_id = crm.current_user_id() and m.organization_id = crm.current_org_id() and m.is_active
$$;
comment on function crm.client_customer_id() is E'@behavior -queryField -mutationField\nThe customer the caller is linked to as a client principal (policy helper).';
grant execute on function crm.client_customer_id() to crm_user;

-- Row-level security -------------------------------------------------------------------------------
-- Invoices are seen with invoices:read (as far as their customer is visible), by a client principal
-- for its own customer (invoices:read_client), and by whoever created them.
alter table crm.invoices enable row level security;
alter table crm.invoice_items enable row level security;
alter table crm.invoice_payments enable row level security;
alter table crm.credit_notes enable row level security;

drop policy if exists invoices_select on crm.invoices;
create policy invoices_select on crm.invoices for select
  using (organization_id = (select crm.current_org_id())
         and (((select crm.has_permission('invoices:read')) or created_by = (select crm.current_user_id()))
              and ((select crm.has_permission('customers:read_all')) or customer_id = any ((select crm.visible_customer_ids())::uuid[]))
              or ((select crm.has_permission('invoices:read_client')) and customer_id = (select crm.client_customer_id()))));
drop policy if exists invoices_update on crm.invoices;
create policy invoices_update on crm.invoices for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:update')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('invoices:update')));

drop policy if exists invoice_items_select on crm.invoice_items;
create policy invoice_items_select on crm.invoice_items for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.invoices i where i.id = invoice_items.invoice_id));
drop policy if exists invoice_payments_select on crm.invoice_payments;
create policy invoice_payments_select on crm.invoice_payments for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.invoices i where i.id = invoice_payments.invoice_id));
drop policy if exists credit_notes_select on crm.credit_notes;
create policy credit_notes_select on crm.credit_notes for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.invoices i where i.id = credit_notes.invoice_id));

grant select on crm.invoices, crm.invoice_items, crm.invoice_payments, crm.credit_notes to crm_user;
-- Drafts are edited in place (the guard refuses it after issue, except the notes).
revoke update (project_id, deal_id) on crm.invoices from crm_user;
grant update (notes, payment_terms_days, payment_instructions, due_date) on crm.invoices to crm_user;
-- The invoices:overdue job (as the system principal, under RLS) moves invoices past due to overdue;
-- the guard lets a request do nothing else with the status.
grant update (status, overdue_at) on crm.invoices to crm_user;

-- Status machine and guards ---------------------------------------------------------------------------
create or replace function crm_private.invoice_transition_allowed(from_status text, to_status text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select from_status = to_status or (from_status, to_status) in (
    ('draft', 'issued'), ('draft', 'void'),
    ('issued', 'partially_paid'), ('issued', 'paid'), ('issued', 'overdue'), ('issued', 'void'),
    ('partially_paid', 'paid'), ('partially_paid', 'overdue'), ('partially_paid', 'void'),
    ('overdue', 'paid'), ('overdue', 'void'),
    ('paid', 'void'))
$$;

create or replace function crm_private.tg_invoice_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm_private.invoice_transition_allowed(old.status, new.status) then
    raise exception 'An invoice cannot go from % to %.', old.status, new.status using errcode = 'CRSTA', column = 'status';
  end if;
  -- Outside the business functions (SECURITY DEFINER, run as the owner) the status only moves to
  -- overdue, and only past the due date.
  if current_user = 'crm_user' and (new.status is distinct from old.status or new.overdue_at is distinct from old.overdue_at)
     and not (new.status = 'overdue' and old.status in ('issued', 'partially_paid') and new.due_date < current_date + 1
              and new.overdue_at is not null) then
    raise exception 'The status of an invoice changes through issueInvoice, recordInvoicePayment, creditInvoice and voidInvoice.'
      using errcode = 'CRSTA', column = 'status';
  end if;
  if old.status <> 'draft' then
    if (new.customer_id, new.currency, new.subtotal, new.tax_total, new.total, new.issue_date, new.due_date, new.payment_terms_days,
        new.payment_instructions, new.billing_snapshot, new.project_id, new.deal_id)
       is distinct from (old.customer_id, old.currency, old.subtotal, old.tax_total, old.total, old.issue_date, old.due_date,
        old.payment_terms_days, old.payment_instructions, old.billing_snapshot, old.project_id, old.deal_id) then
      raise exception 'An issued invoice is never edited; correct it with a credit note.' using errcode = 'CRSTA';
    end if;
    if new.number is distinct from old.number then
      raise exception 'An invoice keeps its number.' using errcode = 'CRSTA', column = 'number';
    end if;
  elsif new.customer_id is distinct from old.customer_id or new.currency is distinct from old.currency then
    raise exception 'An invoice''s customer and currency do not change.' using errcode = 'CRSTA';
  end if;
  if new.project_id is distinct from old.project_id and new.project_id is not null and not exists (
       select 1 from crm.projects p where p.organization_id = new.organization_id and p.id = new.project_id and p.customer_id = new.customer_id) then
    raise exception 'The project must be one of the customer''s.' using errcode = 'CRVAL', column = 'project_id';
  end if;
  if new.deal_id is distinct from old.deal_id and new.deal_id is not null and not exists (
       select 1 from crm.deals d where d.organization_id = new.organization_id and d.id = new.deal_id and d.customer_id = new.customer_id) then
    raise exception 'The deal must be one of the customer''s.' using errcode = 'CRVAL', column = 'deal_id';
  end if;
  return new;
end
$$;
drop trigger if exists _110_guard on crm.invoices;
create trigger _110_guard before update on crm.invoices for each row execute function crm_private.tg_invoice_guard();

-- Lines change only while their invoice is a draft (also for the owner).
create or replace function crm_private.tg_invoice_items_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  st text;
begin
  select i.status into st from crm.invoices i
   where i.organization_id = coalesce(new.organization_id, old.organization_id) and i.id = coalesce(new.invoice_id, old.invoice_id);
  if st is not null and st <> 'draft' then
    raise exception 'The lines of an issued invoice are never edited; correct it with a credit note.' using errcode = 'CRSTA';
  end if;
  return coalesce(new, old);
end
$$;
drop trigger if exists _200_guard on crm.invoice_items;
create trigger _200_guard before insert or update or delete on crm.invoice_items for each row execute function crm_private.tg_invoice_items_guard();

do $$
declare
  t text;
begin
  foreach t in array array['invoices', 'finance_settings'] loop
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
  end loop;
  foreach t in array array['invoices', 'invoice_items', 'invoice_payments', 'credit_notes', 'finance_settings'] loop
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;

-- An invoice is a financial record: a customer with invoices cannot be purged.
create or replace function crm_private.tg_customer_has_invoices() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from crm.invoices i where i.organization_id = old.organization_id and i.customer_id = old.id) then
    raise exception 'This customer has invoices, which are kept; it cannot be purged (it stays deleted).' using errcode = 'CRSTA', column = 'id';
  end if;
  return old;
end
$$;
drop trigger if exists _200_has_invoices on crm.customers;
create trigger _200_has_invoices before delete on crm.customers for each row execute function crm_private.tg_customer_has_invoices();

-- Functions ----------------------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = 'crm' and t.typname = 'invoice_line') then
    create type crm.invoice_line as (description text, quantity numeric, unit_price numeric, tax_rate numeric, product_id uuid);
  end if;
end
$$;
comment on type crm.invoice_line is 'A line for createInvoice: a description, quantity (up to three decimals), unit price (up to four decimals) and tax rate in percent; optionally the product it sells.';

create or replace function crm_private.finance_settings(org uuid) returns crm.finance_settings
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select s from crm.finance_settings s where s.organization_id = org
$$;

-- The next gapless number of a kind for the organization's year. The counter row stays locked until
-- the calling transaction ends.
drop function if exists crm_private.next_invoice_number(uuid, text, int);
create or replace function crm_private.next_invoice_number(org uuid, number_kind text, y int) returns text
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  s crm.finance_settings := crm_private.finance_settings(org);
  n bigint;
begin
  insert into crm_private.invoice_number_counters as c (organization_id, kind, year, last_value) values (org, number_kind, y, 1)
  on conflict (organization_id, kind, year) do update set last_value = c.last_value + 1
  returning c.last_value into n;
  return format('%s-%s-%s', case number_kind when 'invoice' then coalesce(s.invoice_prefix, 'INV') else coalesce(s.credit_note_prefix, 'CN') end,
                y, lpad(n::text, greatest(coalesce(s.number_padding, 4), length(n::text)), '0'));
end
$$;

-- The invoice row for a business function, visible under the invoices policy's rules (NOT_FOUND
-- otherwise), locked FOR UPDATE when asked.
create or replace function crm_private.visible_invoice(invoice_id uuid, lock boolean default false) returns crm.invoices
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
begin
  if lock then
    select * into i from crm.invoices x where x.id = visible_invoice.invoice_id and x.organization_id = crm.current_org_id() for update;
  else
    select * into i from crm.invoices x where x.id = visible_invoice.invoice_id and x.organization_id = crm.current_org_id();
  end if;
  if i.id is null
     or not (crm.has_permission('invoices:read') or i.created_by = crm.current_user_id())
     or not (crm.has_permission('customers:read_all') or i.customer_id = any (crm.visible_customer_ids())) then
    raise exception 'No such invoice.' using errcode = 'CRNFD', column = 'invoiceId';
  end if;
  return i;
end
$$;

-- Recomputes a draft's totals from its lines (sums of amounts already rounded per line: exact).
create or replace function crm_private.invoice_recompute(inv uuid) returns crm.invoices
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.invoices i set
    subtotal = t.subtotal, tax_total = t.tax_total, total = t.subtotal + t.tax_total
    from (select coalesce(sum(line_subtotal), 0) as subtotal, coalesce(sum(tax_amount), 0) as tax_total
            from crm.invoice_items where invoice_id = inv) t
   where i.id = inv
  returning i.*
$$;

-- Adds lines to a draft: amounts rounded half-up to the currency's minor unit, once per line.
create or replace function crm_private.invoice_add_lines(i crm.invoices, items crm.invoice_line[]) returns void
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  line crm.invoice_line;
  k int := coalesce((select max(line_no) from crm.invoice_items x where x.invoice_id = i.id), 0);
  pos int := 0;
begin
  foreach line in array coalesce(items, '{}') loop
    pos := pos + 1;
    if line.description is null or length(btrim(line.description)) = 0 then
      raise exception 'Line % needs a description.', pos using errcode = 'CRVAL', column = 'items';
    end if;
    if line.quantity is null or line.quantity <= 0 or line.quantity <> round(line.quantity, 3) then
      raise exception 'Line %: the quantity must be positive, with at most three decimals.', pos using errcode = 'CRVAL', column = 'items';
    end if;
    if line.unit_price is null or line.unit_price < 0 or line.unit_price <> round(line.unit_price, 4) then
      raise exception 'Line %: the unit price must be zero or more, with at most four decimals.', pos using errcode = 'CRVAL', column = 'items';
    end if;
    if coalesce(line.tax_rate, 0) not between 0 and 100 then
      raise exception 'Line %: the tax rate is a percentage between 0 and 100.', pos using errcode = 'CRVAL', column = 'items';
    end if;
    if line.product_id is not null and not exists (select 1 from crm.products p where p.organization_id = i.organization_id and p.id = line.product_id) then
      raise exception 'Line %: no such product.', pos using errcode = 'CRVAL', column = 'items';
    end if;
    k := k + 1;
    insert into crm.invoice_items (organization_id, invoice_id, line_no, description, product_id, quantity, unit_price, tax_rate,
                                   line_subtotal, tax_amount, line_total)
    select i.organization_id, i.id, k, btrim(line.description), line.product_id, line.quantity, line.unit_price, coalesce(line.tax_rate, 0),
           s.sub, s.tax, s.sub + s.tax
      from (select crm_private.round_money(line.quantity * line.unit_price, i.currency) as sub) q
      cross join lateral (select q.sub, crm_private.round_money(q.sub * coalesce(line.tax_rate, 0) / 100, i.currency) as tax) s;
  end loop;
end
$$;

create or replace function crm_private.invoice_draft(customer_id uuid, currency text, project_id uuid, deal_id uuid,
                                                     payment_terms_days int, notes text) returns crm.invoices
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  s crm.finance_settings := crm_private.finance_settings(org);
  c crm.customers;
  i crm.invoices;
  cur text;
begin
  c := crm_private.visible_customer(invoice_draft.customer_id);
  cur := coalesce(invoice_draft.currency, (select o.settings->>'currency' from crm.organizations o where o.id = org), 'USD');
  if not crm_private.currency_supported(cur) then
    raise exception 'Unsupported currency %.', cur using errcode = 'CRVAL', column = 'currency';
  end if;
  if invoice_draft.project_id is not null and not exists (
       select 1 from crm.projects p where p.organization_id = org and p.id = invoice_draft.project_id and p.customer_id = c.id and p.deleted_at is null) then
    raise exception 'The project must be one of the customer''s.' using errcode = 'CRVAL', column = 'project_id';
  end if;
  if invoice_draft.deal_id is not null and not exists (
       select 1 from crm.deals d where d.organization_id = org and d.id = invoice_draft.deal_id and d.customer_id = c.id) then
    raise exception 'The deal must be one of the customer''s.' using errcode = 'CRVAL', column = 'deal_id';
  end if;
  if coalesce(invoice_draft.payment_terms_days, 0) not between 0 and 365 then
    raise exception 'Payment terms are 0 to 365 days.' using errcode = 'CRVAL', column = 'payment_terms_days';
  end if;
  insert into crm.invoices (organization_id, customer_id, project_id, deal_id, currency, payment_terms_days, payment_instructions, notes)
  values (org, c.id, invoice_draft.project_id, invoice_draft.deal_id, cur,
          coalesce(invoice_draft.payment_terms_days, s.default_payment_terms_days, 30), coalesce(s.payment_instructions, ''),
          nullif(btrim(invoice_draft.notes), ''))
  returning * into i;
  return i;
end
$$;

-- createInvoice: a draft with its lines.
create or replace function crm.create_invoice(customer_id uuid, items crm.invoice_line[], currency text default null,
                                              project_id uuid default null, deal_id uuid default null,
                                              payment_terms_days int default null, notes text default null)
  returns crm.invoices
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
begin
  perform crm_private.require_permission('invoices:create');
  if coalesce(array_length(items, 1), 0) = 0 then
    raise exception 'An invoice needs at least one line.' using errcode = 'CRVAL', column = 'items';
  end if;
  i := crm_private.invoice_draft(create_invoice.customer_id, create_invoice.currency, create_invoice.project_id, create_invoice.deal_id,
                                 create_invoice.payment_terms_days, create_invoice.notes);
  perform crm_private.invoice_add_lines(i, items);
  return crm_private.invoice_recompute(i.id);
end
$$;
comment on function crm.create_invoice(uuid, crm.invoice_line[], text, uuid, uuid, int, text) is 'Create a draft invoice with its lines (invoices:create). It has no number until issueInvoice.';

-- createInvoiceFromOrders: a draft billing orders of one customer, one line per order line (the
-- order's discounts as a line each); an order already on a live invoice cannot be billed twice.
create or replace function crm.create_invoice_from_orders(order_ids uuid[], payment_terms_days int default null, notes text default null)
  returns crm.invoices
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  o crm.orders;
  first crm.orders;
  i crm.invoices;
  oid uuid;
  k int := 0;
begin
  perform crm_private.require_permission('invoices:create');
  if coalesce(array_length(order_ids, 1), 0) = 0 then
    raise exception 'Name at least one order.' using errcode = 'CRVAL', column = 'orderIds';
  end if;
  foreach oid in array order_ids loop
    o := crm_private.visible_order(oid, true);
    if first.id is null then
      first := o;
    elsif o.customer_id <> first.customer_id or o.currency <> first.currency then
      raise exception 'The orders must be of one customer and one currency.' using errcode = 'CRVAL', column = 'orderIds';
    end if;
    if o.status in ('cancelled', 'refunded') then
      raise exception 'Order % is %; it is not billed.', o.order_number, o.status using errcode = 'CRSTA', column = 'orderIds';
    end if;
    if exists (select 1 from crm.invoice_items x join crm.invoices v on v.id = x.invoice_id
                where x.organization_id = org and x.order_id = o.id and v.status <> 'void') then
      raise exception 'Order % is already on an invoice.', o.order_number using errcode = 'CRCNF', column = 'orderIds';
    end if;
  end loop;
  i := crm_private.invoice_draft(first.customer_id, first.currency, null, first.deal_id, create_invoice_from_orders.payment_terms_days,
                                 create_invoice_from_orders.notes);
  -- The order lines already carry their amounts (discount spread over the lines, tax per line):
  -- billed as they are, so the invoice total is the orders' total to the cent.
  insert into crm.invoice_items (organization_id, invoice_id, line_no, description, product_id, order_id, quantity, unit_price, tax_rate,
                                 line_subtotal, tax_amount, line_total)
  select org, i.id, row_number() over (order by array_position(order_ids, oi.order_id), oi.line_no),
         format('%s — %s (%s)', ord.order_number, oi.product_name, oi.sku), oi.product_id, oi.order_id, oi.quantity,
         round((oi.line_subtotal - oi.line_discount) / oi.quantity, 4), oi.tax_rate,
         oi.line_subtotal - oi.line_discount, oi.tax_amount, oi.line_total
    from crm.order_items oi join crm.orders ord on ord.id = oi.order_id
   where oi.organization_id = org and oi.order_id = any (order_ids);
  return crm_private.invoice_recompute(i.id);
end
$$;
comment on function crm.create_invoice_from_orders(uuid[], int, text) is 'Create a draft invoice billing orders of one customer (invoices:create): one line per order line at its net amount and tax; an order is billed once.';

-- issueInvoice: numbers the draft from the organization's counter (locked until commit: concurrent
-- issues queue and numbers stay gapless), dates it, and takes the billing snapshot.
create or replace function crm.issue_invoice(invoice_id uuid, issue_date date default null, due_date date default null)
  returns crm.invoices
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
  s crm.finance_settings;
  c crm.customers;
  d date;
  due date;
begin
  perform crm_private.require_permission('invoices:update');
  i := crm_private.visible_invoice(issue_invoice.invoice_id, true);
  if i.status <> 'draft' then
    raise exception 'Only a draft can be issued (this invoice is %).', i.status using errcode = 'CRSTA', column = 'invoiceId';
  end if;
  if not exists (select 1 from crm.invoice_items x where x.invoice_id = i.id) then
    raise exception 'An invoice needs at least one line.' using errcode = 'CRVAL', column = 'invoiceId';
  end if;
  d := coalesce(issue_invoice.issue_date, (now() at time zone crm_private.org_timezone(i.organization_id))::date);
  due := coalesce(issue_invoice.due_date, i.due_date, d + i.payment_terms_days);
  if due < d then
    raise exception 'The due date cannot be before the issue date.' using errcode = 'CRVAL', column = 'due_date';
  end if;
  s := crm_private.finance_settings(i.organization_id);
  select * into c from crm.customers x where x.id = i.customer_id;
  update crm.invoices x set
    status = 'issued',
    number = crm_private.next_invoice_number(i.organization_id, 'invoice', extract(year from d)::int),
    issue_date = d, due_date = due, issued_at = now(), issued_by = crm.current_user_id(),
    billing_snapshot = jsonb_build_object(
      'organization', jsonb_build_object(
        'name', coalesce(nullif(s.legal_name, ''), (select o.name from crm.organizations o where o.id = i.organization_id)),
        'address', s.billing_address, 'taxId', s.tax_id, 'email', s.billing_email),
      'customer', jsonb_build_object('name', c.name, 'email', c.email, 'phone', c.phone, 'address', c.billing_address),
      'paymentInstructions', i.payment_instructions,
      'items', (select jsonb_agg(jsonb_build_object('lineNo', x.line_no, 'description', x.description, 'quantity', x.quantity::text,
                                                    'unitPrice', x.unit_price::text, 'taxRate', x.tax_rate::text, 'lineSubtotal', x.line_subtotal::text,
                                                    'taxAmount', x.tax_amount::text, 'lineTotal', x.line_total::text) order by x.line_no)
                  from crm.invoice_items x where x.invoice_id = i.id))
   where x.id = i.id
  returning * into i;
  return i;
end
$$;
comment on function crm.issue_invoice(uuid, date, date) is 'Issue a draft (invoices:update): gives it the next gapless number of its issue year, the issue date (default today, in the organization''s time zone), the due date (default issue date + payment terms) and the billing snapshot. Its lines never change afterwards.';

-- voidInvoice: cancels an invoice. It keeps its number. A paid or partially paid invoice is voided
-- only once credit notes cover it in full.
create or replace function crm.void_invoice(invoice_id uuid, reason text) returns crm.invoices
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
begin
  perform crm_private.require_permission('invoices:update');
  i := crm_private.visible_invoice(void_invoice.invoice_id, true);
  if reason is null or length(btrim(reason)) = 0 then
    raise exception 'Say why the invoice is void.' using errcode = 'CRVAL', column = 'reason';
  end if;
  if length(reason) > 1000 then
    raise exception 'The reason is too long (at most 1,000 characters).' using errcode = 'CRVAL', column = 'reason';
  end if;
  if i.status = 'void' then
    raise exception 'The invoice is already void.' using errcode = 'CRSTA', column = 'invoiceId';
  end if;
  if i.amount_paid > 0 and i.credited_amount < i.total then
    raise exception 'This invoice has payments (%); issue a credit note for its total before voiding it.', i.status
      using errcode = 'CRSTA', column = 'invoiceId';
  end if;
  update crm.invoices x set status = 'void', voided_at = now(), void_reason = btrim(void_invoice.reason)
   where x.id = i.id
  returning * into i;
  return i;
end
$$;
comment on function crm.void_invoice(uuid, text) is 'Void an invoice with a reason (invoices:update). It keeps its number. An invoice with payments must first be credited in full (creditInvoice), else INVALID_STATE.';

-- The status an issued invoice has from its amounts: paid once nothing is due, else partially paid
-- (or still overdue) once something was paid.
create or replace function crm_private.invoice_settle(inv uuid) returns crm.invoices
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.invoices x set
    status = case when x.balance <= 0 then 'paid'
                  when x.status = 'overdue' then 'overdue'
                  when x.amount_paid > 0 then 'partially_paid'
                  else x.status end,
    paid_at = case when x.balance <= 0 then coalesce(x.paid_at, now()) end
   where x.id = inv and x.status in ('issued', 'partially_paid', 'overdue', 'paid')
  returning x.*
$$;

-- The payment itself (also used by the payment webhook, as the organization's system principal).
create or replace function crm_private.invoice_payment(i crm.invoices, amount numeric, method text, reference text, received_at timestamptz,
                                                       note text, idempotency_key text, provider text, provider_event_id text)
  returns crm.invoice_payments
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  p crm.invoice_payments;
begin
  if invoice_payment.idempotency_key is not null or invoice_payment.provider_event_id is not null then
    select * into p from crm.invoice_payments x
     where x.organization_id = i.organization_id
       and (x.idempotency_key = invoice_payment.idempotency_key
            or (x.provider = invoice_payment.provider and x.provider_event_id = invoice_payment.provider_event_id));
    if p.id is not null then
      if p.invoice_id <> i.id or p.amount <> invoice_payment.amount then
        raise exception 'This idempotency key was used for another payment.' using errcode = 'CRCNF', column = 'idempotencyKey';
      end if;
      return p;
    end if;
  end if;
  if i.status not in ('issued', 'partially_paid', 'overdue') then
    raise exception 'The invoice is %; it takes no payments.', i.status using errcode = 'CRSTA', column = 'invoiceId';
  end if;
  perform crm_private.check_amount(invoice_payment.amount, i.currency);
  perform crm_private.check_method(invoice_payment.method);
  if invoice_payment.amount > i.balance then
    raise exception 'Over-payment: % % is still due on this invoice.', i.balance, i.currency using errcode = 'CRVAL', column = 'amount';
  end if;
  insert into crm.invoice_payments (organization_id, invoice_id, customer_id, amount, currency, method, reference, note, provider,
                                    provider_event_id, idempotency_key, received_at, recorded_by)
  values (i.organization_id, i.id, i.customer_id, invoice_payment.amount, i.currency, invoice_payment.method,
          nullif(btrim(invoice_payment.reference), ''), nullif(btrim(invoice_payment.note), ''), invoice_payment.provider,
          invoice_payment.provider_event_id, invoice_payment.idempotency_key, coalesce(invoice_payment.received_at, now()), crm.current_user_id())
  returning * into p;
  update crm.invoices x set amount_paid = x.amount_paid + p.amount where x.id = i.id;
  perform crm_private.invoice_settle(i.id);
  return p;
end
$$;

create or replace function crm.record_invoice_payment(invoice_id uuid, amount numeric, method text, reference text default null,
                                                      received_at timestamptz default null, note text default null,
                                                      idempotency_key text default null)
  returns crm.invoice_payments
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.require_permission('invoices:update');
  return crm_private.invoice_payment(crm_private.visible_invoice(record_invoice_payment.invoice_id, true), record_invoice_payment.amount,
                                     record_invoice_payment.method, record_invoice_payment.reference, record_invoice_payment.received_at,
                                     record_invoice_payment.note, record_invoice_payment.idempotency_key, null, null);
end
$$;
comment on function crm.record_invoice_payment(uuid, numeric, text, text, timestamptz, text, text) is 'Record money received against an issued invoice (invoices:update): partial payments make it partially_paid, the last one paid. More than the balance is refused (VALIDATION on amount). The same idempotencyKey returns the first payment. method: cash, check, card, bank_transfer or other.';

-- creditInvoice: a credit note lowering what the customer owes, numbered CN-<year>-<n>. At most
-- what has not been credited yet; if payments exceed what is left, the difference is owed back.
create or replace function crm.credit_invoice(invoice_id uuid, amount numeric, reason text) returns crm.credit_notes
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
  cn crm.credit_notes;
  d date;
begin
  perform crm_private.require_permission('invoices:update');
  i := crm_private.visible_invoice(credit_invoice.invoice_id, true);
  if i.status in ('draft', 'void') then
    raise exception 'Only an issued invoice can be credited (this one is %); edit or void a draft.', i.status using errcode = 'CRSTA', column = 'invoiceId';
  end if;
  if reason is null or length(btrim(reason)) = 0 then
    raise exception 'Say why the invoice is credited.' using errcode = 'CRVAL', column = 'reason';
  end if;
  perform crm_private.check_amount(credit_invoice.amount, i.currency);
  if credit_invoice.amount > i.total - i.credited_amount then
    raise exception 'At most % % can still be credited.', i.total - i.credited_amount, i.currency using errcode = 'CRVAL', column = 'amount';
  end if;
  d := (now() at time zone crm_private.org_timezone(i.organization_id))::date;
  insert into crm.credit_notes (organization_id, invoice_id, number, amount, currency, reason)
  values (i.organization_id, i.id, crm_private.next_invoice_number(i.organization_id, 'credit_note', extract(year from d)::int),
          credit_invoice.amount, i.currency, btrim(credit_invoice.reason))
  returning * into cn;
  -- Payments beyond what is left to pay after the credit are owed back to the customer: the
  -- balance goes below zero by that much.
  update crm.invoices x set credited_amount = x.credited_amount + cn.amount where x.id = i.id;
  perform crm_private.invoice_settle(i.id);
  return cn;
end
$$;
comment on function crm.credit_invoice(uuid, numeric, text) is 'Issue a credit note against an issued invoice (invoices:update): lowers its balance by the amount (at most its total not yet credited). Payments above the reduced total are owed back to the customer. A fully credited invoice can be voided.';

grant execute on function crm.create_invoice(uuid, crm.invoice_line[], text, uuid, uuid, int, text),
  crm.create_invoice_from_orders(uuid[], int, text), crm.issue_invoice(uuid, date, date), crm.void_invoice(uuid, text),
  crm.record_invoice_payment(uuid, numeric, text, text, timestamptz, text, text), crm.credit_invoice(uuid, numeric, text) to crm_user;

-- Where the printable invoice is (GET, with the same bearer token as /graphql).
create or replace function crm.invoices_pdf_path(i crm.invoices) returns text
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select '/invoices/' || i.id::text || '.pdf'
$$;
comment on function crm.invoices_pdf_path(crm.invoices) is 'The path of the printable invoice (GET /invoices/<id>.pdf with the same bearer token as /graphql).';
grant execute on function crm.invoices_pdf_path(crm.invoices) to crm_user;
