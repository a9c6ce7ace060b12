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
