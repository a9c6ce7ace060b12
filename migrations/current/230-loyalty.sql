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
