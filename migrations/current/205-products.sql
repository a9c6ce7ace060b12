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
