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
