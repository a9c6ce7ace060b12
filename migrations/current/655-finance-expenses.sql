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
