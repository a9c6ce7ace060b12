-- Customer levels (Bronze, Silver, Gold, Platinum, …), the customer's level, the history of level
-- changes, and the organization's loyalty settings.

create table if not exists crm.customer_levels (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint customer_levels_name_length check (length(btrim(name::text)) between 1 and 60),
  rank int not null constraint customer_levels_rank_range check (rank between 1 and 100),
  minimum_score numeric(6, 3) not null default 0 constraint customer_levels_minimum_score_range check (minimum_score between 0 and 100),
  points_multiplier numeric(6, 3) not null default 1 constraint customer_levels_points_multiplier_range check (points_multiplier between 0 and 100),
  benefits text not null default '' constraint customer_levels_benefits_length check (length(benefits) <= 5000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint customer_levels_name_unique unique (organization_id, name),
  -- Deferrable so two levels can swap ranks in one transaction.
  constraint customer_levels_rank_unique unique (organization_id, rank) deferrable initially immediate,
  constraint customer_levels_organization_id_id_key unique (organization_id, id)
);
comment on table crm.customer_levels is E'Loyalty levels of the organization, lowest rank first. RFM scoring moves a customer to the highest level whose minimumScore it reaches; the level''s pointsMultiplier scales the points earned.';
comment on column crm.customer_levels.organization_id is E'@behavior -insert -update';
comment on column crm.customer_levels.rank is 'Order of the levels: 1 is the entry level new customers get.';
comment on column crm.customer_levels.minimum_score is 'The RFM score (1–5) a customer needs for this level.';
comment on column crm.customer_levels.points_multiplier is 'Loyalty points earned are multiplied by this (1.5 = 50 % more).';

-- The customer's level. New customers get the entry level (rank 1); it changes through
-- setCustomerLevel or the RFM job, never through updateCustomer. Every change, whoever makes it,
-- passes the trigger _310_level_change below (history, promotion event).
alter table crm.customers add column if not exists level_id uuid;
alter table crm.customers add column if not exists level_set_by_hand boolean not null default false;
alter table crm.customers add column if not exists level_changed_at timestamptz;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'customers_level_fkey' and conrelid = 'crm.customers'::regclass) then
    alter table crm.customers add constraint customers_level_fkey foreign key (organization_id, level_id)
      references crm.customer_levels (organization_id, id) on delete restrict;
  end if;
end
$$;
create index if not exists customers_organization_id_level_id_idx on crm.customers (organization_id, level_id);
comment on column crm.customers.level_id is E'@behavior -insert -update\nThe loyalty level: the entry level when created, then set by setCustomerLevel or the RFM job.';
comment on column crm.customers.level_set_by_hand is E'@behavior -insert -update\nSet by setCustomerLevel: automatic level changes (RFM) leave this customer alone until it is cleared.';
comment on column crm.customers.level_changed_at is E'@behavior -insert -update\nWhen the level last changed.';
comment on constraint customers_level_fkey on crm.customers is E'@fieldName level\n@foreignFieldName customers';

create table if not exists crm.customer_level_changes (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  customer_id uuid not null,
  from_level_id uuid,
  to_level_id uuid,
  source text not null constraint customer_level_changes_source_check check (source in ('manual', 'rfm', 'system')),
  reason text constraint customer_level_changes_reason_length check (length(reason) <= 1000),
  changed_by uuid references crm.users (id) on delete set null,
  changed_at timestamptz not null default now(),
  constraint customer_level_changes_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade,
  constraint customer_level_changes_from_fkey foreign key (organization_id, from_level_id)
    references crm.customer_levels (organization_id, id) on delete set null (from_level_id),
  constraint customer_level_changes_to_fkey foreign key (organization_id, to_level_id)
    references crm.customer_levels (organization_id, id) on delete set null (to_level_id)
);
create index if not exists customer_level_changes_customer_idx on crm.customer_level_changes (organization_id, customer_id, changed_at);
create index if not exists customer_level_changes_from_idx on crm.customer_level_changes (organization_id, from_level_id);
create index if not exists customer_level_changes_to_idx on crm.customer_level_changes (organization_id, to_level_id);
create index if not exists customer_level_changes_changed_by_idx on crm.customer_level_changes (changed_by);
comment on table crm.customer_level_changes is E'@behavior -insert -update -delete\nEvery level change of a customer: by hand (manual, with the reason), by RFM scoring (rfm) or by the database (system).';
comment on constraint customer_level_changes_from_fkey on crm.customer_level_changes is E'@fieldName fromLevel\n@foreignFieldName levelChangesFrom';
comment on constraint customer_level_changes_to_fkey on crm.customer_level_changes is E'@fieldName toLevel\n@foreignFieldName levelChangesTo';
comment on constraint customer_level_changes_changed_by_fkey on crm.customer_level_changes is E'@fieldName changer\n@foreignFieldName customerLevelChanges';

-- Loyalty settings: one row per organization.
create table if not exists crm.loyalty_settings (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  is_enabled boolean not null default true,
  points_per_unit numeric(12, 4) not null default 1 constraint loyalty_settings_points_per_unit_range check (points_per_unit between 0 and 10000),
  point_value numeric(12, 4) not null default 0.01 constraint loyalty_settings_point_value_range check (point_value > 0 and point_value <= 10000),
  points_expire_days int default 365 constraint loyalty_settings_points_expire_days_range check (points_expire_days between 1 and 3650),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint loyalty_settings_organization_unique unique (organization_id)
);
comment on table crm.loyalty_settings is E'@behavior -insert -delete\nThe organization''s loyalty programme: points earned per currency unit spent (times the level''s multiplier), what a point is worth when redeemed, and when points expire. Edited with settings:manage.';
comment on column crm.loyalty_settings.organization_id is E'@behavior -insert -update';
comment on column crm.loyalty_settings.is_enabled is 'When off, orders earn no points and points cannot be redeemed (the balance is kept).';
comment on column crm.loyalty_settings.points_per_unit is 'Points per 1 unit of the order''s currency spent (net of discounts and tax), before the level multiplier; rounded down.';
comment on column crm.loyalty_settings.point_value is 'Discount one point gives, in the order''s currency.';
comment on column crm.loyalty_settings.points_expire_days is 'Points credited expire this many days later (the nightly loyalty:expire job); null: never.';

-- Row-level security -------------------------------------------------------------------------------
alter table crm.customer_levels enable row level security;
alter table crm.customer_level_changes enable row level security;
alter table crm.loyalty_settings enable row level security;

drop policy if exists customer_levels_select on crm.customer_levels;
create policy customer_levels_select on crm.customer_levels for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists customer_levels_write on crm.customer_levels;
create policy customer_levels_write on crm.customer_levels for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));

drop policy if exists customer_level_changes_select on crm.customer_level_changes;
create policy customer_level_changes_select on crm.customer_level_changes for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = customer_level_changes.customer_id));

drop policy if exists loyalty_settings_select on crm.loyalty_settings;
create policy loyalty_settings_select on crm.loyalty_settings for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists loyalty_settings_update on crm.loyalty_settings;
create policy loyalty_settings_update on crm.loyalty_settings for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));

grant select on crm.customer_levels, crm.customer_level_changes, crm.loyalty_settings to crm_user;
grant insert (name, rank, minimum_score, points_multiplier, benefits), update (name, rank, minimum_score, points_multiplier, benefits), delete
  on crm.customer_levels to crm_user;
grant update (is_enabled, points_per_unit, point_value, points_expire_days) on crm.loyalty_settings to crm_user;

-- Defaults for every organization --------------------------------------------------------------------
create or replace function crm_private.seed_loyalty(org uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.customer_levels (organization_id, name, rank, minimum_score, points_multiplier, benefits)
  select org, v.name, v.rank, v.min, v.mult, v.benefits
    from (values
      ('Bronze', 1, 0, 1.0, 'Points on every purchase.'),
      ('Silver', 2, 2.5, 1.25, '25 % more points on every purchase.'),
      ('Gold', 3, 3.5, 1.5, '50 % more points; early access to sales.'),
      ('Platinum', 4, 4.5, 2.0, 'Double points; free shipping; a dedicated account manager.')) v (name, rank, min, mult, benefits)
   where not exists (select 1 from crm.customer_levels l where l.organization_id = org)
  on conflict (organization_id, name) do nothing;
  insert into crm.loyalty_settings (organization_id) values (org) on conflict (organization_id) do nothing;
end
$$;
create or replace function crm_private.tg_seed_loyalty() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_loyalty(new.id);
  return null;
end
$$;
drop trigger if exists _520_seed_loyalty on crm.organizations;
create trigger _520_seed_loyalty after insert on crm.organizations
  for each row execute function crm_private.tg_seed_loyalty();
select crm_private.seed_loyalty(id) from crm.organizations;

-- Triggers -----------------------------------------------------------------------------------------
do $$
declare
  t text;
begin
  foreach t in array array['customer_levels', 'loyalty_settings'] loop
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;

-- A level that customers or promotions use cannot be deleted.
create or replace function crm_private.tg_customer_level_in_use() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from crm.customers c where c.organization_id = old.organization_id and c.level_id = old.id) then
    raise exception 'Customers are at this level; move them to another level first.' using errcode = 'CRSTA', column = 'id';
  end if;
  if exists (select 1 from crm.promotions p where p.organization_id = old.organization_id
               and jsonb_path_exists(p.condition, '$.** ? (@.type == "customer_level" && @.level_id == $id)', jsonb_build_object('id', old.id))) then
    raise exception 'A promotion''s condition names this level; change the promotion first.' using errcode = 'CRSTA', column = 'id';
  end if;
  return old;
end
$$;
drop trigger if exists _200_in_use on crm.customer_levels;
create trigger _200_in_use before delete on crm.customer_levels
  for each row execute function crm_private.tg_customer_level_in_use();

-- New customers start at the entry level (no event: nothing changed).
create or replace function crm_private.tg_customer_default_level() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  select l.id into new.level_id from crm.customer_levels l where l.organization_id = new.organization_id order by l.rank limit 1;
  new.level_changed_at := case when new.level_id is not null then coalesce(new.created_at, now()) end;
  return new;
end
$$;
drop trigger if exists _115_default_level on crm.customers;
create trigger _115_default_level before insert on crm.customers
  for each row when (new.level_id is null) execute function crm_private.tg_customer_default_level();

-- The one path of a level change, whoever writes customers.level_id (setCustomerLevel, the RFM job,
-- an import): the change is stamped, recorded in customer_level_changes with its source and reason,
-- and the customer_level promotion event fires, all in the writer's transaction. A writer names
-- itself with set_config('cairn.level_change_source', 'manual' | 'rfm', true) and may give a reason
-- in 'cairn.level_change_reason'; without them the change is recorded as 'system'.
create or replace function crm_private.tg_customer_level_stamp() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  new.level_changed_at := now();
  return new;
end
$$;
drop trigger if exists _115_level_stamp on crm.customers;
create trigger _115_level_stamp before update of level_id on crm.customers
  for each row when (old.level_id is distinct from new.level_id) execute function crm_private.tg_customer_level_stamp();

create or replace function crm_private.tg_customer_level_changed() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.customer_level_changes (organization_id, customer_id, from_level_id, to_level_id, source, reason, changed_by)
  values (new.organization_id, new.id, old.level_id, new.level_id,
          coalesce(nullif(current_setting('cairn.level_change_source', true), ''), 'system'),
          nullif(current_setting('cairn.level_change_reason', true), ''),
          crm.current_user_id());
  if new.level_id is not null then
    perform crm_private.assign_event_promotions(new.organization_id, new.id, 'customer_level', null);
  end if;
  return null;
end
$$;
drop trigger if exists _310_level_change on crm.customers;
create trigger _310_level_change after update of level_id on crm.customers
  for each row when (old.level_id is distinct from new.level_id) execute function crm_private.tg_customer_level_changed();

-- Functions ----------------------------------------------------------------------------------------
-- The customer row for a business function: in the organization, not deleted, and visible to the
-- caller under the customers policy's rules; NOT_FOUND otherwise (SECURITY DEFINER callers).
create or replace function crm_private.visible_customer(customer_id uuid, field text default 'customerId', lock boolean default false)
  returns crm.customers
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
begin
  select * into c from crm.customers x
   where x.id = visible_customer.customer_id and x.organization_id = crm.current_org_id() and x.deleted_at is null
     and (crm.has_permission('customers:read_all') or x.owner_id = any (crm.visible_owner_ids('customers')));
  if c.id is null then
    raise exception 'No such customer.' using errcode = 'CRNFD', column = field;
  end if;
  return c;
end
$$;

-- setCustomerLevel: an administrator's decision, with a reason, audited. `setByHand` (default true)
-- marks the level as chosen by hand, so RFM scoring leaves the customer alone until it is cleared
-- (call again with setByHand: false).
create or replace function crm.set_customer_level(customer_id uuid, level_id uuid, reason text, set_by_hand boolean default true)
  returns crm.customers
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
  l crm.customer_levels;
begin
  perform crm_private.require_permission('loyalty:manage');
  c := crm_private.visible_customer(set_customer_level.customer_id);
  select * into l from crm.customer_levels x where x.id = set_customer_level.level_id and x.organization_id = c.organization_id;
  if l.id is null then
    raise exception 'No such level in this organization.' using errcode = 'CRNFD', column = 'levelId';
  end if;
  if nullif(btrim(coalesce(reason, '')), '') is null or length(reason) > 1000 then
    raise exception 'Give a reason (up to 1,000 characters).' using errcode = 'CRVAL', column = 'reason';
  end if;
  perform set_config('cairn.level_change_source', 'manual', true), set_config('cairn.level_change_reason', btrim(reason), true);
  update crm.customers x set level_id = l.id, level_set_by_hand = coalesce(set_customer_level.set_by_hand, true)
   where x.id = c.id
  returning * into c;
  perform set_config('cairn.level_change_source', '', true), set_config('cairn.level_change_reason', '', true);
  return c;
end
$$;
comment on function crm.set_customer_level(uuid, uuid, text, boolean) is 'Set a customer''s loyalty level by hand (loyalty:manage), with a reason; recorded in customerLevelChanges and the audit log, and fires the customer_level promotion event.';

grant execute on function crm.set_customer_level(uuid, uuid, text, boolean) to crm_user;
