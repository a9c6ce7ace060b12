--! Previous: sha1:d8a9b75d5c29dc0d0450a6044422f847deabde47
--! Hash: sha1:0b223f54361ebc4513cbc7e9833f16f5cba582e4
--! Message: commerce and loyalty: products, customer levels, promotions engine, orders, payments and refunds, loyalty ledger, reports

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 200-commerce-permissions.sql
-- Commerce and loyalty: permission codes and the money helpers every commerce file uses.

-- Permissions of this module (orders:* and promotions:* are in the catalog since 000002) ------------
do $$
declare
  am text[] := array['Administrator', 'Sales Manager'];
begin
  perform crm_private.register_permission('products:create', 'Add products and product categories', am);
  perform crm_private.register_permission('products:update', 'Edit products and product categories; see inactive products', am);
  perform crm_private.register_permission('products:delete', 'Delete and restore products; delete product categories', am);
  perform crm_private.register_permission('orders:override_price', 'Sell at a unit price other than the product''s', am);
  perform crm_private.register_permission('loyalty:manage', 'Set customer levels by hand and adjust loyalty points', array['Administrator']);
end
$$;

-- Products take custom fields like customers, contacts and deals.
alter table crm.custom_field_definitions drop constraint if exists custom_field_definitions_entity_check;
alter table crm.custom_field_definitions add constraint custom_field_definitions_entity_check
  check (entity in ('customer', 'contact', 'deal', 'product'));

-- Money ---------------------------------------------------------------------------------------------
-- Amounts are numeric, never float. Every stored amount is rounded to its currency's minor unit:
-- two decimals, none for the currencies below (ISO 4217 exponent 0). Currencies with three minor
-- digits (BHD, KWD, …) are not supported: their amounts would not fit the two stored decimals.
create or replace function crm_private.currency_scale(currency text) returns int
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case when currency in ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX', 'UYI', 'VND',
                                'VUV', 'XAF', 'XOF', 'XPF') then 0 else 2 end
$$;

create or replace function crm_private.currency_supported(currency text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select currency ~ '^[A-Z]{3}$' and currency not in ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND', 'CLF', 'UYW')
$$;

-- Rounding rule of the whole module: half away from zero ("half-up" for the positive amounts used
-- here), to the currency's minor unit, once per order line (PostgreSQL's round(numeric, int)).
create or replace function crm_private.round_money(amount numeric, currency text) returns numeric
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select round(amount, crm_private.currency_scale(currency))
$$;

-- Splits `amount` (already at `scale` decimals, 0 ≤ amount ≤ Σ weights) over `weights` in
-- proportion, exactly: every share is truncated to the scale and the units left over go, one each,
-- to the largest truncated remainders (ties to the earlier position). The shares add up to `amount`
-- and none exceeds its weight. Used to spread an order-level discount over the order's lines.
create or replace function crm_private.allocate(amount numeric, weights numeric[], scale int) returns numeric[]
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  with w as (
    select i, greatest(coalesce(x, 0), 0) as x from unnest(weights) with ordinality u(x, i)
  ), total as (
    select sum(x) as t from w
  ), share as (
    select i, case when t > 0 then amount * x / t else 0 end as exact from w, total
  ), base as (
    select i, exact, trunc(exact, scale) as floor_part from share
  ), leftover as (
    select round((amount - sum(floor_part)) * power(10::numeric, scale))::int as units from base
  )
  select coalesce(array_agg(round(floor_part + case when rk <= units then power(10::numeric, -scale) else 0 end, scale) order by i), '{}')
    from (select i, floor_part, row_number() over (order by exact - floor_part desc, i) as rk from base) b, leftover
$$;

--! split: 205-products.sql
-- Catalogue: product categories and products.

create table if not exists crm.product_categories (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint product_categories_name_length check (length(btrim(name::text)) between 1 and 100),
  description text not null default '' constraint product_categories_description_length check (length(description) <= 2000),
  position int not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint product_categories_name_unique unique (organization_id, name),
  constraint product_categories_organization_id_id_key unique (organization_id, id)
);
create index if not exists product_categories_organization_id_position_idx on crm.product_categories (organization_id, position);
comment on table crm.product_categories is 'A group of products (price lists, reports, promotion scopes).';
comment on column crm.product_categories.organization_id is E'@behavior -insert -update';

create table if not exists crm.products (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  sku citext not null constraint products_sku_format check (sku::text ~ '^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$'),
  name text not null constraint products_name_length check (length(btrim(name)) between 1 and 300),
  description text not null default '' constraint products_description_length check (length(description) <= 20000),
  category_id uuid,
  unit_price numeric(16, 4) not null constraint products_unit_price_range check (unit_price >= 0 and unit_price < 1000000000),
  currency text not null -- (inline, not crm_private.currency_supported: a check runs with the writer's privileges)
  constraint products_currency_format check (currency ~ '^[A-Z]{3}$' and currency not in ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND', 'CLF', 'UYW')),
  tax_rate numeric(7, 4) not null default 0 constraint products_tax_rate_range check (tax_rate between 0 and 100),
  is_active boolean not null default true,
  custom_fields jsonb not null default '{}'::jsonb constraint products_custom_fields_object check (jsonb_typeof(custom_fields) = 'object'),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint products_organization_id_id_key unique (organization_id, id),
  constraint products_category_fkey foreign key (organization_id, category_id)
    references crm.product_categories (organization_id, id) on delete set null (category_id)
);
-- The SKU is unique among live products (a deleted product's SKU can be reused).
create unique index if not exists products_sku_unique on crm.products (organization_id, sku) where deleted_at is null;
-- (A partial index gives no filter or ordering in the API; this one does.)
create index if not exists products_organization_id_sku_idx on crm.products (organization_id, sku);
create index if not exists products_organization_id_is_active_idx on crm.products (organization_id, is_active);
create index if not exists products_organization_id_name_idx on crm.products (organization_id, name);
create index if not exists products_organization_id_category_id_idx on crm.products (organization_id, category_id);
create index if not exists products_organization_id_unit_price_idx on crm.products (organization_id, unit_price);
create index if not exists products_created_by_idx on crm.products (created_by);
create index if not exists products_custom_fields_idx on crm.products using gin (custom_fields jsonb_path_ops);
comment on table crm.products is E'@behavior -delete\nSomething the organization sells. Prices exclude tax; orders capture price and tax rate when placed.';
comment on column crm.products.organization_id is E'@behavior -insert -update';
comment on column crm.products.created_by is E'@behavior -insert -update';
comment on column crm.products.deleted_at is E'@behavior -insert -update\nSet by deleteProduct (soft delete); restoreProduct brings it back.';
comment on column crm.products.unit_price is 'Price of one unit, excluding tax, in `currency` (up to four decimals; order lines are rounded to the currency''s minor unit).';
comment on column crm.products.currency is E'@hasDefault\nISO 4217 code; defaults to the organization''s settings.currency (else USD).';
comment on column crm.products.tax_rate is 'Tax rate in percent (19.5 = 19.5 %), applied to each order line after discounts.';
comment on column crm.products.is_active is 'Only active products can be ordered; inactive ones are visible to holders of products:update only.';
comment on column crm.products.custom_fields is E'@behavior +filterBy\nValues of the organization''s custom fields for products.';
comment on constraint products_category_fkey on crm.products is E'@fieldName category\n@foreignFieldName products';
comment on constraint products_created_by_fkey on crm.products is E'@fieldName creator\n@foreignFieldName createdProducts';

-- Row-level security -------------------------------------------------------------------------------
alter table crm.product_categories enable row level security;
alter table crm.products enable row level security;

drop policy if exists product_categories_select on crm.product_categories;
create policy product_categories_select on crm.product_categories for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists product_categories_insert on crm.product_categories;
create policy product_categories_insert on crm.product_categories for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('products:create')));
drop policy if exists product_categories_update on crm.product_categories;
create policy product_categories_update on crm.product_categories for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('products:update')));
drop policy if exists product_categories_delete on crm.product_categories;
create policy product_categories_delete on crm.product_categories for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('products:delete')));

-- Everyone in the organization reads active products; products:update also sees inactive ones.
drop policy if exists products_select on crm.products;
create policy products_select on crm.products for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (is_active or (select crm.has_permission('products:update'))));
drop policy if exists products_insert on crm.products;
create policy products_insert on crm.products for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('products:create')));
drop policy if exists products_update on crm.products;
create policy products_update on crm.products for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null and (select crm.has_permission('products:update')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('products:update')));

grant select on crm.product_categories, crm.products to crm_user;
grant insert (name, description, position), update (name, description, position), delete on crm.product_categories to crm_user;
grant insert (sku, name, description, category_id, unit_price, currency, tax_rate, is_active, custom_fields),
      update (sku, name, description, category_id, unit_price, currency, tax_rate, is_active, custom_fields)
  on crm.products to crm_user;

-- Triggers -----------------------------------------------------------------------------------------
create or replace function crm_private.tg_product_defaults() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  new.currency := coalesce(new.currency, (select settings->>'currency' from crm.organizations where id = new.organization_id), 'USD');
  return new;
end
$$;
drop trigger if exists _120_defaults on crm.products;
create trigger _120_defaults before insert on crm.products
  for each row execute function crm_private.tg_product_defaults();

do $$
declare
  t text;
begin
  foreach t in array array['product_categories', 'products'] loop
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;
drop trigger if exists _150_custom_fields on crm.products;
create trigger _150_custom_fields before insert or update of custom_fields on crm.products
  for each row execute function crm_private.tg_validate_custom_fields('product');

-- Functions ----------------------------------------------------------------------------------------
-- Soft delete and restore (SECURITY DEFINER: the deleted row fails the select policy). Orders keep
-- pointing at a deleted product; it cannot be ordered any more.
create or replace function crm.delete_product(id uuid) returns crm.products
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.products;
begin
  perform crm_private.require_permission('products:delete');
  update crm.products p set deleted_at = now()
   where p.id = delete_product.id and p.organization_id = crm.current_org_id() and p.deleted_at is null
  returning * into r;
  if r.id is null then
    raise exception 'No such product.' using errcode = 'CRNFD', column = 'id';
  end if;
  return r;
end
$$;
comment on function crm.delete_product(uuid) is 'Delete (hide) a product; orders that sold it keep it. restoreProduct brings it back.';

create or replace function crm.restore_product(id uuid) returns crm.products
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.products;
begin
  perform crm_private.require_permission('products:delete');
  update crm.products p set deleted_at = null
   where p.id = restore_product.id and p.organization_id = crm.current_org_id() and p.deleted_at is not null
  returning * into r;
  if r.id is null then
    raise exception 'Nothing deleted with that id.' using errcode = 'CRNFD', column = 'id';
  end if;
  return r;
end
$$;
comment on function crm.restore_product(uuid) is 'Bring back a deleted product (its SKU must still be free).';

grant execute on function crm.delete_product(uuid), crm.restore_product(uuid) to crm_user;

--! split: 210-customer-levels.sql
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

--! split: 215-promotions.sql
-- Promotions engine: promotions, their assignment to customers, the condition language (validated
-- and evaluated by the database), and event-driven assignment.

create table if not exists crm.promotions (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint promotions_name_length check (length(btrim(name)) between 1 and 200),
  description text not null default '' constraint promotions_description_length check (length(description) <= 5000),
  code citext constraint promotions_code_format check (code::text ~ '^[A-Za-z0-9][A-Za-z0-9_-]{2,39}$'),
  discount_type text not null constraint promotions_discount_type_check check (discount_type in ('percent', 'fixed_amount', 'free_item')),
  discount_value numeric(16, 4) not null,
  currency text constraint promotions_currency_format check (currency ~ '^[A-Z]{3}$'),
  product_id uuid,
  category_id uuid,
  condition jsonb,
  duration_days int constraint promotions_duration_days_range check (duration_days between 1 and 3650),
  starts_at timestamptz,
  ends_at timestamptz,
  usage_limit int,
  usage_limit_per_customer int constraint promotions_usage_limit_per_customer_range check (usage_limit_per_customer > 0),
  times_used int not null default 0 constraint promotions_times_used_range check (times_used >= 0),
  is_stackable boolean not null default true,
  is_active boolean not null default true,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint promotions_discount_value_range check (
    discount_value > 0
    and (discount_type <> 'percent' or discount_value <= 100)
    and (discount_type <> 'free_item' or discount_value = trunc(discount_value))),
  constraint promotions_currency_needed check (discount_type <> 'fixed_amount' or currency is not null),
  constraint promotions_product_id_valid check (num_nonnulls(product_id, category_id) <= 1),
  constraint promotions_ends_at_order check (ends_at is null or starts_at is null or ends_at > starts_at),
  constraint promotions_usage_limit_range check (usage_limit > 0 and usage_limit >= times_used),
  constraint promotions_organization_id_id_key unique (organization_id, id),
  constraint promotions_product_fkey foreign key (organization_id, product_id)
    references crm.products (organization_id, id) on delete restrict,
  constraint promotions_category_fkey foreign key (organization_id, category_id)
    references crm.product_categories (organization_id, id) on delete restrict
);
create unique index if not exists promotions_code_unique on crm.promotions (organization_id, code) where code is not null;
create index if not exists promotions_organization_id_is_active_idx on crm.promotions (organization_id, is_active);
create index if not exists promotions_organization_id_product_id_idx on crm.promotions (organization_id, product_id);
create index if not exists promotions_organization_id_category_id_idx on crm.promotions (organization_id, category_id);
create index if not exists promotions_organization_id_ends_at_idx on crm.promotions (organization_id, ends_at);
create index if not exists promotions_created_by_idx on crm.promotions (created_by);
comment on table crm.promotions is E'A discount rule: percent, fixed amount or free items, optionally limited to a product or category, with a condition that decides who qualifies, a validity window and usage limits. See docs/commerce.md.';
comment on column crm.promotions.organization_id is E'@behavior -insert -update';
comment on column crm.promotions.created_by is E'@behavior -insert -update';
comment on column crm.promotions.times_used is E'@behavior -insert -update\nOrders that used it (cancelling an order gives its use back).';
comment on column crm.promotions.code is 'Optional code a customer quotes at order time (unique in the organization, case-insensitive).';
comment on column crm.promotions.discount_value is 'percent: 0–100; fixed_amount: the amount in `currency`; free_item: the number of free units of the cheapest item in scope.';
comment on column crm.promotions.currency is E'@hasDefault\nThe currency of a fixed_amount discount (defaults to the organization''s); it applies only to orders in that currency.';
comment on column crm.promotions.condition is 'Who qualifies (JSON): {"type":"first_purchase"}, {"type":"customer_level","level_id":"…"}, {"type":"referral"} (optionally "side":"referrer"), {"type":"minimum_purchase","amount":1000} (optionally "currency"), combined with {"type":"all"|"any","conditions":[…]}; null: no condition.';
comment on column crm.promotions.duration_days is 'How long an assignment stays usable; null: until the promotion ends.';
comment on column crm.promotions.is_stackable is 'Whether it combines with other promotions on one order. A non-stackable promotion applies alone, and only when it is the best one.';
comment on constraint promotions_product_fkey on crm.promotions is E'@fieldName product\n@foreignFieldName promotions';
comment on constraint promotions_category_fkey on crm.promotions is E'@fieldName category\n@foreignFieldName promotions';
comment on constraint promotions_created_by_fkey on crm.promotions is E'@fieldName creator\n@foreignFieldName createdPromotions';

create table if not exists crm.customer_promotions (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  promotion_id uuid not null,
  source text not null constraint customer_promotions_source_check
    check (source in ('first_purchase', 'minimum_purchase', 'referral', 'customer_level', 'manual', 'code')),
  source_order_id uuid,
  assigned_at timestamptz not null default now(),
  expires_at timestamptz,
  used_at timestamptz,
  order_id uuid,
  revoked_at timestamptz,
  assigned_by uuid references crm.users (id) on delete set null,
  revoked_by uuid references crm.users (id) on delete set null,
  constraint customer_promotions_used_at_valid check (order_id is null or used_at is not null),
  constraint customer_promotions_revoked_at_valid check (revoked_at is null or used_at is null),
  constraint customer_promotions_organization_id_id_key unique (organization_id, id),
  constraint customer_promotions_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade,
  constraint customer_promotions_promotion_fkey foreign key (organization_id, promotion_id)
    references crm.promotions (organization_id, id) on delete cascade
);
-- One open (unused, unrevoked) assignment per customer and promotion.
create unique index if not exists customer_promotions_one_open on crm.customer_promotions (organization_id, customer_id, promotion_id)
  where used_at is null and revoked_at is null;
create index if not exists customer_promotions_organization_id_customer_id_idx on crm.customer_promotions (organization_id, customer_id);
create index if not exists customer_promotions_organization_id_promotion_id_idx on crm.customer_promotions (organization_id, promotion_id);
create index if not exists customer_promotions_organization_id_order_id_idx on crm.customer_promotions (organization_id, order_id);
create index if not exists customer_promotions_organization_id_source_order_id_idx on crm.customer_promotions (organization_id, source_order_id);
create index if not exists customer_promotions_assigned_by_idx on crm.customer_promotions (assigned_by);
create index if not exists customer_promotions_revoked_by_idx on crm.customer_promotions (revoked_by);
comment on table crm.customer_promotions is E'@behavior -insert -update -delete\nA promotion assigned to a customer (by an event, by hand, or by quoting its code): usable from assignedAt until expiresAt, once; usedAt and order record the use. Change with assignPromotion / revokePromotion.';
comment on column crm.customer_promotions.source is 'Why the customer has it: the event (first_purchase, minimum_purchase, referral, customer_level), manual, or code.';
comment on column crm.customer_promotions.source_order_id is 'The order whose event assigned it (first_purchase, minimum_purchase).';
comment on column crm.customer_promotions.revoked_at is 'Set by revokePromotion, and when an expired assignment is replaced by a new one.';
comment on constraint customer_promotions_promotion_fkey on crm.customer_promotions is E'@fieldName promotion\n@foreignFieldName customerPromotions';
comment on constraint customer_promotions_assigned_by_fkey on crm.customer_promotions is E'@fieldName assigner\n@foreignFieldName assignedPromotions';
comment on constraint customer_promotions_revoked_by_fkey on crm.customer_promotions is E'@fieldName revoker\n@foreignFieldName revokedPromotions';

-- Row-level security -------------------------------------------------------------------------------
alter table crm.promotions enable row level security;
alter table crm.customer_promotions enable row level security;

-- Promotions are read by holders of promotions:read and by whoever takes orders (they apply them).
drop policy if exists promotions_select on crm.promotions;
create policy promotions_select on crm.promotions for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('promotions:read')) or (select crm.has_permission('orders:create'))));
-- The product a promotion is limited to must be one the writer sees.
drop policy if exists promotions_insert on crm.promotions;
create policy promotions_insert on crm.promotions for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('promotions:create'))
              and (product_id is null or exists (select 1 from crm.products p where p.id = promotions.product_id)));
drop policy if exists promotions_update on crm.promotions;
create policy promotions_update on crm.promotions for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('promotions:update')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('promotions:update'))
              and (product_id is null or exists (select 1 from crm.products p where p.id = promotions.product_id)));
drop policy if exists promotions_delete on crm.promotions;
create policy promotions_delete on crm.promotions for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('promotions:delete')));

-- A customer's promotions follow the customer.
drop policy if exists customer_promotions_select on crm.customer_promotions;
create policy customer_promotions_select on crm.customer_promotions for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = customer_promotions.customer_id));

grant select on crm.promotions, crm.customer_promotions to crm_user;
grant insert (name, description, code, discount_type, discount_value, currency, product_id, category_id, condition, duration_days,
              starts_at, ends_at, usage_limit, usage_limit_per_customer, is_stackable, is_active),
      update (name, description, code, discount_type, discount_value, currency, product_id, category_id, condition, duration_days,
              starts_at, ends_at, usage_limit, usage_limit_per_customer, is_stackable, is_active),
      delete
  on crm.promotions to crm_user;

-- The condition language ---------------------------------------------------------------------------
-- Validates a condition document; raises VALIDATION on the field `condition`, naming the path.
create or replace function crm_private.validate_condition(cond jsonb, org uuid, path text default 'condition', depth int default 0)
  returns void
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  t text;
  allowed text[];
  extra text;
  i int;
  fail text;
begin
  if cond is null and depth = 0 then
    return;
  end if;
  if cond is null or jsonb_typeof(cond) <> 'object' then
    fail := format('%s must be an object with a "type".', path);
  elsif jsonb_typeof(cond->'type') is distinct from 'string' then
    fail := format('%s.type is required (first_purchase, customer_level, referral, minimum_purchase, all, any).', path);
  end if;
  if fail is null then
    t := cond->>'type';
    allowed := case t
      when 'first_purchase' then array['type']
      when 'referral' then array['type', 'side']
      when 'customer_level' then array['type', 'level_id']
      when 'minimum_purchase' then array['type', 'amount', 'currency']
      when 'all' then array['type', 'conditions']
      when 'any' then array['type', 'conditions']
    end;
    if allowed is null then
      fail := format('%s.type "%s" is unknown; use first_purchase, customer_level, referral, minimum_purchase, all or any.', path, t);
    else
      select min(k) into extra from jsonb_object_keys(cond) k where not (k = any (allowed));
      if extra is not null then
        fail := format('%s has an unknown argument "%s" for type %s.', path, extra, t);
      end if;
    end if;
  end if;
  if fail is null then
    case t
      when 'referral' then
        if cond ? 'side' and (jsonb_typeof(cond->'side') <> 'string' or cond->>'side' not in ('referred', 'referrer')) then
          fail := format('%s.side must be "referred" or "referrer".', path);
        end if;
      when 'customer_level' then
        if jsonb_typeof(cond->'level_id') is distinct from 'string'
           or (cond->>'level_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
          fail := format('%s.level_id must be the id (a UUID string) of a customer level.', path);
        elsif not exists (select 1 from crm.customer_levels l where l.organization_id = org and l.id = (cond->>'level_id')::uuid) then
          fail := format('%s.level_id is not a customer level of this organization.', path);
        end if;
      when 'minimum_purchase' then
        if jsonb_typeof(cond->'amount') is distinct from 'number' or (cond->>'amount')::numeric < 0 then
          fail := format('%s.amount must be a number of at least 0.', path);
        elsif cond ? 'currency' and (jsonb_typeof(cond->'currency') <> 'string' or (cond->>'currency') !~ '^[A-Z]{3}$') then
          fail := format('%s.currency must be an ISO 4217 code such as "EUR".', path);
        end if;
      when 'all', 'any' then
        if jsonb_typeof(cond->'conditions') is distinct from 'array' or jsonb_array_length(cond->'conditions') = 0
           or jsonb_array_length(cond->'conditions') > 20 then
          fail := format('%s.conditions must be an array of 1 to 20 conditions.', path);
        elsif depth >= 5 then
          fail := format('%s nests too deep (at most 5 levels of all/any).', path);
        else
          for i in 0 .. jsonb_array_length(cond->'conditions') - 1 loop
            perform crm_private.validate_condition(cond->'conditions'->i, org, format('%s.conditions[%s]', path, i), depth + 1);
          end loop;
        end if;
      else
        null;
    end case;
  end if;
  if fail is not null then
    raise exception '%', fail using errcode = 'CRVAL', column = 'condition';
  end if;
end
$$;

-- The one evaluator of conditions: does `cond` hold for customer `c`, with the order being placed
-- (its id once written, its subtotal before discounts and its currency) when there is one?
--   first_purchase    the customer has no order (not cancelled) other than this one
--   referral          the customer was referred by another customer (side "referrer": has referred one)
--   customer_level    the customer is at that level
--   minimum_purchase  there is an order and its subtotal reaches the amount (in its currency, if given)
--   all / any         every / at least one of the conditions
-- A null condition always holds.
create or replace function crm_private.condition_holds(cond jsonb, c crm.customers, order_id uuid, order_subtotal numeric, order_currency text)
  returns boolean
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  sub jsonb;
begin
  if cond is null then
    return true;
  end if;
  case cond->>'type'
    when 'first_purchase' then
      return not exists (select 1 from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id
                            and o.status <> 'cancelled' and o.id is distinct from condition_holds.order_id);
    when 'referral' then
      if cond->>'side' = 'referrer' then
        return exists (select 1 from crm.customers r where r.organization_id = c.organization_id and r.referred_by_id = c.id
                          and r.deleted_at is null);
      end if;
      return c.referred_by_id is not null;
    when 'customer_level' then
      return c.level_id is not distinct from (cond->>'level_id')::uuid;
    when 'minimum_purchase' then
      return order_subtotal is not null and order_subtotal >= (cond->>'amount')::numeric
             and (not cond ? 'currency' or cond->>'currency' = order_currency);
    when 'all' then
      for sub in select * from jsonb_array_elements(cond->'conditions') loop
        if not crm_private.condition_holds(sub, c, order_id, order_subtotal, order_currency) then
          return false;
        end if;
      end loop;
      return true;
    when 'any' then
      for sub in select * from jsonb_array_elements(cond->'conditions') loop
        if crm_private.condition_holds(sub, c, order_id, order_subtotal, order_currency) then
          return true;
        end if;
      end loop;
      return false;
    else
      raise exception 'Unknown condition type %', cond->>'type';
  end case;
end
$$;

-- Triggers -----------------------------------------------------------------------------------------
create or replace function crm_private.tg_promotion_rules() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.validate_condition(new.condition, new.organization_id);
  if new.discount_type = 'fixed_amount' and new.currency is null then
    new.currency := coalesce((select settings->>'currency' from crm.organizations where id = new.organization_id), 'USD');
  end if;
  return new;
end
$$;
drop trigger if exists _120_rules on crm.promotions;
create trigger _120_rules before insert or update on crm.promotions
  for each row execute function crm_private.tg_promotion_rules();

-- A promotion that orders used stays (deactivate it instead).
create or replace function crm_private.tg_promotion_in_use() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from crm.customer_promotions cp where cp.organization_id = old.organization_id and cp.promotion_id = old.id
               and cp.used_at is not null) then
    raise exception 'Orders used this promotion; deactivate it instead (isActive: false).' using errcode = 'CRSTA', column = 'id';
  end if;
  return old;
end
$$;
drop trigger if exists _200_in_use on crm.promotions;
create trigger _200_in_use before delete on crm.promotions
  for each row execute function crm_private.tg_promotion_in_use();

drop trigger if exists _100_updated_at on crm.promotions;
create trigger _100_updated_at before update on crm.promotions for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.promotions;
create trigger _800_audit after insert or update or delete on crm.promotions for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.customer_promotions;
create trigger _800_audit after insert or update or delete on crm.customer_promotions for each row execute function crm_private.tg_audit();

-- Assignment ---------------------------------------------------------------------------------------
-- Gives promotion `p` to a customer unless they already hold an open assignment of it or reached its
-- per-customer limit; an expired open assignment is closed first. Returns the new assignment or null.
create or replace function crm_private.grant_promotion(p crm.promotions, customer uuid, source text, source_order uuid,
                                                       expires timestamptz, assigned_by uuid)
  returns crm.customer_promotions
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.customer_promotions;
begin
  update crm.customer_promotions cp set revoked_at = now()
   where cp.organization_id = p.organization_id and cp.customer_id = customer and cp.promotion_id = p.id
     and cp.used_at is null and cp.revoked_at is null and cp.expires_at <= now();
  if p.usage_limit_per_customer is not null and (
       select count(*) from crm.customer_promotions cp
        where cp.organization_id = p.organization_id and cp.customer_id = customer and cp.promotion_id = p.id and cp.used_at is not null
     ) >= p.usage_limit_per_customer then
    return null;
  end if;
  insert into crm.customer_promotions (organization_id, customer_id, promotion_id, source, source_order_id, expires_at, assigned_by)
  values (p.organization_id, customer, p.id, source, source_order,
          coalesce(expires, least(now() + make_interval(days => p.duration_days), p.ends_at)), assigned_by)
  on conflict (organization_id, customer_id, promotion_id) where used_at is null and revoked_at is null do nothing
  returning * into r;
  return r;
end
$$;

-- Event-driven assignment, in the transaction of its cause. `event`:
--   'order'           after an order is placed: promotions whose condition mentions first_purchase or
--                     minimum_purchase, evaluated for the customer and that order
--   'referral'        the customer was referred: referral conditions (side "referred", the default)
--   'referrer'        the customer referred someone: referral conditions with side "referrer"
--   'customer_level'  the customer's level changed: customer_level conditions
-- Only active promotions inside their window and under their total limit are considered, and only
-- when the whole condition holds (e.g. {"all": [first_purchase, minimum_purchase 500]}). Returns the
-- number of assignments made.
create or replace function crm_private.assign_event_promotions(org uuid, customer uuid, event text, source_order uuid)
  returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
  order_subtotal numeric;
  order_currency text;
  p crm.promotions;
  mentions jsonpath;
  src text;
  n int := 0;
begin
  mentions := case event
    when 'order' then '$.** ? (@.type == "first_purchase" || @.type == "minimum_purchase")'
    when 'referral' then '$.** ? (@.type == "referral" && !(exists(@.side) && @.side == "referrer"))'
    when 'referrer' then '$.** ? (@.type == "referral" && @.side == "referrer")'
    when 'customer_level' then '$.** ? (@.type == "customer_level")'
  end::jsonpath;
  if mentions is null then
    raise exception 'Unknown promotion event %', event;
  end if;
  -- Most organizations have no promotion for most events: answer before reading anything else.
  if not exists (select 1 from crm.promotions x where x.organization_id = org and x.is_active and x.condition is not null
                   and jsonb_path_exists(x.condition, mentions)) then
    return 0;
  end if;
  select * into c from crm.customers x where x.id = customer and x.organization_id = org and x.deleted_at is null;
  if c.id is null then
    return 0;
  end if;
  if source_order is not null then
    select x.subtotal, x.currency into order_subtotal, order_currency from crm.orders x where x.id = source_order and x.organization_id = org;
  end if;
  for p in
    select * from crm.promotions x
     where x.organization_id = org and x.is_active and x.condition is not null
       and (x.starts_at is null or x.starts_at <= now()) and (x.ends_at is null or x.ends_at > now())
       and (x.usage_limit is null or x.times_used < x.usage_limit)
       and jsonb_path_exists(x.condition, mentions)
     order by x.created_at, x.id
  loop
    continue when not crm_private.condition_holds(p.condition, c, source_order, order_subtotal, order_currency);
    src := case event
      when 'order' then case when jsonb_path_exists(p.condition, '$.** ? (@.type == "first_purchase")') then 'first_purchase' else 'minimum_purchase' end
      when 'referrer' then 'referral'
      else event
    end;
    if (crm_private.grant_promotion(p, c.id, src, source_order, null, null)).id is not null then
      n := n + 1;
    end if;
  end loop;
  return n;
end
$$;

-- Referral: when a customer is created or updated with a referrer, both sides are evaluated.
create or replace function crm_private.tg_customer_referral() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.assign_event_promotions(new.organization_id, new.id, 'referral', null);
  perform crm_private.assign_event_promotions(new.organization_id, new.referred_by_id, 'referrer', null);
  return null;
end
$$;
drop trigger if exists _320_referral on crm.customers;
create trigger _320_referral after insert on crm.customers
  for each row when (new.referred_by_id is not null) execute function crm_private.tg_customer_referral();
drop trigger if exists _320_referral_changed on crm.customers;
create trigger _320_referral_changed after update of referred_by_id on crm.customers
  for each row when (new.referred_by_id is not null and new.referred_by_id is distinct from old.referred_by_id)
  execute function crm_private.tg_customer_referral();

-- Functions ----------------------------------------------------------------------------------------
create or replace function crm.assign_promotion(customer_id uuid, promotion_id uuid, expires_at timestamptz default null)
  returns crm.customer_promotions
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
  p crm.promotions;
  r crm.customer_promotions;
begin
  perform crm_private.require_permission('promotions:update');
  c := crm_private.visible_customer(assign_promotion.customer_id);
  select * into p from crm.promotions x where x.id = assign_promotion.promotion_id and x.organization_id = c.organization_id;
  if p.id is null then
    raise exception 'No such promotion.' using errcode = 'CRNFD', column = 'promotionId';
  end if;
  if not p.is_active or (p.ends_at is not null and p.ends_at <= now()) then
    raise exception 'The promotion is inactive or has ended.' using errcode = 'CRSTA', column = 'promotionId';
  end if;
  if assign_promotion.expires_at is not null and assign_promotion.expires_at <= now() then
    raise exception 'expiresAt must be in the future.' using errcode = 'CRVAL', column = 'expiresAt';
  end if;
  if exists (select 1 from crm.customer_promotions cp where cp.organization_id = c.organization_id and cp.customer_id = c.id
               and cp.promotion_id = p.id and cp.used_at is null and cp.revoked_at is null
               and (cp.expires_at is null or cp.expires_at > now())) then
    raise exception 'The customer already holds this promotion.' using errcode = 'CRCNF', column = 'promotionId';
  end if;
  r := crm_private.grant_promotion(p, c.id, 'manual', null, assign_promotion.expires_at, crm.current_user_id());
  if r.id is null then
    raise exception 'The customer has used this promotion as often as it allows.' using errcode = 'CRCNF', column = 'promotionId';
  end if;
  return r;
end
$$;
comment on function crm.assign_promotion(uuid, uuid, timestamptz) is 'Give a promotion to a customer by hand (promotions:update); its condition is not checked. expiresAt defaults to now + durationDays (or the promotion''s end).';

create or replace function crm.revoke_promotion(customer_promotion_id uuid) returns crm.customer_promotions
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.customer_promotions;
begin
  perform crm_private.require_permission('promotions:update');
  select * into r from crm.customer_promotions cp
   where cp.id = revoke_promotion.customer_promotion_id and cp.organization_id = crm.current_org_id()
   for update;
  if r.id is null then
    raise exception 'No such customer promotion.' using errcode = 'CRNFD', column = 'customerPromotionId';
  end if;
  perform crm_private.visible_customer(r.customer_id, 'customerPromotionId');
  if r.used_at is not null or r.revoked_at is not null then
    raise exception 'Only an unused, unrevoked promotion can be revoked.' using errcode = 'CRSTA', column = 'customerPromotionId';
  end if;
  update crm.customer_promotions cp set revoked_at = now(), revoked_by = crm.current_user_id() where cp.id = r.id returning * into r;
  return r;
end
$$;
comment on function crm.revoke_promotion(uuid) is 'Take back an unused promotion from a customer (promotions:update).';

grant execute on function crm.assign_promotion(uuid, uuid, timestamptz), crm.revoke_promotion(uuid) to crm_user;

--! split: 220-orders.sql
-- Orders, their lines and discounts, order numbers, the status machine, and order events (the hook
-- other modules attach to).

create table if not exists crm.orders (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  order_number text not null,
  customer_id uuid not null,
  deal_id uuid,
  status text not null default 'pending'
    constraint orders_status_check check (status in ('pending', 'partially_paid', 'paid', 'cancelled', 'refunded')),
  currency text not null constraint orders_currency_format check (currency ~ '^[A-Z]{3}$'),
  subtotal numeric(16, 2) not null constraint orders_subtotal_range check (subtotal >= 0),
  discount_total numeric(16, 2) not null default 0 constraint orders_discount_total_range check (discount_total >= 0 and discount_total <= subtotal),
  tax_total numeric(16, 2) not null default 0 constraint orders_tax_total_range check (tax_total >= 0),
  final_amount numeric(16, 2) not null,
  paid_amount numeric(16, 2) not null default 0,
  refunded_amount numeric(16, 2) not null default 0,
  points_earned int not null default 0 constraint orders_points_earned_range check (points_earned >= 0),
  points_redeemed int not null default 0 constraint orders_points_redeemed_range check (points_redeemed >= 0),
  points_reversed int not null default 0 constraint orders_points_reversed_range check (points_reversed between 0 and points_earned),
  notes text constraint orders_notes_length check (length(notes) <= 5000),
  ordered_at timestamptz not null default now(),
  paid_at timestamptz,
  cancelled_at timestamptz,
  cancel_reason text constraint orders_cancel_reason_length check (length(cancel_reason) <= 1000),
  idempotency_key text constraint orders_idempotency_key_length check (length(idempotency_key) between 1 and 200),
  request_hash text,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint orders_final_amount_valid check (final_amount = subtotal - discount_total + tax_total),
  constraint orders_paid_amount_range check (paid_amount >= 0 and paid_amount <= final_amount),
  constraint orders_refunded_amount_range check (refunded_amount >= 0 and refunded_amount <= paid_amount),
  constraint orders_order_number_unique unique (organization_id, order_number),
  constraint orders_organization_id_id_key unique (organization_id, id),
  -- Orders are financial records: a customer with orders cannot be purged.
  constraint orders_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete restrict,
  constraint orders_deal_fkey foreign key (organization_id, deal_id)
    references crm.deals (organization_id, id) on delete set null (deal_id)
);
-- Only orders placed by createOrder carry a key (imported history does not).
alter table crm.orders drop constraint if exists orders_idempotency_key_unique;
create unique index if not exists orders_idempotency_key_unique on crm.orders (organization_id, idempotency_key) where idempotency_key is not null;
create index if not exists orders_organization_id_customer_id_idx on crm.orders (organization_id, customer_id, ordered_at);
create index if not exists orders_organization_id_ordered_at_idx on crm.orders (organization_id, ordered_at);
create index if not exists orders_organization_id_status_idx on crm.orders (organization_id, status);
create index if not exists orders_organization_id_currency_idx on crm.orders (organization_id, currency);
create index if not exists orders_organization_id_deal_id_idx on crm.orders (organization_id, deal_id);
create index if not exists orders_created_by_idx on crm.orders (created_by);
comment on table crm.orders is E'@behavior -insert -delete +aggregates +groupedAggregates\nA sale to a customer. Created only by createOrder; its status moves through recordPayment, refundOrder and cancelOrder.';
comment on column crm.orders.organization_id is E'@behavior -update';
comment on column crm.orders.order_number is E'@behavior -update\nReadable number, gapless per organization and year: ORD-2026-000123.';
comment on column crm.orders.status is E'@behavior -update\npending → partially_paid → paid; pending → cancelled; paid or partially_paid → refunded (every payment given back). See docs/commerce.md.';
comment on column crm.orders.subtotal is E'@behavior -update\nSum of the lines before discounts and tax.';
comment on column crm.orders.discount_total is E'@behavior -update\nPromotions and redeemed points (orderDiscounts), spread over the lines.';
comment on column crm.orders.tax_total is E'@behavior -update\nSum of the lines'' tax, each rounded half-up to the currency''s minor unit.';
comment on column crm.orders.final_amount is E'@behavior -update\nsubtotal − discountTotal + taxTotal: what the customer pays.';
comment on column crm.orders.paid_amount is E'@behavior -update\nPayments recorded (recordPayment); never more than finalAmount.';
comment on column crm.orders.refunded_amount is E'@behavior -update\nRefunds recorded (refundOrder); never more than paidAmount.';
comment on column crm.orders.points_earned is E'@behavior -update\nLoyalty points this order credited.';
comment on column crm.orders.points_redeemed is E'@behavior -update\nLoyalty points redeemed as a discount on this order.';
comment on column crm.orders.points_reversed is E'@behavior -update\nEarned points taken back by refunds or cancellation.';
comment on column crm.orders.idempotency_key is E'@behavior -update\nThe key createOrder was called with: the same key returns this order again.';
comment on column crm.orders.request_hash is E'@behavior -*';
comment on column crm.orders.customer_id is E'@behavior -update';
comment on column crm.orders.deal_id is E'@behavior -update';
comment on column crm.orders.currency is E'@behavior -update';
comment on column crm.orders.ordered_at is E'@behavior -update';
comment on column crm.orders.paid_at is E'@behavior -update\nWhen the order became fully paid.';
comment on column crm.orders.cancelled_at is E'@behavior -update';
comment on column crm.orders.cancel_reason is E'@behavior -update';
comment on column crm.orders.created_by is E'@behavior -update';
comment on constraint orders_created_by_fkey on crm.orders is E'@fieldName creator\n@foreignFieldName createdOrders';

create table if not exists crm.order_items (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  order_id uuid not null,
  line_no int not null constraint order_items_line_no_range check (line_no between 1 and 1000),
  product_id uuid not null,
  sku citext not null,
  product_name text not null,
  quantity numeric(12, 3) not null constraint order_items_quantity_range check (quantity > 0),
  list_price numeric(16, 4) not null constraint order_items_list_price_range check (list_price >= 0),
  unit_price numeric(16, 4) not null constraint order_items_unit_price_range check (unit_price >= 0),
  tax_rate numeric(7, 4) not null constraint order_items_tax_rate_range check (tax_rate between 0 and 100),
  line_subtotal numeric(16, 2) not null,
  line_discount numeric(16, 2) not null default 0,
  tax_amount numeric(16, 2) not null default 0,
  line_total numeric(16, 2) not null,
  constraint order_items_line_discount_range check (line_discount between 0 and line_subtotal),
  constraint order_items_line_total_valid check (line_total = line_subtotal - line_discount + tax_amount and tax_amount >= 0),
  constraint order_items_line_no_unique unique (organization_id, order_id, line_no),
  constraint order_items_organization_id_id_key unique (organization_id, id),
  constraint order_items_order_fkey foreign key (organization_id, order_id) references crm.orders (organization_id, id) on delete cascade,
  constraint order_items_product_fkey foreign key (organization_id, product_id) references crm.products (organization_id, id) on delete restrict
);
create index if not exists order_items_organization_id_product_id_idx on crm.order_items (organization_id, product_id);
comment on table crm.order_items is E'@behavior -insert -update -delete\nA line of an order: the product, quantity, and the price and tax rate captured when the order was placed.';
comment on column crm.order_items.list_price is 'The product''s price when the order was placed.';
comment on column crm.order_items.unit_price is 'The price charged (differs from listPrice when overridden with orders:override_price).';
comment on column crm.order_items.line_subtotal is 'quantity × unitPrice, rounded half-up to the currency''s minor unit.';
comment on column crm.order_items.line_discount is 'This line''s share of the order''s discounts.';
comment on column crm.order_items.tax_amount is '(lineSubtotal − lineDiscount) × taxRate / 100, rounded half-up to the minor unit.';
comment on column crm.order_items.line_total is 'lineSubtotal − lineDiscount + taxAmount.';

-- The discount lines of an order: one per promotion applied and one for redeemed points.
create table if not exists crm.order_discounts (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  order_id uuid not null,
  position int not null,
  kind text not null constraint order_discounts_kind_check check (kind in ('promotion', 'points')),
  promotion_id uuid,
  customer_promotion_id uuid,
  code citext,
  points int constraint order_discounts_points_range check (points > 0),
  description text not null,
  amount numeric(16, 2) not null constraint order_discounts_amount_range check (amount > 0),
  constraint order_discounts_kind_valid check ((kind = 'promotion') = (promotion_id is not null) and (kind = 'points') = (points is not null)),
  constraint order_discounts_organization_id_id_key unique (organization_id, id),
  constraint order_discounts_order_fkey foreign key (organization_id, order_id) references crm.orders (organization_id, id) on delete cascade,
  constraint order_discounts_promotion_fkey foreign key (organization_id, promotion_id)
    references crm.promotions (organization_id, id) on delete restrict,
  constraint order_discounts_customer_promotion_fkey foreign key (organization_id, customer_promotion_id)
    references crm.customer_promotions (organization_id, id) on delete restrict
);
create index if not exists order_discounts_organization_id_order_id_idx on crm.order_discounts (organization_id, order_id, position);
create index if not exists order_discounts_organization_id_promotion_id_idx on crm.order_discounts (organization_id, promotion_id);
create index if not exists order_discounts_organization_id_customer_promotion_id_idx on crm.order_discounts (organization_id, customer_promotion_id);
comment on table crm.order_discounts is E'@behavior -insert -update -delete\nA discount line of an order: a promotion applied (best first) or loyalty points redeemed, in the order they were applied.';

-- Order events: the hook for everything that follows an order. createOrder, recordPayment,
-- refundOrder and cancelOrder write one row per event (crm_private.order_event) in their own
-- transaction. Another module reacts by adding an AFTER INSERT trigger on this table (see
-- _500_promotions below): it runs in the same transaction, so it commits or rolls back with the
-- order. Events: created, payment, refund (money moved) and paid, partially_paid, refunded,
-- cancelled (status changed); `status` is the order's status after the event.
create table if not exists crm.order_events (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  order_id uuid not null,
  customer_id uuid not null,
  event text not null constraint order_events_event_check
    check (event in ('created', 'payment', 'refund', 'paid', 'partially_paid', 'refunded', 'cancelled')),
  status text not null,
  amount numeric(16, 2),
  data jsonb not null default '{}'::jsonb,
  actor_id uuid references crm.users (id) on delete set null,
  occurred_at timestamptz not null default now(),
  constraint order_events_order_fkey foreign key (organization_id, order_id) references crm.orders (organization_id, id) on delete cascade,
  constraint order_events_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade
);
create index if not exists order_events_organization_id_order_id_idx on crm.order_events (organization_id, order_id, id);
create index if not exists order_events_organization_id_customer_id_idx on crm.order_events (organization_id, customer_id);
create index if not exists order_events_actor_id_idx on crm.order_events (actor_id);
comment on table crm.order_events is E'@behavior -insert -update -delete\nWhat happened to an order, in order: created, payment, refund, and the status changes paid, partially_paid, refunded, cancelled.';
comment on constraint order_events_actor_id_fkey on crm.order_events is E'@fieldName actor\n@foreignFieldName orderEvents';

-- The references of customer_promotions into orders (the tables are created in this order).
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'customer_promotions_order_fkey' and conrelid = 'crm.customer_promotions'::regclass) then
    alter table crm.customer_promotions add constraint customer_promotions_order_fkey foreign key (organization_id, order_id)
      references crm.orders (organization_id, id) on delete set null (order_id);
  end if;
  if not exists (select 1 from pg_constraint where conname = 'customer_promotions_source_order_fkey' and conrelid = 'crm.customer_promotions'::regclass) then
    alter table crm.customer_promotions add constraint customer_promotions_source_order_fkey foreign key (organization_id, source_order_id)
      references crm.orders (organization_id, id) on delete set null (source_order_id);
  end if;
end
$$;
comment on constraint customer_promotions_order_fkey on crm.customer_promotions is E'@fieldName order\n@foreignFieldName usedPromotions';
comment on constraint customer_promotions_source_order_fkey on crm.customer_promotions is E'@fieldName sourceOrder\n@foreignFieldName awardedPromotions';

-- Gapless order numbers: one counter row per organization and year, incremented in the order's
-- transaction (a rolled-back order gives its number back; concurrent orders of one organization
-- queue on the row for the rest of their transaction).
create table if not exists crm_private.order_number_counters (
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  year int not null,
  last_value bigint not null,
  primary key (organization_id, year)
);
alter table crm_private.order_number_counters enable row level security;
drop policy if exists no_access on crm_private.order_number_counters;
create policy no_access on crm_private.order_number_counters using (false);

-- Row-level security -------------------------------------------------------------------------------
-- An order is visible with its customer (customers:read_all, or the owner in the caller's own/team
-- scope), to holders of orders:read, and to whoever entered it. customers:read_all also shows the
-- orders of deleted customers (they stay in the books and the reports).
alter table crm.orders enable row level security;
alter table crm.order_items enable row level security;
alter table crm.order_discounts enable row level security;
alter table crm.order_events enable row level security;

-- The customers the caller sees through the own/team scopes (policy helper). Policies read it as
-- `customer_id = any ((select crm.visible_customer_ids())::uuid[])` after a
-- `(select crm.has_permission('customers:read_all')) or`: evaluated once per statement, and not at
-- all for holders of customers:read_all. (An EXISTS on customers per order row made the planner
-- cost a full-organization report at billions and pick slow plans.)
create or replace function crm.visible_customer_ids() returns uuid[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(c.id), '{}') from crm.customers c
   where c.organization_id = crm.current_org_id() and c.deleted_at is null
     and c.owner_id = any (crm.visible_owner_ids('customers'))
$$;
comment on function crm.visible_customer_ids() is E'@behavior -queryField -mutationField\nIds of the customers the caller sees through customers:read_own / read_team (policy helper).';
grant execute on function crm.visible_customer_ids() to crm_user;

drop policy if exists orders_select on crm.orders;
create policy orders_select on crm.orders for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('orders:read')) or created_by = (select crm.current_user_id()))
         and ((select crm.has_permission('customers:read_all')) or customer_id = any ((select crm.visible_customer_ids())::uuid[])));
drop policy if exists orders_update on crm.orders;
create policy orders_update on crm.orders for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('orders:update'))
         and ((select crm.has_permission('customers:read_all')) or customer_id = any ((select crm.visible_customer_ids())::uuid[])));

drop policy if exists order_items_select on crm.order_items;
create policy order_items_select on crm.order_items for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.orders o where o.id = order_items.order_id));
drop policy if exists order_discounts_select on crm.order_discounts;
create policy order_discounts_select on crm.order_discounts for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.orders o where o.id = order_discounts.order_id));
drop policy if exists order_events_select on crm.order_events;
create policy order_events_select on crm.order_events for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.orders o where o.id = order_events.order_id));

grant select on crm.orders, crm.order_items, crm.order_discounts, crm.order_events to crm_user;
grant update (notes) on crm.orders to crm_user;

-- Status machine -----------------------------------------------------------------------------------
create or replace function crm_private.order_transition_allowed(from_status text, to_status text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select from_status = to_status or (from_status, to_status) in (
    ('pending', 'partially_paid'), ('pending', 'paid'), ('pending', 'cancelled'),
    ('partially_paid', 'paid'), ('partially_paid', 'refunded'),
    ('paid', 'refunded'))
$$;

-- Guards every write (also the owner's): legal status moves, and what an order is — customer,
-- currency, lines and totals — never changes once placed.
create or replace function crm_private.tg_order_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm_private.order_transition_allowed(old.status, new.status) then
    raise exception 'An order cannot go from % to %.', old.status, new.status using errcode = 'CRSTA', column = 'status';
  end if;
  if (new.customer_id, new.currency, new.subtotal, new.discount_total, new.tax_total, new.final_amount, new.order_number, new.ordered_at)
     is distinct from (old.customer_id, old.currency, old.subtotal, old.discount_total, old.tax_total, old.final_amount, old.order_number, old.ordered_at) then
    raise exception 'An order''s customer, currency, number and totals never change; cancel or refund it instead.' using errcode = 'CRSTA';
  end if;
  return new;
end
$$;
drop trigger if exists _110_guard on crm.orders;
create trigger _110_guard before update on crm.orders
  for each row execute function crm_private.tg_order_guard();

drop trigger if exists _100_updated_at on crm.orders;
create trigger _100_updated_at before update on crm.orders for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.orders;
create trigger _800_audit after insert or update or delete on crm.orders for each row execute function crm_private.tg_audit('request_hash');

-- A customer with orders is never purged (the orders stay in the books); say so instead of a
-- foreign key error.
create or replace function crm_private.tg_customer_has_orders() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from crm.orders o where o.organization_id = old.organization_id and o.customer_id = old.id) then
    raise exception 'This customer has orders, which are kept; it cannot be purged (it stays deleted).' using errcode = 'CRSTA', column = 'id';
  end if;
  return old;
end
$$;
drop trigger if exists _200_has_orders on crm.customers;
create trigger _200_has_orders before delete on crm.customers
  for each row execute function crm_private.tg_customer_has_orders();

-- Order events -------------------------------------------------------------------------------------
create or replace function crm_private.order_event(o crm.orders, event text, amount numeric default null, data jsonb default '{}'::jsonb)
  returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  insert into crm.order_events (organization_id, order_id, customer_id, event, status, amount, data, actor_id)
  values (o.organization_id, o.id, o.customer_id, event, o.status, amount, coalesce(data, '{}'::jsonb), crm.current_user_id())
$$;

-- The promotions engine listens: a placed order may earn first_purchase and minimum_purchase
-- promotions.
create or replace function crm_private.tg_order_created_promotions() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.assign_event_promotions(new.organization_id, new.customer_id, 'order', new.order_id);
  return null;
end
$$;
drop trigger if exists _500_promotions on crm.order_events;
create trigger _500_promotions after insert on crm.order_events
  for each row when (new.event = 'created') execute function crm_private.tg_order_created_promotions();

-- The organization's time zone (settings.timezone), or UTC when it is missing or unknown.
create or replace function crm_private.org_timezone(org uuid) returns text
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text := coalesce((select o.settings->>'timezone' from crm.organizations o where o.id = org), 'UTC');
begin
  perform now() at time zone tz;
  return tz;
exception when others then
  return 'UTC';
end
$$;

-- The next gapless number of the organization's year (in the organization's time zone).
create or replace function crm_private.next_order_number(org uuid, at timestamptz) returns text
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  y int := extract(year from at at time zone crm_private.org_timezone(org))::int;
  n bigint;
begin
  insert into crm_private.order_number_counters as c (organization_id, year, last_value) values (org, y, 1)
  on conflict (organization_id, year) do update set last_value = c.last_value + 1
  returning c.last_value into n;
  return format('ORD-%s-%s', y, lpad(n::text, greatest(6, length(n::text)), '0'));
end
$$;

--! split: 225-transactions.sql
-- Payments and refunds (crm.transactions), and the functions that move an order through its
-- status machine: recordPayment, refundOrder, cancelOrder.

create table if not exists crm.transactions (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  order_id uuid not null,
  customer_id uuid not null,
  kind text not null constraint transactions_kind_check check (kind in ('payment', 'refund')),
  method text not null constraint transactions_method_check check (method in ('cash', 'check', 'card', 'bank_transfer', 'other')),
  amount numeric(16, 2) not null constraint transactions_amount_range check (amount > 0),
  currency text not null constraint transactions_currency_format check (currency ~ '^[A-Z]{3}$'),
  reference text constraint transactions_reference_length check (length(reference) <= 200),
  note text constraint transactions_note_length check (length(note) <= 2000),
  received_at timestamptz not null default now(),
  recorded_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  idempotency_key text constraint transactions_idempotency_key_length check (length(idempotency_key) between 1 and 200),
  created_at timestamptz not null default now(),
  constraint transactions_organization_id_id_key unique (organization_id, id),
  constraint transactions_order_fkey foreign key (organization_id, order_id) references crm.orders (organization_id, id) on delete cascade,
  constraint transactions_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade
);
alter table crm.transactions drop constraint if exists transactions_idempotency_key_unique;
create unique index if not exists transactions_idempotency_key_unique on crm.transactions (organization_id, idempotency_key) where idempotency_key is not null;
create index if not exists transactions_organization_id_order_id_idx on crm.transactions (organization_id, order_id, received_at);
create index if not exists transactions_organization_id_customer_id_idx on crm.transactions (organization_id, customer_id, received_at);
create index if not exists transactions_organization_id_received_at_idx on crm.transactions (organization_id, received_at);
create index if not exists transactions_recorded_by_idx on crm.transactions (recorded_by);
comment on table crm.transactions is E'@behavior -insert -update -delete +aggregates\nMoney received for an order (payment) or given back (refund). Written by recordPayment and refundOrder; never edited.';
comment on column crm.transactions.amount is 'Always positive; `kind` says which way the money went.';
comment on constraint transactions_recorded_by_fkey on crm.transactions is E'@fieldName recorder\n@foreignFieldName recordedTransactions';

alter table crm.transactions enable row level security;
drop policy if exists transactions_select on crm.transactions;
create policy transactions_select on crm.transactions for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.orders o where o.id = transactions.order_id));
grant select on crm.transactions to crm_user;

drop trigger if exists _800_audit on crm.transactions;
create trigger _800_audit after insert or update or delete on crm.transactions for each row execute function crm_private.tg_audit();

-- Functions ----------------------------------------------------------------------------------------
-- The order row for a business function, under the orders policy's rules (NOT_FOUND otherwise);
-- locked FOR UPDATE when `lock`, so payments, refunds and cancellation of one order queue.
create or replace function crm_private.visible_order(order_id uuid, lock boolean default false) returns crm.orders
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  o crm.orders;
  visible boolean;
begin
  if lock then
    select * into o from crm.orders x where x.id = visible_order.order_id and x.organization_id = crm.current_org_id() for update;
  else
    select * into o from crm.orders x where x.id = visible_order.order_id and x.organization_id = crm.current_org_id();
  end if;
  visible := o.id is not null
    and (crm.has_permission('orders:read') or o.created_by = crm.current_user_id())
    and (crm.has_permission('customers:read_all') or exists (
          select 1 from crm.customers c where c.organization_id = o.organization_id and c.id = o.customer_id and c.deleted_at is null
             and c.owner_id = any (crm.visible_owner_ids('customers'))));
  if not visible then
    raise exception 'No such order.' using errcode = 'CRNFD', column = 'orderId';
  end if;
  return o;
end
$$;

-- An amount a caller gives: positive and at the currency's minor unit.
create or replace function crm_private.check_amount(amount numeric, currency text, field text default 'amount') returns void
  language plpgsql immutable
  set search_path = pg_catalog, pg_temp
as $$
begin
  if amount is null or amount <= 0 then
    raise exception 'The amount must be greater than zero.' using errcode = 'CRVAL', column = field;
  end if;
  if amount <> crm_private.round_money(amount, currency) then
    raise exception 'The amount has more decimals than % allows.', currency using errcode = 'CRVAL', column = field;
  end if;
end
$$;

create or replace function crm_private.check_method(method text) returns void
  language plpgsql immutable
  set search_path = pg_catalog, pg_temp
as $$
begin
  if method is null or method not in ('cash', 'check', 'card', 'bank_transfer', 'other') then
    raise exception 'The method must be cash, check, card, bank_transfer or other.' using errcode = 'CRVAL', column = 'method';
  end if;
end
$$;

-- recordPayment: money received for an order. Keeps paid_amount and the status right (partially_paid
-- until the final amount is reached, then paid); more than what is still due is refused.
create or replace function crm.record_payment(order_id uuid, amount numeric, method text, reference text default null,
                                              received_at timestamptz default null, note text default null,
                                              idempotency_key text default null)
  returns crm.transactions
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  o crm.orders;
  t crm.transactions;
  before text;
begin
  perform crm_private.require_permission('orders:update');
  o := crm_private.visible_order(record_payment.order_id, true);
  if record_payment.idempotency_key is not null then
    select * into t from crm.transactions x
     where x.organization_id = o.organization_id and x.idempotency_key = record_payment.idempotency_key;
    if t.id is not null then
      if t.order_id <> o.id or t.kind <> 'payment' or t.amount <> record_payment.amount then
        raise exception 'This idempotency key was used for another transaction.' using errcode = 'CRCNF', column = 'idempotencyKey';
      end if;
      return t;
    end if;
  end if;
  if o.status in ('cancelled', 'refunded') then
    raise exception 'The order is %; it takes no payments.', o.status using errcode = 'CRSTA', column = 'orderId';
  end if;
  if o.status = 'paid' then
    raise exception 'The order is already paid.' using errcode = 'CRSTA', column = 'orderId';
  end if;
  perform crm_private.check_amount(record_payment.amount, o.currency);
  perform crm_private.check_method(record_payment.method);
  if record_payment.amount > o.final_amount - o.paid_amount then
    raise exception 'Over-payment: % % is still due on this order.', o.final_amount - o.paid_amount, o.currency
      using errcode = 'CRVAL', column = 'amount';
  end if;
  insert into crm.transactions (organization_id, order_id, customer_id, kind, method, amount, currency, reference, note, received_at,
                                recorded_by, idempotency_key)
  values (o.organization_id, o.id, o.customer_id, 'payment', record_payment.method, record_payment.amount, o.currency,
          nullif(btrim(record_payment.reference), ''), nullif(btrim(record_payment.note), ''),
          coalesce(record_payment.received_at, now()), crm.current_user_id(), record_payment.idempotency_key)
  returning * into t;
  before := o.status;
  update crm.orders x set
    paid_amount = x.paid_amount + t.amount,
    status = case when x.paid_amount + t.amount = x.final_amount then 'paid' else 'partially_paid' end,
    paid_at = case when x.paid_amount + t.amount = x.final_amount then now() end
   where x.id = o.id
  returning * into o;
  perform crm_private.order_event(o, 'payment', t.amount, jsonb_build_object('transaction_id', t.id, 'method', t.method));
  if o.status <> before then
    perform crm_private.order_event(o, o.status);
  end if;
  return t;
end
$$;
comment on function crm.record_payment(uuid, numeric, text, text, timestamptz, text, text) is 'Record money received for an order (orders:update). method: cash, check, card, bank_transfer or other. Over-payment is refused; the same idempotencyKey returns the first transaction.';

-- refundOrder: money given back, in full (amount omitted: everything paid and not yet refunded) or
-- in part. Earned points are taken back in proportion (all of them once the order is refunded);
-- promotions and redeemed points stay used. An order whose payments are all refunded is `refunded`.
create or replace function crm.refund_order(order_id uuid, amount numeric default null, reason text default null,
                                            method text default null, idempotency_key text default null)
  returns crm.orders
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  o crm.orders;
  t crm.transactions;
  refund numeric;
  before text;
  target int;
begin
  perform crm_private.require_permission('orders:update');
  o := crm_private.visible_order(refund_order.order_id, true);
  if refund_order.idempotency_key is not null then
    select * into t from crm.transactions x
     where x.organization_id = o.organization_id and x.idempotency_key = refund_order.idempotency_key;
    if t.id is not null then
      if t.order_id <> o.id or t.kind <> 'refund' or (refund_order.amount is not null and t.amount <> refund_order.amount) then
        raise exception 'This idempotency key was used for another transaction.' using errcode = 'CRCNF', column = 'idempotencyKey';
      end if;
      return o;
    end if;
  end if;
  if o.status not in ('paid', 'partially_paid') or o.paid_amount - o.refunded_amount <= 0 then
    raise exception 'Only a paid or partially paid order can be refunded (this one is %).', o.status using errcode = 'CRSTA', column = 'orderId';
  end if;
  refund := coalesce(refund_order.amount, o.paid_amount - o.refunded_amount);
  perform crm_private.check_amount(refund, o.currency);
  if refund > o.paid_amount - o.refunded_amount then
    raise exception 'At most % % can be refunded.', o.paid_amount - o.refunded_amount, o.currency using errcode = 'CRVAL', column = 'amount';
  end if;
  if refund_order.method is not null then
    perform crm_private.check_method(refund_order.method);
  end if;
  insert into crm.transactions (organization_id, order_id, customer_id, kind, method, amount, currency, note, recorded_by, idempotency_key)
  values (o.organization_id, o.id, o.customer_id, 'refund',
          coalesce(refund_order.method, (select x.method from crm.transactions x where x.organization_id = o.organization_id
                                           and x.order_id = o.id and x.kind = 'payment' order by x.received_at desc, x.id limit 1), 'other'),
          refund, o.currency, nullif(btrim(refund_order.reason), ''), crm.current_user_id(), refund_order.idempotency_key)
  returning * into t;
  before := o.status;
  update crm.orders x set
    refunded_amount = x.refunded_amount + refund,
    status = case when x.refunded_amount + refund = x.paid_amount then 'refunded' else x.status end
   where x.id = o.id
  returning * into o;
  -- Points: all of them once refunded, else in proportion to the money given back (rounded down).
  target := case when o.status = 'refunded' then o.points_earned
                 else floor(o.points_earned * o.refunded_amount / nullif(o.final_amount, 0))::int end;
  o := crm_private.reverse_order_points(o, coalesce(target, 0), 'refund');
  perform crm_private.order_event(o, 'refund', refund, jsonb_build_object('transaction_id', t.id, 'method', t.method));
  if o.status <> before then
    perform crm_private.order_event(o, o.status);
  end if;
  return o;
end
$$;
comment on function crm.refund_order(uuid, numeric, text, text, text) is 'Give money back for a paid or partially paid order (orders:update): all of it (amount omitted) or part. Takes back earned points in proportion; promotions stay used. The same idempotencyKey does nothing twice.';

-- cancelOrder: an order nobody has paid for is called off, as if it had not been placed: its earned
-- points are taken back, redeemed points are given back, the promotions it used are freed, and the
-- unused promotions it earned are revoked. A paid order is refunded instead.
create or replace function crm.cancel_order(order_id uuid, reason text default null) returns crm.orders
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  o crm.orders;
  freed int;
begin
  perform crm_private.require_permission('orders:update');
  o := crm_private.visible_order(cancel_order.order_id, true);
  if o.status <> 'pending' then
    raise exception 'Only a pending order can be cancelled (this one is %); refund it instead.', o.status
      using errcode = 'CRSTA', column = 'orderId';
  end if;
  if length(reason) > 1000 then
    raise exception 'The reason is too long (at most 1,000 characters).' using errcode = 'CRVAL', column = 'reason';
  end if;
  perform crm_private.loyalty_lock(o.organization_id, o.customer_id);
  update crm.orders x set status = 'cancelled', cancelled_at = now(), cancel_reason = nullif(btrim(cancel_order.reason), '')
   where x.id = o.id
  returning * into o;
  o := crm_private.reverse_order_points(o, o.points_earned, 'cancel');
  if o.points_redeemed > 0 then
    perform crm_private.loyalty_append(o.organization_id, o.customer_id, o.points_redeemed, 'cancel', o.id,
                                       crm_private.loyalty_expiry(o.organization_id), 'Points redeemed on a cancelled order', null);
  end if;
  -- A freed assignment is usable again, unless the customer meanwhile holds another open one of the
  -- same promotion: then it is closed (revoked) and only the use is given back.
  with used as (
    update crm.customer_promotions cp set used_at = null, order_id = null,
           revoked_at = case when exists (
             select 1 from crm.customer_promotions x where x.organization_id = cp.organization_id and x.customer_id = cp.customer_id
                and x.promotion_id = cp.promotion_id and x.used_at is null and x.revoked_at is null) then now() end
     where cp.organization_id = o.organization_id and cp.order_id = o.id
    returning cp.promotion_id
  )
  update crm.promotions p set times_used = p.times_used - u.n
    from (select promotion_id, count(*)::int as n from used group by promotion_id) u
   where p.organization_id = o.organization_id and p.id = u.promotion_id;
  update crm.customer_promotions cp set revoked_at = now(), revoked_by = crm.current_user_id()
   where cp.organization_id = o.organization_id and cp.source_order_id = o.id and cp.used_at is null and cp.revoked_at is null;
  perform crm_private.order_event(o, 'cancelled', null, jsonb_strip_nulls(jsonb_build_object('reason', o.cancel_reason)));
  return o;
end
$$;
comment on function crm.cancel_order(uuid, text) is 'Cancel a pending order (orders:update): earned points are taken back, redeemed points returned, used promotions freed. Paid orders are refunded instead (INVALID_STATE).';

grant execute on function crm.record_payment(uuid, numeric, text, text, timestamptz, text, text),
  crm.refund_order(uuid, numeric, text, text, text), crm.cancel_order(uuid, text) to crm_user;

--! split: 230-loyalty.sql
-- Loyalty points: an append-only ledger per customer. The balance is derived (each entry carries the
-- balance after it), never edited, and never negative: every writer holds the customer's lock while
-- it reads the last balance and appends, and a check constraint refuses a negative balance anyway.

create table if not exists crm.loyalty_ledger (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  customer_id uuid not null,
  delta int not null constraint loyalty_ledger_delta_range check (delta <> 0),
  reason text not null constraint loyalty_ledger_reason_check check (reason in ('order', 'refund', 'redeem', 'expire', 'adjust', 'cancel')),
  order_id uuid,
  expires_at timestamptz,
  balance_after int not null constraint loyalty_ledger_balance_after_range check (balance_after >= 0),
  note text constraint loyalty_ledger_note_length check (length(note) <= 500),
  idempotency_key text constraint loyalty_ledger_idempotency_key_length check (length(idempotency_key) between 1 and 200),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  constraint loyalty_ledger_expires_at_valid check (delta > 0 or expires_at is null),
  constraint loyalty_ledger_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade,
  constraint loyalty_ledger_order_fkey foreign key (organization_id, order_id)
    references crm.orders (organization_id, id) on delete set null (order_id)
);
alter table crm.loyalty_ledger drop constraint if exists loyalty_ledger_idempotency_key_unique;
create unique index if not exists loyalty_ledger_idempotency_key_unique on crm.loyalty_ledger (organization_id, idempotency_key) where idempotency_key is not null;
create index if not exists loyalty_ledger_organization_id_customer_id_idx on crm.loyalty_ledger (organization_id, customer_id, id);
create index if not exists loyalty_ledger_organization_id_order_id_idx on crm.loyalty_ledger (organization_id, order_id);
create index if not exists loyalty_ledger_organization_id_created_at_idx on crm.loyalty_ledger (organization_id, created_at);
create index if not exists loyalty_ledger_created_by_idx on crm.loyalty_ledger (created_by);
comment on table crm.loyalty_ledger is E'@behavior -insert -update -delete\nEvery change of a customer''s loyalty points, in order, with the balance after it: order (earned), redeem, refund and cancel (taken back or given back), expire, adjust. Append-only.';
comment on column crm.loyalty_ledger.delta is 'Points added (positive) or taken (negative).';
comment on column crm.loyalty_ledger.expires_at is 'When the points of a credit expire (null: never).';
comment on column crm.loyalty_ledger.balance_after is 'The customer''s balance after this entry (never negative).';
comment on constraint loyalty_ledger_created_by_fkey on crm.loyalty_ledger is E'@fieldName creator\n@foreignFieldName loyaltyEntries';

alter table crm.loyalty_ledger enable row level security;
drop policy if exists loyalty_ledger_select on crm.loyalty_ledger;
create policy loyalty_ledger_select on crm.loyalty_ledger for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = loyalty_ledger.customer_id));
grant select on crm.loyalty_ledger to crm_user;

-- Append-only, for the owner too; rows go only with their customer (a purge cascades).
create or replace function crm_private.tg_loyalty_ledger_append_only() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'DELETE' and pg_trigger_depth() > 1 then
    return old;
  end if;
  raise exception 'The loyalty ledger is append-only.' using errcode = '42501';
end
$$;
drop trigger if exists _000_append_only on crm.loyalty_ledger;
create trigger _000_append_only before update or delete on crm.loyalty_ledger
  for each row execute function crm_private.tg_loyalty_ledger_append_only();
drop trigger if exists _000_no_truncate on crm.loyalty_ledger;
create trigger _000_no_truncate before truncate on crm.loyalty_ledger
  for each statement execute function crm_private.tg_loyalty_ledger_append_only();

-- The balance ----------------------------------------------------------------------------------------
create or replace function crm.customers_loyalty_balance(c crm.customers) returns int
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select l.balance_after from crm.loyalty_ledger l
                    where l.organization_id = c.organization_id and l.customer_id = c.id order by l.id desc limit 1), 0)
$$;
comment on function crm.customers_loyalty_balance(crm.customers) is 'Loyalty points the customer has now.';
grant execute on function crm.customers_loyalty_balance(crm.customers) to crm_user;

-- Locks: every loyalty writer holds the organization's lock shared and the customer's lock
-- exclusively until it commits; the nightly expiry holds the organization's lock exclusively.
-- (Advisory locks: they touch no row, and the expiry needs no lock per customer.)
create or replace function crm_private.loyalty_lock(org uuid, customer uuid) returns void
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform pg_advisory_xact_lock_shared(74500, hashtext(org::text));
  perform pg_advisory_xact_lock(74501, hashtext(customer::text));
end
$$;

create or replace function crm_private.loyalty_balance(org uuid, customer uuid) returns int
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select l.balance_after from crm.loyalty_ledger l
                    where l.organization_id = org and l.customer_id = customer order by l.id desc limit 1), 0)
$$;

create or replace function crm_private.loyalty_settings(org uuid) returns crm.loyalty_settings
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select s from crm.loyalty_settings s where s.organization_id = org
$$;

-- When points credited now expire (null: never).
create or replace function crm_private.loyalty_expiry(org uuid) returns timestamptz
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select now() + make_interval(days => s.points_expire_days) from crm.loyalty_settings s where s.organization_id = org
$$;

-- Appends an entry after the customer's last one. The caller holds crm_private.loyalty_lock.
create or replace function crm_private.loyalty_append(org uuid, customer uuid, delta int, reason text, order_id uuid,
                                                      expires timestamptz, note text, idempotency_key text)
  returns crm.loyalty_ledger
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  balance int := crm_private.loyalty_balance(org, customer);
  r crm.loyalty_ledger;
begin
  if balance + delta < 0 then
    raise exception 'The customer has only % points.', balance using errcode = 'CRVAL', column = 'points';
  end if;
  insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, order_id, expires_at, balance_after, note,
                                  idempotency_key, created_by)
  values (org, customer, delta, reason, order_id, case when delta > 0 then expires end, balance + delta, note, idempotency_key,
          crm.current_user_id())
  returning * into r;
  return r;
end
$$;

-- Takes back the points an order earned, up to `target` in total (refunds: in proportion; cancel and
-- full refund: all). Points the customer already spent are not clawed back: the balance stops at 0.
create or replace function crm_private.reverse_order_points(o crm.orders, target int, reason text) returns crm.orders
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  take int;
begin
  if target <= o.points_reversed then
    return o;
  end if;
  perform crm_private.loyalty_lock(o.organization_id, o.customer_id);
  take := least(target - o.points_reversed, crm_private.loyalty_balance(o.organization_id, o.customer_id));
  if take > 0 then
    perform crm_private.loyalty_append(o.organization_id, o.customer_id, -take, reason, o.id, null,
                                       format('Points of order %s taken back', o.order_number), null);
  end if;
  update crm.orders x set points_reversed = target where x.id = o.id returning * into o;
  return o;
end
$$;

-- Functions ----------------------------------------------------------------------------------------
-- redeemPoints by itself (a reward outside an order; at order time use createOrder's redeemPoints).
create or replace function crm.redeem_points(customer_id uuid, points int, note text default null, idempotency_key text default null)
  returns crm.loyalty_ledger
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
  r crm.loyalty_ledger;
begin
  perform crm_private.require_permission('orders:create');
  c := crm_private.visible_customer(redeem_points.customer_id);
  if not coalesce((crm_private.loyalty_settings(c.organization_id)).is_enabled, false) then
    raise exception 'The loyalty programme is switched off.' using errcode = 'CRSTA', column = 'points';
  end if;
  if redeem_points.points is null or redeem_points.points <= 0 then
    raise exception 'Redeem at least one point.' using errcode = 'CRVAL', column = 'points';
  end if;
  if length(redeem_points.note) > 500 then
    raise exception 'The note is too long (at most 500 characters).' using errcode = 'CRVAL', column = 'note';
  end if;
  if length(redeem_points.idempotency_key) not between 1 and 200 then
    raise exception 'The idempotency key must have 1 to 200 characters.' using errcode = 'CRVAL', column = 'idempotencyKey';
  end if;
  perform crm_private.loyalty_lock(c.organization_id, c.id);
  if redeem_points.idempotency_key is not null then
    select * into r from crm.loyalty_ledger l where l.organization_id = c.organization_id and l.idempotency_key = redeem_points.idempotency_key;
    if r.id is not null then
      if r.customer_id <> c.id or r.reason <> 'redeem' or r.delta <> -redeem_points.points then
        raise exception 'This idempotency key was used for another entry.' using errcode = 'CRCNF', column = 'idempotencyKey';
      end if;
      return r;
    end if;
  end if;
  return crm_private.loyalty_append(c.organization_id, c.id, -redeem_points.points, 'redeem', null, null,
                                    nullif(btrim(redeem_points.note), ''), redeem_points.idempotency_key);
end
$$;
comment on function crm.redeem_points(uuid, int, text, text) is 'Redeem a customer''s points outside an order (orders:create; the customer must be visible). More than the balance is refused; the same idempotencyKey redeems once.';

create or replace function crm.adjust_loyalty_points(customer_id uuid, points int, note text) returns crm.loyalty_ledger
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
begin
  perform crm_private.require_permission('loyalty:manage');
  c := crm_private.visible_customer(adjust_loyalty_points.customer_id);
  if adjust_loyalty_points.points is null or adjust_loyalty_points.points = 0 then
    raise exception 'Give a number of points other than zero.' using errcode = 'CRVAL', column = 'points';
  end if;
  if nullif(btrim(coalesce(adjust_loyalty_points.note, '')), '') is null or length(adjust_loyalty_points.note) > 500 then
    raise exception 'Say why (up to 500 characters).' using errcode = 'CRVAL', column = 'note';
  end if;
  perform crm_private.loyalty_lock(c.organization_id, c.id);
  return crm_private.loyalty_append(c.organization_id, c.id, adjust_loyalty_points.points, 'adjust', null,
                                    crm_private.loyalty_expiry(c.organization_id), btrim(adjust_loyalty_points.note), null);
end
$$;
comment on function crm.adjust_loyalty_points(uuid, int, text) is 'Add or remove points by hand (loyalty:manage), with a note; the balance cannot go below zero.';

grant execute on function crm.redeem_points(uuid, int, text, text), crm.adjust_loyalty_points(uuid, int, text) to crm_user;

-- Expiry (the nightly loyalty:expire job; one set-based statement per organization) -----------------
-- Debits (redemptions, reversals, earlier expiries) consume the points that expire first. So what
-- is left to expire for a customer is what it was credited with an expiry date up to `at`, minus
-- everything it has been debited; that is what this appends as one 'expire' entry per customer.
-- The organization's loyalty lock is taken exclusively first: loyalty writes of the tenant wait for
-- the (short) run, and the run sees every balance they committed before it.
create or replace function crm_private.expire_loyalty_points(org uuid, at timestamptz default now()) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  perform pg_advisory_xact_lock(74500, hashtext(org::text));
  with totals as (
    select l.customer_id,
           coalesce(sum(l.delta) filter (where l.delta > 0 and l.expires_at <= at), 0) as expired_credits,
           coalesce(-sum(l.delta) filter (where l.delta < 0), 0) as debits
      from crm.loyalty_ledger l
     where l.organization_id = org
     group by l.customer_id
  ), due as (
    select t.customer_id, t.expired_credits - t.debits as points,
           (select l.balance_after from crm.loyalty_ledger l
             where l.organization_id = org and l.customer_id = t.customer_id order by l.id desc limit 1) as balance
      from totals t
     where t.expired_credits > t.debits
  )
  insert into crm.loyalty_ledger (organization_id, customer_id, delta, reason, balance_after, note, created_by)
  select org, d.customer_id, -least(d.points, d.balance), 'expire', d.balance - least(d.points, d.balance), 'Points expired',
         crm.current_user_id()
    from due d
   where least(d.points, d.balance) > 0;
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm_private.expire_loyalty_points(uuid, timestamptz) is 'Expire the organization''s points whose expiry date has passed; returns the number of customers whose points expired.';

--! split: 235-create-order.sql
-- createOrder: the only way an order is created. Pricing, promotions (best first), redeemed points,
-- tax and totals exact to the minor unit, usage of promotions, loyalty points and the order events,
-- in one transaction. The rules are documented in docs/commerce.md.

do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = 'crm' and t.typname = 'order_line') then
    create type crm.order_line as (product_id uuid, quantity numeric, unit_price numeric);
  end if;
end
$$;
comment on type crm.order_line is 'A line for createOrder: the product, the quantity (up to three decimals) and, with orders:override_price only, a unit price other than the product''s.';

-- The discount promotion `p` gives on lines whose amounts still to discount are `remaining`, per line
-- (the shares add up exactly; see crm_private.allocate):
--   percent       value % of what remains in scope, rounded half-up once, spread over the scope
--   fixed_amount  the amount (at most what remains in scope), spread over the scope
--   free_item     `value` units of the cheapest line in scope, on that line
-- The scope is the promotion's product, its category, or the whole order.
create or replace function crm_private.promotion_discount(p crm.promotions, products uuid[], categories uuid[], quantities numeric[],
                                                          prices numeric[], remaining numeric[], currency text)
  returns numeric[]
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int := coalesce(array_length(remaining, 1), 0);
  scale int := crm_private.currency_scale(currency);
  weights numeric[] := array_fill(0::numeric, array[n]);
  result numeric[] := array_fill(0::numeric, array[n]);
  total numeric := 0;
  amount numeric;
  cheapest int;
  i int;
begin
  for i in 1 .. n loop
    if (p.product_id is null and p.category_id is null) or products[i] = p.product_id or categories[i] = p.category_id then
      weights[i] := remaining[i];
      total := total + remaining[i];
      if remaining[i] > 0 and (cheapest is null or prices[i] < prices[cheapest]) then
        cheapest := i;
      end if;
    end if;
  end loop;
  if total <= 0 then
    return result;
  end if;
  case p.discount_type
    when 'percent' then
      amount := least(round(total * p.discount_value / 100, scale), total);
    when 'fixed_amount' then
      if p.currency is distinct from currency then
        return result;
      end if;
      amount := least(round(p.discount_value, scale), total);
    when 'free_item' then
      result[cheapest] := least(round(least(p.discount_value, quantities[cheapest]) * prices[cheapest], scale), remaining[cheapest]);
      return result;
  end case;
  return crm_private.allocate(amount, weights, scale);
end
$$;

create or replace function crm.create_order(customer_id uuid, items crm.order_line[], idempotency_key text,
                                            promotion_codes text[] default null, redeem_points int default null,
                                            deal_id uuid default null, notes text default null)
  returns crm.orders
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  c crm.customers;
  o crm.orders;
  settings crm.loyalty_settings;
  request text;
  n int := coalesce(array_length(items, 1), 0);
  line crm.order_line;
  p crm.products;
  pr crm.promotions;
  f text;
  cur text;
  scale int;
  can_override boolean := crm.has_permission('orders:override_price');
  -- The lines, as parallel arrays (1-based, in the caller's order).
  l_product uuid[] := '{}';
  l_category uuid[] := '{}';
  l_sku text[] := '{}';
  l_name text[] := '{}';
  l_qty numeric[] := '{}';
  l_list numeric[] := '{}';
  l_price numeric[] := '{}';
  l_rate numeric[] := '{}';
  l_sub numeric[] := '{}';
  l_disc numeric[];
  l_tax numeric[];
  remaining numeric[];
  share numeric[];
  subtotal numeric := 0;
  discount numeric := 0;
  tax numeric := 0;
  -- Promotion candidates and what was applied.
  quoted text;
  named_ids uuid[] := '{}';
  cand_promotion uuid[] := '{}';
  cand_assignment uuid[] := '{}';
  cand_named boolean[] := '{}';
  cand_value numeric[] := '{}';
  cand_stackable boolean[] := '{}';
  cand_created timestamptz[] := '{}';
  best int;
  assignment_id uuid;
  applied_promotion uuid[] := '{}';
  applied_assignment uuid[] := '{}';
  applied_code text[] := '{}';
  applied_amount numeric[] := '{}';
  applied_name text[] := '{}';
  amount numeric;
  points_value numeric;
  balance int;
  earned int := 0;
  multiplier numeric;
  k int;
begin
  perform crm_private.require_permission('orders:create');

  -- Idempotency: one order per key; a replay returns it and writes nothing --------------------------
  if idempotency_key is null or btrim(idempotency_key) = '' or length(idempotency_key) > 200 then
    raise exception 'An idempotency key (1 to 200 characters) is required.' using errcode = 'CRVAL', column = 'idempotencyKey';
  end if;
  request := md5(jsonb_build_array(customer_id, to_jsonb(items),
                                   (select jsonb_agg(x order by x) from (select distinct lower(btrim(x)) as x from unnest(promotion_codes) x) y),
                                   redeem_points, deal_id, notes)::text);
  perform pg_advisory_xact_lock(74502, hashtext(org::text || ':' || idempotency_key));
  select * into o from crm.orders x where x.organization_id = org and x.idempotency_key = create_order.idempotency_key;
  if o.id is not null then
    if o.request_hash is distinct from request then
      raise exception 'This idempotency key was used for a different order.' using errcode = 'CRCNF', column = 'idempotencyKey';
    end if;
    begin
      return crm_private.visible_order(o.id);
    exception when sqlstate 'CRNFD' then
      raise exception 'This idempotency key is already used.' using errcode = 'CRCNF', column = 'idempotencyKey';
    end;
  end if;

  -- Who and what ------------------------------------------------------------------------------
  c := crm_private.visible_customer(customer_id);
  if deal_id is not null and not exists (
    select 1 from crm.deals d where d.id = create_order.deal_id and d.organization_id = org and d.deleted_at is null
       and d.customer_id = c.id and (crm.has_permission('deals:read_all') or d.owner_id = any (crm.visible_owner_ids('deals')))
  ) then
    raise exception 'dealId must be a deal of this customer that you can see.' using errcode = 'CRVAL', column = 'dealId';
  end if;
  if length(notes) > 5000 then
    raise exception 'The notes are too long (at most 5,000 characters).' using errcode = 'CRVAL', column = 'notes';
  end if;
  if n = 0 then
    raise exception 'An order needs at least one item.' using errcode = 'CRVAL', column = 'items';
  end if;
  if n > 200 then
    raise exception 'An order has at most 200 items.' using errcode = 'CRVAL', column = 'items';
  end if;
  for i in 1 .. n loop
    line := items[i];
    f := format('items[%s]', i - 1);
    if line.product_id is null then
      raise exception '%.productId is required.', f using errcode = 'CRVAL', column = f || '.productId';
    end if;
    select * into p from crm.products x where x.id = line.product_id and x.organization_id = org and x.deleted_at is null;
    if p.id is null then
      raise exception 'No such product.' using errcode = 'CRVAL', column = f || '.productId';
    end if;
    if not p.is_active then
      raise exception 'The product % (%) is not active.', p.name, p.sku using errcode = 'CRVAL', column = f || '.productId';
    end if;
    if line.quantity is null or line.quantity <= 0 or line.quantity > 1000000 or line.quantity <> round(line.quantity, 3) then
      raise exception 'The quantity must be greater than 0 (at most 1,000,000, up to three decimals).' using errcode = 'CRVAL', column = f || '.quantity';
    end if;
    if line.unit_price is not null and line.unit_price is distinct from p.unit_price then
      if not can_override then
        raise exception 'Setting a price other than the product''s needs orders:override_price.' using errcode = 'CRFBD', column = f || '.unitPrice';
      end if;
      if line.unit_price < 0 or line.unit_price >= 1000000000 or line.unit_price <> round(line.unit_price, 4) then
        raise exception 'The unit price must be between 0 and 999,999,999 with up to four decimals.' using errcode = 'CRVAL', column = f || '.unitPrice';
      end if;
    end if;
    if cur is null then
      cur := p.currency;
      scale := crm_private.currency_scale(cur);
    elsif p.currency <> cur then
      raise exception 'All items of an order are priced in one currency (% and % here).', cur, p.currency using errcode = 'CRVAL', column = f || '.productId';
    end if;
    l_product := l_product || p.id;
    l_category := l_category || p.category_id;
    l_sku := l_sku || p.sku::text;
    l_name := l_name || p.name;
    l_qty := l_qty || line.quantity;
    l_list := l_list || p.unit_price;
    l_price := l_price || coalesce(line.unit_price, p.unit_price);
    l_rate := l_rate || p.tax_rate;
    l_sub := l_sub || round(line.quantity * coalesce(line.unit_price, p.unit_price), scale);
    subtotal := subtotal + l_sub[i];
  end loop;
  l_disc := array_fill(0::numeric, array[n]);
  remaining := l_sub;

  -- One order of a customer at a time: promotions, first purchase and points are decided in turn.
  perform crm_private.loyalty_lock(org, c.id);
  settings := crm_private.loyalty_settings(org);

  -- Promotions: the codes quoted and the customer's open assignments --------------------------------
  for quoted in select distinct on (lower(btrim(x))) btrim(x) from unnest(promotion_codes) x where nullif(btrim(x), '') is not null loop
    select * into pr from crm.promotions x where x.organization_id = org and x.code = quoted::citext;
    if pr.id is null then
      raise exception 'Unknown promotion code %.', quoted using errcode = 'CRVAL', column = 'promotionCodes';
    end if;
    named_ids := named_ids || pr.id;
  end loop;
  -- Lock the promotions in id order (two orders never wait for each other in a cycle), then read
  -- them again: their usage is what the last committed order left.
  perform 1 from crm.promotions x
   where x.organization_id = org and (x.id = any (named_ids) or x.id in (
           select cp.promotion_id from crm.customer_promotions cp
            where cp.organization_id = org and cp.customer_id = c.id and cp.used_at is null and cp.revoked_at is null
              and (cp.expires_at is null or cp.expires_at > now())))
   order by x.id
   for no key update;

  for pr in
    select x.* from crm.promotions x
     where x.organization_id = org and (x.id = any (named_ids) or x.id in (
             select cp.promotion_id from crm.customer_promotions cp
              where cp.organization_id = org and cp.customer_id = c.id and cp.used_at is null and cp.revoked_at is null
                and (cp.expires_at is null or cp.expires_at > now())))
     order by x.id
  loop
    declare
      named boolean := pr.id = any (named_ids);
      assignment uuid;
      problem text;
      conflict boolean := false;
    begin
      select cp.id into assignment from crm.customer_promotions cp
       where cp.organization_id = org and cp.customer_id = c.id and cp.promotion_id = pr.id and cp.used_at is null
         and cp.revoked_at is null and (cp.expires_at is null or cp.expires_at > now())
       for update;
      if not pr.is_active or (pr.starts_at is not null and pr.starts_at > now()) or (pr.ends_at is not null and pr.ends_at <= now()) then
        problem := format('The promotion %s is not active now.', coalesce(pr.code::text, pr.name));
      elsif pr.usage_limit is not null and pr.times_used >= pr.usage_limit then
        problem := format('The promotion %s has been used up.', coalesce(pr.code::text, pr.name));
        conflict := true;
      elsif pr.discount_type = 'fixed_amount' and pr.currency <> cur then
        problem := format('The promotion %s is for orders in %s.', coalesce(pr.code::text, pr.name), pr.currency);
      elsif assignment is null and not crm_private.condition_holds(pr.condition, c, null, subtotal, cur) then
        problem := format('The customer does not qualify for %s.', pr.code);
      elsif assignment is null and pr.usage_limit_per_customer is not null and (
              select count(*) from crm.customer_promotions cp
               where cp.organization_id = org and cp.customer_id = c.id and cp.promotion_id = pr.id and cp.used_at is not null
            ) >= pr.usage_limit_per_customer then
        problem := format('The customer has used %s as often as it allows.', pr.code);
      end if;
      if problem is not null then
        if named then
          raise exception '%', problem using errcode = case when conflict then 'CRCNF' else 'CRVAL' end, column = 'promotionCodes';
        end if;
        continue;
      end if;
      amount := (select sum(x) from unnest(crm_private.promotion_discount(pr, l_product, l_category, l_qty, l_price, l_sub, cur)) x);
      if amount <= 0 then
        if named then
          raise exception 'The promotion % applies to no item of this order.', pr.code using errcode = 'CRVAL', column = 'promotionCodes';
        end if;
        continue;
      end if;
      cand_promotion := cand_promotion || pr.id;
      cand_assignment := cand_assignment || assignment;
      cand_named := cand_named || named;
      cand_value := cand_value || amount;
      cand_stackable := cand_stackable || pr.is_stackable;
      cand_created := cand_created || pr.created_at;
    end;
  end loop;

  -- Best first: by the discount each gives on its own. A non-stackable promotion applies only alone,
  -- when it is the best; otherwise the stackable ones apply one after the other, each on what the
  -- earlier ones left.
  for k in
    select u.i from unnest(cand_value, cand_created, cand_promotion) with ordinality u (v, created, id, i) order by u.v desc, u.created, u.id
  loop
    if best is null then
      best := k;
    end if;
    if (not cand_stackable[best] and k <> best) or (cand_stackable[best] and not cand_stackable[k]) then
      if cand_named[k] then
        raise exception 'The promotion % cannot be combined with the other promotions of this order.',
          (select x.code from crm.promotions x where x.id = cand_promotion[k]) using errcode = 'CRVAL', column = 'promotionCodes';
      end if;
      continue;
    end if;
    select * into pr from crm.promotions x where x.id = cand_promotion[k];
    share := crm_private.promotion_discount(pr, l_product, l_category, l_qty, l_price, remaining, cur);
    amount := (select sum(x) from unnest(share) x);
    if amount <= 0 then
      if cand_named[k] then
        raise exception 'Nothing is left for the promotion % to discount.', pr.code using errcode = 'CRVAL', column = 'promotionCodes';
      end if;
      continue;
    end if;
    for i in 1 .. n loop
      remaining[i] := remaining[i] - share[i];
      l_disc[i] := l_disc[i] + share[i];
    end loop;
    applied_promotion := applied_promotion || pr.id;
    applied_assignment := applied_assignment || cand_assignment[k];
    applied_code := applied_code || pr.code::text;
    applied_amount := applied_amount || amount;
    applied_name := applied_name || pr.name;
  end loop;

  -- Redeemed points: a discount on what the promotions left ----------------------------------------
  if redeem_points is not null then
    if redeem_points <= 0 then
      raise exception 'Redeem at least one point.' using errcode = 'CRVAL', column = 'redeemPoints';
    end if;
    if not coalesce(settings.is_enabled, false) then
      raise exception 'The loyalty programme is switched off.' using errcode = 'CRSTA', column = 'redeemPoints';
    end if;
    points_value := round(redeem_points * settings.point_value, scale);
    amount := (select sum(x) from unnest(remaining) x);
    if points_value > amount then
      raise exception 'At most % points can be used on this order.', floor(amount / settings.point_value)
        using errcode = 'CRVAL', column = 'redeemPoints';
    end if;
    if points_value <= 0 then
      raise exception 'Too few points for a discount.' using errcode = 'CRVAL', column = 'redeemPoints';
    end if;
    balance := crm_private.loyalty_balance(org, c.id);
    if balance < redeem_points then
      raise exception 'The customer has only % points.', balance using errcode = 'CRVAL', column = 'redeemPoints';
    end if;
    share := crm_private.allocate(points_value, remaining, scale);
    for i in 1 .. n loop
      remaining[i] := remaining[i] - share[i];
      l_disc[i] := l_disc[i] + share[i];
    end loop;
  end if;

  -- Tax per line on the discounted amount, rounded half-up per line; totals are the lines' sums ------
  l_tax := array_fill(0::numeric, array[n]);
  for i in 1 .. n loop
    l_tax[i] := round((l_sub[i] - l_disc[i]) * l_rate[i] / 100, scale);
    discount := discount + l_disc[i];
    tax := tax + l_tax[i];
  end loop;
  if coalesce(settings.is_enabled, false) then
    select coalesce((select l.points_multiplier from crm.customer_levels l where l.organization_id = org and l.id = c.level_id), 1)
      into multiplier;
    earned := floor((subtotal - discount) * settings.points_per_unit * multiplier)::int;
  end if;

  -- Write ---------------------------------------------------------------------------------------------
  insert into crm.orders (organization_id, order_number, customer_id, deal_id, status, currency, subtotal, discount_total, tax_total,
                          final_amount, points_earned, points_redeemed, notes, ordered_at, paid_at, idempotency_key, request_hash,
                          created_by)
  values (org, crm_private.next_order_number(org, now()), c.id, create_order.deal_id,
          case when subtotal - discount + tax = 0 then 'paid' else 'pending' end, cur, subtotal, discount, tax,
          subtotal - discount + tax, earned, coalesce(redeem_points, 0), nullif(btrim(notes), ''), now(),
          case when subtotal - discount + tax = 0 then now() end, create_order.idempotency_key, request, crm.current_user_id())
  returning * into o;

  insert into crm.order_items (organization_id, order_id, line_no, product_id, sku, product_name, quantity, list_price, unit_price,
                               tax_rate, line_subtotal, line_discount, tax_amount, line_total)
  select org, o.id, i, l_product[i], l_sku[i], l_name[i], l_qty[i], l_list[i], l_price[i], l_rate[i], l_sub[i], l_disc[i], l_tax[i],
         l_sub[i] - l_disc[i] + l_tax[i]
    from generate_subscripts(l_product, 1) i;

  for k in 1 .. coalesce(cardinality(applied_promotion), 0) loop
    if applied_assignment[k] is null then
      insert into crm.customer_promotions (organization_id, customer_id, promotion_id, source, used_at, order_id, assigned_by)
      values (org, c.id, applied_promotion[k], 'code', now(), o.id, crm.current_user_id())
      returning id into assignment_id;
      applied_assignment[k] := assignment_id;
    else
      update crm.customer_promotions cp set used_at = now(), order_id = o.id where cp.id = applied_assignment[k];
    end if;
    insert into crm.order_discounts (organization_id, order_id, position, kind, promotion_id, customer_promotion_id, code, description, amount)
    values (org, o.id, k, 'promotion', applied_promotion[k], applied_assignment[k], applied_code[k], applied_name[k], applied_amount[k]);
  end loop;
  update crm.promotions x set times_used = x.times_used + 1 where x.organization_id = org and x.id = any (applied_promotion);
  if redeem_points is not null then
    insert into crm.order_discounts (organization_id, order_id, position, kind, points, description, amount)
    values (org, o.id, coalesce(cardinality(applied_promotion), 0) + 1, 'points', redeem_points,
            format('%s loyalty points', redeem_points), points_value);
    perform crm_private.loyalty_append(org, c.id, -redeem_points, 'redeem', o.id, null, format('Redeemed on order %s', o.order_number), null);
  end if;
  if earned > 0 then
    perform crm_private.loyalty_append(org, c.id, earned, 'order', o.id, crm_private.loyalty_expiry(org),
                                       format('Order %s', o.order_number), null);
  end if;

  perform crm_private.order_event(o, 'created', o.final_amount);
  if o.status = 'paid' then
    perform crm_private.order_event(o, 'paid');
  end if;
  return o;
end
$$;
comment on function crm.create_order(uuid, crm.order_line[], text, text[], int, uuid, text) is 'Place an order (orders:create) for a customer you can see: prices from the products (unitPrice only with orders:override_price), the customer''s promotions and the codes quoted applied best first, optional loyalty points redeemed, tax per line, points earned. The same idempotencyKey returns the first order and writes nothing. See docs/commerce.md.';

grant execute on function crm.create_order(uuid, crm.order_line[], text, text[], int, uuid, text) to crm_user;

--! split: 240-commerce-reports.sql
-- Commerce reports: salesReport and customerAnalytics. They run with the caller's rights (row-level
-- security decides which orders and customers count) and need reports:read_all.

drop type if exists crm.sales_report_row cascade;
create type crm.sales_report_row as (
  period_start date,
  currency text,
  orders int,
  revenue numeric,
  refunds numeric,
  net_revenue numeric,
  average_order_value numeric,
  discounts numeric,
  tax numeric
);
comment on type crm.sales_report_row is 'Sales of one period in one currency: orders placed in the period (cancelled ones left out), their final amounts (revenue), what was refunded of them, revenue − refunds, revenue ÷ orders, discounts and tax.';

drop function if exists crm.customer_analytics(date, date, text);
drop type if exists crm.customer_analytics_report cascade;
drop type if exists crm.level_count cascade;
drop type if exists crm.period_count cascade;
create type crm.level_count as (level_id uuid, name text, rank int, customers int);
create type crm.period_count as (period_start date, customers int);
create type crm.customer_analytics_report as (
  level_distribution crm.level_count[],
  new_customers crm.period_count[],
  customers_with_orders int,
  repeat_customers int,
  repeat_purchase_rate numeric
);
comment on type crm.customer_analytics_report is 'levelDistribution: customers per level now (name null: no level); newCustomers: customers created per period; of the customers with an order (not cancelled) in the window, how many ordered twice or more, and that share (0–1).';

-- work_mem: the planner cannot tell that truncating dates to months leaves few groups, and below
-- this it sorts a year of a large organization's orders instead of hashing them (measured at
-- 1,000,000 orders: ~1.3 s sorted, ~1.0 s hashed; the hash table itself stays a few hundred kB).
create or replace function crm.sales_report(from_date date, to_date date, "interval" text default 'month')
  returns crm.sales_report_row[]
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
  set work_mem = '128MB'
as $$
declare
  org uuid := crm.current_org_id();
  step text := lower(coalesce(sales_report."interval", 'month'));
  tz text := coalesce((select o.settings->>'timezone' from crm.organizations o where o.id = org), 'UTC');
  result crm.sales_report_row[];
begin
  if crm.current_user_id() is null then
    raise exception 'Sign in first.' using errcode = 'CRUNA';
  end if;
  if not crm.has_permission('reports:read_all') then
    raise exception 'You need the reports:read_all permission to do this.' using errcode = 'CRFBD';
  end if;
  if step not in ('day', 'week', 'month') then
    raise exception 'interval is day, week or month.' using errcode = 'CRVAL', column = 'interval';
  end if;
  if from_date > to_date then
    raise exception 'fromDate is after toDate.' using errcode = 'CRVAL', column = 'fromDate';
  end if;
  if (to_date - from_date) / (case step when 'day' then 1 when 'week' then 7 else 28 end) > 3700 then
    raise exception 'At most 3,700 periods per report.' using errcode = 'CRVAL', column = 'fromDate';
  end if;
  begin
    perform now() at time zone tz;
  exception when others then
    tz := 'UTC';
  end;
  with placed as (
    select date_trunc(step, x.ordered_at at time zone tz)::date as period, x.currency, x.final_amount, x.refunded_amount,
           x.discount_total, x.tax_total
      from crm.orders x
     where x.organization_id = org and x.status <> 'cancelled'
       and x.ordered_at >= (from_date::timestamp at time zone tz) and x.ordered_at < ((to_date + 1)::timestamp at time zone tz)
  ), totals as (
    select period, currency, count(*)::int as n, sum(final_amount) as revenue, sum(refunded_amount) as refunds,
           sum(discount_total) as discounts, sum(tax_total) as tax
      from placed group by period, currency
  ), periods as (
    select g::date as period
      from generate_series(date_trunc(step, from_date::timestamp), date_trunc(step, to_date::timestamp), ('1 ' || step)::interval) g
  )
  select coalesce(array_agg(row(p.period, cu.currency, coalesce(t.n, 0), coalesce(t.revenue, 0.00), coalesce(t.refunds, 0.00),
                                coalesce(t.revenue, 0.00) - coalesce(t.refunds, 0.00), coalesce(round(t.revenue / nullif(t.n, 0), 2), 0.00),
                                coalesce(t.discounts, 0.00), coalesce(t.tax, 0.00))::crm.sales_report_row
                            order by p.period, cu.currency), '{}')
    into result
    from periods p cross join (select distinct currency from totals) cu
    left join totals t on t.period = p.period and t.currency = cu.currency;
  return result;
end
$$;
comment on function crm.sales_report(date, date, text) is 'Sales per period (interval: day, week from Monday, or month, in the organization''s time zone) and currency, from fromDate to toDate inclusive, by order date: orders, revenue, refunds, net revenue, average order value, discounts, tax. Money is never added across currencies. Needs reports:read_all; counts the orders the caller can see.';

create or replace function crm.customer_analytics(from_date date default null, to_date date default null, "interval" text default 'month')
  returns crm.customer_analytics_report
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  step text := lower(coalesce(customer_analytics."interval", 'month'));
  t date := coalesce(to_date, current_date);
  f date := coalesce(from_date, (date_trunc('month', coalesce(to_date, current_date)) - interval '11 months')::date);
  tz text := coalesce((select o.settings->>'timezone' from crm.organizations o where o.id = org), 'UTC');
  result crm.customer_analytics_report;
begin
  if crm.current_user_id() is null then
    raise exception 'Sign in first.' using errcode = 'CRUNA';
  end if;
  if not crm.has_permission('reports:read_all') then
    raise exception 'You need the reports:read_all permission to do this.' using errcode = 'CRFBD';
  end if;
  if step not in ('day', 'week', 'month') then
    raise exception 'interval is day, week or month.' using errcode = 'CRVAL', column = 'interval';
  end if;
  if f > t then
    raise exception 'fromDate is after toDate.' using errcode = 'CRVAL', column = 'fromDate';
  end if;
  if (t - f) / (case step when 'day' then 1 when 'week' then 7 else 28 end) > 3700 then
    raise exception 'At most 3,700 periods per report.' using errcode = 'CRVAL', column = 'fromDate';
  end if;
  begin
    perform now() at time zone tz;
  exception when others then
    tz := 'UTC';
  end;
  result.level_distribution := (
    select coalesce(array_agg(row(x.level_id, x.name, x.rank, x.n)::crm.level_count order by x.rank nulls last), '{}')
      from (select l.id as level_id, l.name::text as name, l.rank, count(c.id)::int as n
              from crm.customer_levels l left join crm.customers c on c.level_id = l.id
             where l.organization_id = org
             group by l.id
            union all
            select null, null, null, count(*)::int from crm.customers c
             where c.organization_id = org and c.level_id is null
            having count(*) > 0) x);
  result.new_customers := (
    select coalesce(array_agg(row(p.period, coalesce(n.n, 0))::crm.period_count order by p.period), '{}')
      from (select g::date as period
              from generate_series(date_trunc(step, f::timestamp), date_trunc(step, t::timestamp), ('1 ' || step)::interval) g) p
      left join (select date_trunc(step, c.created_at at time zone tz)::date as period, count(*)::int as n
                   from crm.customers c
                  where c.organization_id = org
                    and c.created_at >= (f::timestamp at time zone tz) and c.created_at < ((t + 1)::timestamp at time zone tz)
                  group by 1) n on n.period = p.period);
  select count(*)::int, count(*) filter (where k >= 2)::int
    into result.customers_with_orders, result.repeat_customers
    from (select x.customer_id, count(*) as k from crm.orders x
           where x.organization_id = org and x.status <> 'cancelled'
             and x.ordered_at >= (f::timestamp at time zone tz) and x.ordered_at < ((t + 1)::timestamp at time zone tz)
           group by x.customer_id) per_customer;
  result.repeat_purchase_rate := coalesce(round(result.repeat_customers::numeric / nullif(result.customers_with_orders, 0), 4), 0);
  return result;
end
$$;
comment on function crm.customer_analytics(date, date, text) is 'Customers per level (now), new customers per period, and the repeat-purchase rate in the window (default: the last 12 months by month): of the customers with an order that was not cancelled, the share with two or more. Needs reports:read_all; counts what the caller can see.';

grant execute on function crm.sales_report(date, date, text), crm.customer_analytics(date, date, text) to crm_user;

--! split: 249-commerce-reference-guards.sql
-- References a caller sets on commerce records must point at rows the caller can see (the reference
-- guard of the hardening migration; business functions run as the owner and check for themselves).
select crm_private.guard_references(t::regclass)
  from unnest(array['crm.products', 'crm.promotions', 'crm.customer_promotions', 'crm.customer_level_changes',
                    'crm.orders', 'crm.order_items', 'crm.order_discounts', 'crm.order_events',
                    'crm.transactions', 'crm.loyalty_ledger']) t;
