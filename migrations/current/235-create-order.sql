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
