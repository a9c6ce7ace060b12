--! Previous: sha1:0ed6c76d54c2a09b0e9a139378c51b5908773443
--! Hash: sha1:2674037b343648cbed6bdcfe6839bb0b9206cd1a
--! Message: Finance: invoices with gapless numbering, payments, credit notes, expenses, reports, client viewer

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 650-finance-invoices.sql
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

--! split: 655-finance-expenses.sql
-- Finance: expense categories and expenses with their approval workflow; project cost.

create table if not exists crm.expense_categories (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint expense_categories_name_length check (length(btrim(name::text)) between 1 and 100),
  position int not null default 0,
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint expense_categories_name_unique unique (organization_id, name),
  constraint expense_categories_organization_id_id_key unique (organization_id, id)
);
create index if not exists expense_categories_organization_id_position_idx on crm.expense_categories (organization_id, position);
comment on table crm.expense_categories is E'@behavior -delete\nThe organization''s list of expense categories (Travel, Meals, Software, …); deactivate one rather than delete it. Edited with settings:manage.';
comment on column crm.expense_categories.organization_id is E'@behavior -insert -update';

create table if not exists crm.expenses (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  category_id uuid not null,
  amount numeric(16, 2) not null constraint expenses_amount_range check (amount > 0 and amount < 100000000000000),
  currency text not null constraint expenses_currency_format check (currency ~ '^[A-Z]{3}$' and currency not in ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND', 'CLF', 'UYW')),
  spent_on date not null default current_date,
  description text not null constraint expenses_description_length check (length(btrim(description)) between 1 and 2000),
  receipt_reference text constraint expenses_receipt_reference_length check (length(receipt_reference) <= 500),
  project_id uuid,
  customer_id uuid,
  submitted_by uuid not null default crm.current_user_id(),
  status text not null default 'draft' constraint expenses_status_check check (status in ('draft', 'submitted', 'approved', 'rejected', 'reimbursed')),
  submitted_at timestamptz,
  approver_id uuid references crm.users (id) on delete set null,
  decided_at timestamptz,
  decision_reason text constraint expenses_decision_reason_length check (length(decision_reason) <= 1000),
  reimbursed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint expenses_approver_id_valid check (approver_id is distinct from submitted_by or approver_id is null),
  constraint expenses_organization_id_id_key unique (organization_id, id),
  constraint expenses_category_fkey foreign key (organization_id, category_id) references crm.expense_categories (organization_id, id) on delete restrict,
  constraint expenses_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete set null (project_id),
  constraint expenses_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete set null (customer_id),
  constraint expenses_submitted_by_fkey foreign key (organization_id, submitted_by)
    references crm.organization_memberships (organization_id, user_id) on delete restrict
);
create index if not exists expenses_organization_id_submitted_by_idx on crm.expenses (organization_id, submitted_by, spent_on);
create index if not exists expenses_organization_id_status_idx on crm.expenses (organization_id, status);
create index if not exists expenses_organization_id_spent_on_idx on crm.expenses (organization_id, spent_on);
create index if not exists expenses_organization_id_category_id_idx on crm.expenses (organization_id, category_id);
create index if not exists expenses_organization_id_project_id_idx on crm.expenses (organization_id, project_id);
create index if not exists expenses_organization_id_customer_id_idx on crm.expenses (organization_id, customer_id);
create index if not exists expenses_approver_id_idx on crm.expenses (approver_id);
comment on table crm.expenses is E'@behavior -delete +aggregates\nMoney spent for the organization. draft → submitted (submitExpense) → approved | rejected (approveExpense / rejectExpense, expenses:approve, never your own) → reimbursed (reimburseExpense). Approved and reimbursed expenses count in their project''s cost. Campaign linkage comes with the campaigns module.';
comment on column crm.expenses.organization_id is E'@behavior -insert -update';
comment on column crm.expenses.currency is E'@hasDefault\nISO 4217 code; defaults to the organization''s settings.currency (else USD).';
comment on column crm.expenses.submitted_by is E'@behavior -insert -update\nWho spent it (the member who recorded it).';
comment on column crm.expenses.status is E'@behavior -insert -update';
comment on column crm.expenses.submitted_at is E'@behavior -insert -update';
comment on column crm.expenses.approver_id is E'@behavior -insert -update\nWho approved or rejected it.';
comment on column crm.expenses.decided_at is E'@behavior -insert -update';
comment on column crm.expenses.decision_reason is E'@behavior -insert -update';
comment on column crm.expenses.reimbursed_at is E'@behavior -insert -update';
comment on constraint expenses_submitted_by_fkey on crm.expenses is E'@fieldName submitter\n@foreignFieldName submittedExpenses';
comment on constraint expenses_approver_id_fkey on crm.expenses is E'@fieldName approver\n@foreignFieldName decidedExpenses';

-- Row-level security -------------------------------------------------------------------------------
alter table crm.expense_categories enable row level security;
alter table crm.expenses enable row level security;

drop policy if exists expense_categories_select on crm.expense_categories;
create policy expense_categories_select on crm.expense_categories for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists expense_categories_insert on crm.expense_categories;
create policy expense_categories_insert on crm.expense_categories for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));
drop policy if exists expense_categories_update on crm.expense_categories;
create policy expense_categories_update on crm.expense_categories for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));

-- Everyone sees their own expenses; expenses:read sees all of them.
drop policy if exists expenses_select on crm.expenses;
create policy expenses_select on crm.expenses for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('expenses:read')) or submitted_by = (select crm.current_user_id())));
drop policy if exists expenses_insert on crm.expenses;
create policy expenses_insert on crm.expenses for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('expenses:create'))
              and submitted_by = (select crm.current_user_id()) and status = 'draft'
              and (project_id is null or exists (select 1 from crm.projects p where p.id = expenses.project_id))
              and (customer_id is null or exists (select 1 from crm.customers c where c.id = expenses.customer_id)));
-- Only the submitter edits, and only a draft.
drop policy if exists expenses_update on crm.expenses;
create policy expenses_update on crm.expenses for update
  using (organization_id = (select crm.current_org_id()) and submitted_by = (select crm.current_user_id()) and status = 'draft')
  with check (organization_id = (select crm.current_org_id()) and submitted_by = (select crm.current_user_id()) and status = 'draft'
              and (project_id is null or exists (select 1 from crm.projects p where p.id = expenses.project_id))
              and (customer_id is null or exists (select 1 from crm.customers c where c.id = expenses.customer_id)));

grant select on crm.expense_categories, crm.expenses to crm_user;
grant insert (name, position, is_active), update (name, position, is_active) on crm.expense_categories to crm_user;
grant insert (category_id, amount, currency, spent_on, description, receipt_reference, project_id, customer_id),
      update (category_id, amount, currency, spent_on, description, receipt_reference, project_id, customer_id)
  on crm.expenses to crm_user;

-- Triggers -----------------------------------------------------------------------------------------
create or replace function crm_private.expense_transition_allowed(from_status text, to_status text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select from_status = to_status or (from_status, to_status) in (
    ('draft', 'submitted'), ('submitted', 'approved'), ('submitted', 'rejected'), ('approved', 'reimbursed'))
$$;

create or replace function crm_private.tg_expense_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' then
    new.currency := coalesce(new.currency, (select settings->>'currency' from crm.organizations where id = new.organization_id), 'USD');
    if new.amount <> crm_private.round_money(new.amount, new.currency) then
      raise exception 'The amount has more decimals than % allows.', new.currency using errcode = 'CRVAL', column = 'amount';
    end if;
    if not exists (select 1 from crm.expense_categories c where c.organization_id = new.organization_id and c.id = new.category_id and c.is_active) then
      raise exception 'Pick one of the organization''s active expense categories.' using errcode = 'CRVAL', column = 'category_id';
    end if;
    return new;
  end if;
  if not crm_private.expense_transition_allowed(old.status, new.status) then
    raise exception 'An expense cannot go from % to %.', old.status, new.status using errcode = 'CRSTA', column = 'status';
  end if;
  if old.status <> 'draft' and (new.category_id, new.amount, new.currency, new.spent_on, new.description, new.receipt_reference, new.project_id, new.customer_id)
     is distinct from (old.category_id, old.amount, old.currency, old.spent_on, old.description, old.receipt_reference, old.project_id, old.customer_id) then
    raise exception 'A submitted expense is not edited.' using errcode = 'CRSTA';
  end if;
  if new.amount <> crm_private.round_money(new.amount, new.currency) then
    raise exception 'The amount has more decimals than % allows.', new.currency using errcode = 'CRVAL', column = 'amount';
  end if;
  return new;
end
$$;
drop trigger if exists _120_workflow on crm.expenses;
create trigger _120_workflow before insert or update on crm.expenses for each row execute function crm_private.tg_expense_guard();

do $$
declare
  t text;
begin
  foreach t in array array['expense_categories', 'expenses'] loop
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;

-- New organizations get finance settings and the default expense categories; existing ones now.
drop trigger if exists _530_seed_finance on crm.organizations;
create trigger _530_seed_finance after insert on crm.organizations for each row execute function crm_private.tg_seed_finance();
insert into crm.finance_settings (organization_id, legal_name) select o.id, o.name from crm.organizations o on conflict (organization_id) do nothing;
insert into crm.expense_categories (organization_id, name, position)
select o.id, v.name, v.pos from crm.organizations o
 cross join (values ('Travel', 1), ('Meals', 2), ('Software', 3), ('Marketing', 4), ('Office', 5), ('Other', 6)) v (name, pos)
on conflict (organization_id, name) do nothing;

-- Workflow functions -------------------------------------------------------------------------------
create or replace function crm_private.visible_expense(expense_id uuid) returns crm.expenses
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  e crm.expenses;
begin
  select * into e from crm.expenses x where x.id = visible_expense.expense_id and x.organization_id = crm.current_org_id() for update;
  if e.id is null or not (crm.has_permission('expenses:read') or crm.has_permission('expenses:approve') or e.submitted_by = crm.current_user_id()) then
    raise exception 'No such expense.' using errcode = 'CRNFD', column = 'expenseId';
  end if;
  return e;
end
$$;

create or replace function crm.submit_expense(expense_id uuid) returns crm.expenses
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  e crm.expenses := crm_private.visible_expense(submit_expense.expense_id);
begin
  if e.submitted_by <> crm.current_user_id() then
    raise exception 'Only the member who recorded an expense submits it.' using errcode = 'CRFBD';
  end if;
  if e.status <> 'draft' then
    raise exception 'Only a draft expense can be submitted (this one is %).', e.status using errcode = 'CRSTA', column = 'expenseId';
  end if;
  update crm.expenses x set status = 'submitted', submitted_at = now() where x.id = e.id returning * into e;
  return e;
end
$$;
comment on function crm.submit_expense(uuid) is 'Submit your own draft expense for approval.';

create or replace function crm_private.decide_expense(expense_id uuid, to_status text, reason text) returns crm.expenses
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  e crm.expenses;
begin
  perform crm_private.require_permission('expenses:approve');
  e := crm_private.visible_expense(decide_expense.expense_id);
  if e.submitted_by = crm.current_user_id() then
    raise exception 'Nobody approves or rejects their own expense.' using errcode = 'CRFBD', column = 'expenseId';
  end if;
  if e.status <> 'submitted' then
    raise exception 'Only a submitted expense can be %s (this one is %).', to_status, e.status using errcode = 'CRSTA', column = 'expenseId';
  end if;
  if length(reason) > 1000 then
    raise exception 'The reason is too long (at most 1,000 characters).' using errcode = 'CRVAL', column = 'reason';
  end if;
  update crm.expenses x set status = to_status, approver_id = crm.current_user_id(), decided_at = now(),
         decision_reason = nullif(btrim(decide_expense.reason), '')
   where x.id = e.id
  returning * into e;
  return e;
end
$$;

create or replace function crm.approve_expense(expense_id uuid, reason text default null) returns crm.expenses
  language sql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
  select crm_private.decide_expense(expense_id, 'approved', reason)
$$;
comment on function crm.approve_expense(uuid, text) is 'Approve a submitted expense (expenses:approve; never your own: FORBIDDEN).';

create or replace function crm.reject_expense(expense_id uuid, reason text) returns crm.expenses
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if reason is null or length(btrim(reason)) = 0 then
    raise exception 'Say why the expense is rejected.' using errcode = 'CRVAL', column = 'reason';
  end if;
  return crm_private.decide_expense(reject_expense.expense_id, 'rejected', reject_expense.reason);
end
$$;
comment on function crm.reject_expense(uuid, text) is 'Reject a submitted expense with a reason (expenses:approve; never your own: FORBIDDEN).';

create or replace function crm.reimburse_expense(expense_id uuid) returns crm.expenses
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  e crm.expenses;
begin
  perform crm_private.require_permission('expenses:approve');
  e := crm_private.visible_expense(reimburse_expense.expense_id);
  if e.status <> 'approved' then
    raise exception 'Only an approved expense can be reimbursed (this one is %).', e.status using errcode = 'CRSTA', column = 'expenseId';
  end if;
  update crm.expenses x set status = 'reimbursed', reimbursed_at = now() where x.id = e.id returning * into e;
  return e;
end
$$;
comment on function crm.reimburse_expense(uuid) is 'Mark an approved expense as paid back to its submitter (expenses:approve).';

grant execute on function crm.submit_expense(uuid), crm.approve_expense(uuid, text), crm.reject_expense(uuid, text),
  crm.reimburse_expense(uuid) to crm_user;

-- A project's cost: its approved and reimbursed expenses, per currency (those the caller sees).
create or replace function crm.projects_expense_cost(p crm.projects) returns jsonb
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(jsonb_object_agg(currency, total::text), '{}'::jsonb)
    from (select e.currency, sum(e.amount) as total from crm.expenses e
           where e.organization_id = p.organization_id and e.project_id = p.id and e.status in ('approved', 'reimbursed')
           group by e.currency) t
$$;
comment on function crm.projects_expense_cost(crm.projects) is 'Approved and reimbursed expenses of the project, per currency: {"USD": "120.50"} (with expenses:read; otherwise your own).';
grant execute on function crm.projects_expense_cost(crm.projects) to crm_user;

--! split: 660-finance-jobs-reports.sql
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

--! split: 690-finance-client-viewer.sql
-- Client principals (seed 002's Client Viewer, "own only"): a member linked to one customer sees
-- that customer, its invoices (and their lines) and its projects, and nothing else.
--
-- Two kinds of policy do it:
--   * permissive ones that show the linked customer's rows to holders of the …:read_client codes;
--   * a RESTRICTIVE `<table>_client_guard` on every tenant table in crm: for a linked member it lets
--     through only those rows, whatever else their role holds. For everyone else it is
--     `(select crm.client_customer_id()) is null`, one InitPlan per statement.
-- A module adding a tenant table must re-run this file's loop (crm_private.apply_client_guards()):
-- the generated isolation test fails for a table a client principal can read without the guard.

drop policy if exists customers_select_client on crm.customers;
create policy customers_select_client on crm.customers for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (select crm.has_permission('customers:read_client')) and id = (select crm.client_customer_id()));
drop policy if exists projects_select_client on crm.projects;
create policy projects_select_client on crm.projects for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (select crm.has_permission('projects:read_client')) and customer_id = (select crm.client_customer_id()));

-- The rows a client principal may see in the tables it may see at all; every other tenant table
-- shows it nothing.
create or replace function crm_private.apply_client_guards() returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  t record;
  cond text;
begin
  for t in
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'crm' and c.relkind in ('r', 'p')
       and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'organization_id' and not a.attisdropped)
  loop
    cond := case t.relname
      when 'customers' then 'id = (select crm.client_customer_id())'
      when 'projects' then 'customer_id = (select crm.client_customer_id())'
      when 'invoices' then 'customer_id = (select crm.client_customer_id())'
      when 'invoice_items' then 'true'  -- through its invoice's policy
      -- Their own membership row, so the session knows who they are.
      when 'organization_memberships' then 'user_id = (select crm.current_user_id())'
      else 'false' end;
    execute format('drop policy if exists %I on crm.%I', t.relname || '_client_guard', t.relname);
    execute format('create policy %I on crm.%I as restrictive for select using ((select crm.client_customer_id()) is null
                      or (organization_id = (select crm.current_org_id()) and %s))',
                   t.relname || '_client_guard', t.relname, cond);
  end loop;
end
$$;
select crm_private.apply_client_guards();

-- setClientCustomer: link a member to one customer as its client principal (or unlink with null).
create or replace function crm.set_client_customer(membership_id uuid, customer_id uuid) returns crm.organization_memberships
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.organization_memberships;
begin
  perform crm_private.require_permission('users:update');
  select * into m from crm.organization_memberships x where x.id = set_client_customer.membership_id and x.organization_id = crm.current_org_id();
  if m.id is null then
    raise exception 'No such member.' using errcode = 'CRNFD', column = 'membershipId';
  end if;
  if m.user_id = crm.current_user_id() then
    raise exception 'You cannot make yourself a client principal.' using errcode = 'CRFBD', column = 'membershipId';
  end if;
  if set_client_customer.customer_id is not null then
    perform crm_private.visible_customer(set_client_customer.customer_id);
  end if;
  update crm.organization_memberships x set client_customer_id = set_client_customer.customer_id where x.id = m.id returning * into m;
  return m;
end
$$;
comment on function crm.set_client_customer(uuid, uuid) is 'Link a member to one customer as its client principal (users:update), or unlink them (customerId null). Give them the Client Viewer role: they then see only that customer, its invoices and its projects.';
grant execute on function crm.set_client_customer(uuid, uuid) to crm_user;

-- References a caller sets must point at rows they can see (the generic guard of 000011).
select crm_private.guard_references(t::regclass)
  from unnest(array['crm.invoices', 'crm.invoice_items', 'crm.invoice_payments', 'crm.credit_notes', 'crm.expenses', 'crm.billing_schedules']) t;
