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
