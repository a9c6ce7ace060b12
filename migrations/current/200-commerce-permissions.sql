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
