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
