-- Webhooks: endpoints per organization (webhooks:manage), business events written to an outbox in
-- the transaction of their cause, one delivery per event and matching endpoint, delivered by the
-- webhooks:deliver worker task (signed, retried with backoff for about a day, logged per attempt).

do $$
begin
  perform crm_private.register_permission('webhooks:manage',
    'Manage webhook endpoints, read their delivery log and redeliver events', array['Administrator']);
end
$$;

-- Event types ---------------------------------------------------------------------------------------
-- Later modules add theirs (order.created, invoice.paid …) and attach crm_private.tg_webhook_outbox
-- to their tables.
create table if not exists crm_private.webhook_event_types (
  event_type text primary key constraint webhook_event_types_format check (event_type ~ '^[a-z_]+\.[a-z_]+$'),
  description text not null
);
alter table crm_private.webhook_event_types enable row level security;
drop policy if exists no_access on crm_private.webhook_event_types;
create policy no_access on crm_private.webhook_event_types using (false);
insert into crm_private.webhook_event_types (event_type, description) values
  ('customer.created', 'A customer was created'),
  ('customer.updated', 'A customer was changed (or restored)'),
  ('customer.deleted', 'A customer was deleted'),
  ('contact.created', 'A contact was created'),
  ('contact.updated', 'A contact was changed (or restored)'),
  ('contact.deleted', 'A contact was deleted'),
  ('deal.created', 'A deal was created'),
  ('deal.updated', 'A deal was changed (or restored)'),
  ('deal.deleted', 'A deal was deleted'),
  ('deal.stage_changed', 'A deal moved to another stage (sent as well as deal.updated)'),
  ('task.created', 'A task was created'),
  ('task.updated', 'A task was changed'),
  ('task.deleted', 'A task was deleted')
on conflict (event_type) do update set description = excluded.description;

-- Addresses a webhook may not reach unless the server allows private networks: loopback, private,
-- link-local (cloud metadata), carrier-grade NAT, unique-local, multicast, unspecified. The worker
-- checks the same list after resolving the host name (worker/webhooks/safety.ts); keep them in step.
create or replace function crm_private.is_blocked_address(a inet) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select a <<= any (array[
    '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24',
    '192.168.0.0/16', '198.18.0.0/15', '224.0.0.0/4', '240.0.0.0/4', '255.255.255.255/32',
    '::/128', '::1/128', '::ffff:0:0/96', 'fc00::/7', 'fe80::/10', 'ff00::/8']::inet[])
$$;

-- Endpoints -----------------------------------------------------------------------------------------
create table if not exists crm.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  url text not null constraint webhook_endpoints_url_length check (length(url) between 10 and 2000),
  event_types text[] not null default '{*}'
    constraint webhook_endpoints_event_types_length check (cardinality(event_types) between 1 and 100),
  description text not null default '' constraint webhook_endpoints_description_length check (length(description) <= 500),
  secret text not null default ('whsec_' || encode(public.gen_random_bytes(32), 'hex')),
  is_active boolean not null default true,
  consecutive_failures int not null default 0,
  disabled_at timestamptz,
  disabled_reason text,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint webhook_endpoints_organization_id_id_key unique (organization_id, id)
);
create index if not exists webhook_endpoints_organization_id_active_idx on crm.webhook_endpoints (organization_id, is_active);
create index if not exists webhook_endpoints_created_by_idx on crm.webhook_endpoints (created_by);
comment on table crm.webhook_endpoints is 'A URL that receives the organization''s events, signed with its secret (webhooks:manage).';
comment on column crm.webhook_endpoints.organization_id is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.event_types is 'Event types to send (see webhookEventTypes), or "*" for all.';
comment on column crm.webhook_endpoints.secret is E'@behavior -insert -update\nThe signing secret (HMAC-SHA256); rotate it with rotateWebhookSecret.';
comment on column crm.webhook_endpoints.consecutive_failures is E'@behavior -insert -update\nFailed delivery attempts in a row; the endpoint is disabled when they reach the server''s limit.';
comment on column crm.webhook_endpoints.disabled_at is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.disabled_reason is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.created_by is E'@behavior -insert -update';
comment on constraint webhook_endpoints_created_by_fkey on crm.webhook_endpoints is E'@fieldName creator\n@foreignFieldName createdWebhookEndpoints';

-- The outbox: one row per business event, written only when an active endpoint wants it.
create table if not exists crm.webhook_events (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  event_type text not null,
  record_id uuid,
  payload jsonb not null,
  created_at timestamptz not null default now(),
  constraint webhook_events_organization_id_id_key unique (organization_id, id)
);
create index if not exists webhook_events_organization_id_created_at_idx on crm.webhook_events (organization_id, created_at);
comment on table crm.webhook_events is E'@behavior -insert -update -delete\nA business event written in the transaction of its cause (the outbox). payload is {"object": the row, "previous": changed columns before the change}.';

create table if not exists crm.webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  endpoint_id uuid not null,
  event_id uuid not null,
  event_type text not null,
  status text not null default 'pending'
    constraint webhook_deliveries_status_check check (status in ('pending', 'retrying', 'succeeded', 'failed')),
  attempts int not null default 0,
  next_attempt_at timestamptz default now(),
  last_status_code int,
  last_error text,
  last_duration_ms int,
  delivered_at timestamptz,
  redelivery_of uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint webhook_deliveries_organization_id_id_key unique (organization_id, id),
  constraint webhook_deliveries_endpoint_fkey foreign key (organization_id, endpoint_id)
    references crm.webhook_endpoints (organization_id, id) on delete cascade,
  constraint webhook_deliveries_event_fkey foreign key (organization_id, event_id)
    references crm.webhook_events (organization_id, id) on delete cascade,
  constraint webhook_deliveries_redelivery_of_fkey foreign key (organization_id, redelivery_of)
    references crm.webhook_deliveries (organization_id, id) on delete set null (redelivery_of)
);
create index if not exists webhook_deliveries_endpoint_idx on crm.webhook_deliveries (organization_id, endpoint_id, created_at desc);
create index if not exists webhook_deliveries_event_idx on crm.webhook_deliveries (organization_id, event_id);
create index if not exists webhook_deliveries_status_idx on crm.webhook_deliveries (organization_id, status);
create index if not exists webhook_deliveries_redelivery_of_idx on crm.webhook_deliveries (organization_id, redelivery_of);
comment on table crm.webhook_deliveries is E'@behavior -insert -update -delete\nOne event sent to one endpoint: its status, attempts and last response. redeliverWebhook sends it again.';
comment on constraint webhook_deliveries_endpoint_fkey on crm.webhook_deliveries is E'@fieldName endpoint\n@foreignFieldName deliveries';
comment on constraint webhook_deliveries_event_fkey on crm.webhook_deliveries is E'@fieldName event\n@foreignFieldName deliveries';
comment on constraint webhook_deliveries_redelivery_of_fkey on crm.webhook_deliveries is E'@fieldName original\n@foreignFieldName redeliveries';

create table if not exists crm.webhook_delivery_attempts (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  delivery_id uuid not null,
  attempt int not null,
  status_code int,
  duration_ms int not null,
  error text,
  response_body text constraint webhook_delivery_attempts_response_body_length check (length(response_body) <= 2048),
  created_at timestamptz not null default now(),
  constraint webhook_delivery_attempts_delivery_fkey foreign key (organization_id, delivery_id)
    references crm.webhook_deliveries (organization_id, id) on delete cascade
);
create index if not exists webhook_delivery_attempts_delivery_idx on crm.webhook_delivery_attempts (organization_id, delivery_id, attempt);
comment on table crm.webhook_delivery_attempts is E'@behavior -insert -update -delete\nThe log of every attempt: response code, duration, error and the start of the response body (2 KB).';
comment on constraint webhook_delivery_attempts_delivery_fkey on crm.webhook_delivery_attempts is E'@fieldName delivery\n@foreignFieldName attemptLog';

-- Policies: everything here is for webhooks:manage holders of the organization.
alter table crm.webhook_endpoints enable row level security;
alter table crm.webhook_events enable row level security;
alter table crm.webhook_deliveries enable row level security;
alter table crm.webhook_delivery_attempts enable row level security;
do $$
declare
  t text;
begin
  foreach t in array array['webhook_endpoints', 'webhook_events', 'webhook_deliveries', 'webhook_delivery_attempts'] loop
    execute format('drop policy if exists %I on crm.%I', t || '_select', t);
    execute format($p$create policy %I on crm.%I for select
      using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')))$p$, t || '_select', t);
  end loop;
end
$$;
drop policy if exists webhook_endpoints_write on crm.webhook_endpoints;
create policy webhook_endpoints_write on crm.webhook_endpoints for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')));

grant select on crm.webhook_endpoints, crm.webhook_events, crm.webhook_deliveries, crm.webhook_delivery_attempts to crm_user;
grant insert (url, event_types, description, is_active), update (url, event_types, description, is_active), delete
  on crm.webhook_endpoints to crm_user;

-- Endpoint rules: http(s) URL without credentials; event types from the catalog; no private, loopback
-- or link-local literal address unless the server allows it (the worker checks again after DNS).
create or replace function crm_private.tg_webhook_endpoint_check() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  host text;
  unknown text;
  allow_private boolean := crm_private.setting('webhooks.allow_private_networks', 'false')::boolean;
  allow_http boolean := crm_private.setting('webhooks.allow_http', 'false')::boolean;
begin
  if tg_op = 'UPDATE' and new.is_active and not old.is_active then
    -- Re-enabled by an admin: a fresh start.
    new.consecutive_failures := 0;
    new.disabled_at := null;
    new.disabled_reason := null;
  end if;
  -- The URL and event types are checked when they are set (the worker's own updates skip this).
  if tg_op = 'UPDATE' and new.url is not distinct from old.url and new.event_types is not distinct from old.event_types then
    return new;
  end if;
  new.url := btrim(new.url);
  if new.url !~* '^https?://[^/?#@\s]+(/[^\s]*)?$' then
    raise exception 'The URL must be an http(s) URL without user name or password.' using errcode = 'CRVAL', column = 'url';
  end if;
  if new.url ~* '^http://' and not allow_http then
    raise exception 'Webhook URLs must use https.' using errcode = 'CRVAL', column = 'url';
  end if;
  host := lower(substring(new.url from '^[A-Za-z]+://(\[[^\]]+\]|[^/:?#]+)'));
  host := btrim(host, '[]');
  if not allow_private then
    if host = 'localhost' or host like '%.localhost' or host like '%.local' or host like '%.internal' then
      raise exception 'Webhooks cannot be sent to %.', host using errcode = 'CRVAL', column = 'url';
    end if;
    if host ~ '^[0-9.]+$' or host ~ ':' then
      begin
        if crm_private.is_blocked_address(host::inet) then
          raise exception 'Webhooks cannot be sent to private, loopback or link-local addresses.' using errcode = 'CRVAL', column = 'url';
        end if;
      exception when invalid_text_representation then
        raise exception 'The URL''s host is not a valid address.' using errcode = 'CRVAL', column = 'url';
      end;
    end if;
  end if;
  new.event_types := array(select distinct btrim(e) from unnest(new.event_types) e order by 1);
  select string_agg(e, ', ') into unknown from unnest(new.event_types) e
   where e <> '*' and not exists (select 1 from crm_private.webhook_event_types t where t.event_type = e);
  if unknown is not null then
    raise exception 'Unknown event types: %.', unknown using errcode = 'CRVAL', column = 'event_types',
      hint = 'See webhookEventTypes.';
  end if;
  return new;
end
$$;
drop trigger if exists _150_check on crm.webhook_endpoints;
create trigger _150_check before insert or update on crm.webhook_endpoints
  for each row execute function crm_private.tg_webhook_endpoint_check();
drop trigger if exists _100_updated_at on crm.webhook_endpoints;
create trigger _100_updated_at before update on crm.webhook_endpoints
  for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.webhook_endpoints;
create trigger _800_audit after insert or update or delete on crm.webhook_endpoints
  for each row execute function crm_private.tg_audit('secret', 'consecutive_failures');

-- The outbox trigger ----------------------------------------------------------------------------------
-- Statement-level (transition tables): one set-based pass per statement. TG_ARGV[0] is the event
-- prefix (customer, contact, deal, task …). A table with deleted_at gets <prefix>.deleted on soft
-- delete; deals also get deal.stage_changed. Nothing is written when no active endpoint of the
-- organization wants the event, so organizations without webhooks pay one index probe per statement.
create or replace function crm_private.tg_webhook_outbox() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  prefix text := tg_argv[0];
  orgs uuid[];
  candidates jsonb[];
begin
  if tg_op = 'DELETE' then
    select array_agg(distinct organization_id) into orgs from old_rows;
  else
    select array_agg(distinct organization_id) into orgs from new_rows;
  end if;
  if not exists (select 1 from crm.webhook_endpoints e where e.organization_id = any (orgs) and e.is_active) then
    return null;
  end if;
  -- Candidate events: {org, type, id, payload}.
  if tg_op = 'INSERT' then
    select array_agg(jsonb_build_object('org', j->>'organization_id', 'type', prefix || '.created', 'id', j->>'id',
                                        'payload', jsonb_build_object('object', j - 'search_vector')))
      into candidates
      from (select to_jsonb(n) as j from new_rows n) x
     where j->>'deleted_at' is null;
  elsif tg_op = 'UPDATE' then
    select array_agg(ev) into candidates from (
      select jsonb_build_object('org', n->>'organization_id',
               'type', prefix || case when o->>'deleted_at' is null and n->>'deleted_at' is not null then '.deleted' else '.updated' end,
               'id', n->>'id',
               'payload', jsonb_build_object('object', n - 'search_vector', 'previous',
                 (select coalesce(jsonb_object_agg(k, o->k), '{}') from jsonb_object_keys(n) k
                   where k not in ('updated_at', 'search_vector') and o->k is distinct from n->k))) as ev
        from (select to_jsonb(nr) as n, to_jsonb(orow) as o from new_rows nr join old_rows orow on orow.id = nr.id) x
       where not (o->>'deleted_at' is not null and n->>'deleted_at' is not null)
         and (o - 'updated_at' - 'search_vector') is distinct from (n - 'updated_at' - 'search_vector')
      union all
      select jsonb_build_object('org', n->>'organization_id', 'type', 'deal.stage_changed', 'id', n->>'id',
               'payload', jsonb_build_object('object', n - 'search_vector',
                                             'previous', jsonb_build_object('stage_id', o->'stage_id', 'probability', o->'probability')))
        from (select to_jsonb(nr) as n, to_jsonb(orow) as o from new_rows nr join old_rows orow on orow.id = nr.id) x
       where prefix = 'deal' and o->>'stage_id' is distinct from n->>'stage_id'
    ) e;
  else
    select array_agg(jsonb_build_object('org', j->>'organization_id', 'type', prefix || '.deleted', 'id', j->>'id',
                                        'payload', jsonb_build_object('object', j - 'search_vector')))
      into candidates
      from (select to_jsonb(o) as j from old_rows o) x
     where j->>'deleted_at' is null;
  end if;
  if candidates is null then
    return null;
  end if;
  perform crm_private.webhook_enqueue(candidates);
  return null;
end
$$;

-- Writes events (for the endpoints that want them) and their deliveries, and queues one delivery job
-- each. `candidates`: [{org, type, id, payload}]. Also the entry point for modules that emit events
-- from their own functions.
create or replace function crm_private.webhook_enqueue(candidates jsonb[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  n int;
begin
  with wanted as (
    select (c->>'org')::uuid as org, c->>'type' as event_type, (c->>'id')::uuid as record_id, c->'payload' as payload
      from unnest(candidates) c
     where exists (select 1 from crm.webhook_endpoints e
                    where e.organization_id = (c->>'org')::uuid and e.is_active
                      and e.event_types && array[c->>'type', '*'])
  ), events as (
    insert into crm.webhook_events (organization_id, event_type, record_id, payload)
    select org, event_type, record_id, payload from wanted
    returning id, organization_id, event_type
  ), deliveries as (
    insert into crm.webhook_deliveries (organization_id, endpoint_id, event_id, event_type)
    select ev.organization_id, e.id, ev.id, ev.event_type
      from events ev
      join crm.webhook_endpoints e on e.organization_id = ev.organization_id and e.is_active
                                  and e.event_types && array[ev.event_type, '*']
    returning id
  )
  select coalesce(sum(crm_private.queue_webhook_delivery(d.id, null)), 0) into n from deliveries d;
  return n;
end
$$;

create or replace function crm_private.queue_webhook_delivery(delivery uuid, run_at timestamptz) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.add_job('webhooks:deliver', jsonb_build_object('deliveryId', delivery),
                              'webhook-delivery:' || delivery, run_at, 5);
  return 1;
end
$$;

do $$
declare
  t record;
begin
  for t in select * from (values ('customers', 'customer'), ('contacts', 'contact'), ('deals', 'deal'), ('tasks', 'task')) v (tbl, prefix) loop
    execute format('drop trigger if exists _710_webhooks_insert on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
    execute format('drop trigger if exists _710_webhooks_update on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_update after update on crm.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
    execute format('drop trigger if exists _710_webhooks_delete on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_delete after delete on crm.%I referencing old table as old_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
  end loop;
end
$$;

-- Delivery (used by the worker) -------------------------------------------------------------------------
-- Everything the worker needs to send one delivery; null when the delivery is gone or finished.
create or replace function crm_private.webhook_delivery_to_send(delivery uuid)
  returns table (delivery_id uuid, organization_id uuid, endpoint_id uuid, url text, secret text, endpoint_active boolean,
                 event_id uuid, event_type text, event_created_at timestamptz, payload jsonb, attempt int)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select d.id, d.organization_id, e.id, e.url, e.secret, e.is_active, ev.id, ev.event_type, ev.created_at, ev.payload, d.attempts + 1
    from crm.webhook_deliveries d
    join crm.webhook_endpoints e on e.organization_id = d.organization_id and e.id = d.endpoint_id
    join crm.webhook_events ev on ev.organization_id = d.organization_id and ev.id = d.event_id
   where d.id = delivery and d.status in ('pending', 'retrying')
$$;

-- Seconds to wait after failed attempt n: 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h — ten
-- attempts over about a day — with ±10 % jitter so endpoints recovering from an outage are not hit
-- by every retry at once. Null: no more attempts.
create or replace function crm_private.webhook_retry_delay(attempt int) returns interval
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select make_interval(secs => d * (0.9 + random() * 0.2))
    from (select (array[30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800])[attempt] as d) x
   where d is not null
$$;

-- Records one attempt: the log row, the delivery's state (and its next attempt), the endpoint's run of
-- failures. An endpoint whose failures in a row reach `disable_after` is disabled and the members who
-- manage webhooks are notified. Returns {status, nextAttemptAt, endpointDisabled}.
create or replace function crm_private.webhook_record_attempt(
  delivery uuid, status_code int, duration_ms int, error text, response_body text, disable_after int
) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.webhook_deliveries;
  e crm.webhook_endpoints;
  ok boolean := error is null and status_code between 200 and 299;
  wait interval;
  disabled boolean := false;
begin
  select * into d from crm.webhook_deliveries x where x.id = delivery for update;
  if d.id is null or d.status not in ('pending', 'retrying') then
    return jsonb_build_object('status', coalesce(d.status, 'missing'));
  end if;
  insert into crm.webhook_delivery_attempts (organization_id, delivery_id, attempt, status_code, duration_ms, error, response_body)
  values (d.organization_id, d.id, d.attempts + 1, status_code, greatest(duration_ms, 0), left(error, 1000), left(response_body, 2048));
  if ok then
    update crm.webhook_deliveries x set status = 'succeeded', attempts = x.attempts + 1, last_status_code = status_code,
           last_error = null, last_duration_ms = duration_ms, delivered_at = now(), next_attempt_at = null, updated_at = now()
     where x.id = d.id returning * into d;
    update crm.webhook_endpoints x set consecutive_failures = 0 where x.id = d.endpoint_id and x.consecutive_failures <> 0;
    return jsonb_build_object('status', d.status);
  end if;
  wait := crm_private.webhook_retry_delay(d.attempts + 1);
  update crm.webhook_deliveries x set status = case when wait is null then 'failed' else 'retrying' end,
         attempts = x.attempts + 1, last_status_code = status_code, last_error = left(error, 1000), last_duration_ms = duration_ms,
         next_attempt_at = now() + wait, updated_at = now()
   where x.id = d.id returning * into d;
  update crm.webhook_endpoints x set consecutive_failures = x.consecutive_failures + 1
   where x.id = d.endpoint_id returning * into e;
  if e.is_active and e.consecutive_failures >= greatest(disable_after, 1) then
    update crm.webhook_endpoints x set is_active = false, disabled_at = now(),
           disabled_reason = format('%s failed delivery attempts in a row (last: %s)', e.consecutive_failures,
                                    coalesce(error, 'HTTP ' || status_code))
     where x.id = e.id;
    perform crm_private.notify(e.organization_id,
      array(select m.user_id from crm.organization_memberships m
              join crm.role_permissions rp on rp.role_id = m.role_id and rp.permission_code = 'webhooks:manage'
             where m.organization_id = e.organization_id and m.is_active),
      'webhook_disabled', 'Webhook endpoint disabled: ' || left(e.url, 200),
      format('%s failed delivery attempts in a row. Fix the receiver, re-enable the endpoint and redeliver what it missed.',
             e.consecutive_failures),
      'webhook_endpoint', e.id, null, jsonb_build_object('endpointId', e.id, 'url', e.url));
    disabled := true;
  end if;
  if d.status = 'retrying' then
    perform crm_private.queue_webhook_delivery(d.id, d.next_attempt_at);
  end if;
  return jsonb_build_object('status', d.status, 'nextAttemptAt', d.next_attempt_at, 'endpointDisabled', disabled);
end
$$;

-- A delivery whose endpoint is disabled (or was deleted) is closed without sending.
create or replace function crm_private.webhook_skip_delivery(delivery uuid, reason text) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.webhook_deliveries set status = 'failed', last_error = reason, next_attempt_at = null, updated_at = now()
   where id = delivery and status in ('pending', 'retrying')
$$;

-- The API ------------------------------------------------------------------------------------------------
create or replace function crm.webhook_event_types() returns text[]
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select array_agg(event_type order by event_type) from crm_private.webhook_event_types
$$;
comment on function crm.webhook_event_types() is 'The event types a webhook endpoint can subscribe to.';

-- Sends a delivery's event to its endpoint again, as a new delivery (the original keeps its log).
create or replace function crm.redeliver_webhook(delivery_id uuid) returns crm.webhook_deliveries
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.webhook_deliveries;
  r crm.webhook_deliveries;
begin
  perform crm_private.require_permission('webhooks:manage');
  select * into d from crm.webhook_deliveries x where x.id = redeliver_webhook.delivery_id and x.organization_id = crm.current_org_id();
  if d.id is null then
    raise exception 'No such delivery.' using errcode = 'CRNFD', column = 'deliveryId';
  end if;
  if not exists (select 1 from crm.webhook_endpoints e where e.organization_id = d.organization_id and e.id = d.endpoint_id and e.is_active) then
    raise exception 'The endpoint is disabled; enable it first.' using errcode = 'CRSTA', column = 'deliveryId';
  end if;
  insert into crm.webhook_deliveries (organization_id, endpoint_id, event_id, event_type, redelivery_of)
  values (d.organization_id, d.endpoint_id, d.event_id, d.event_type, d.id)
  returning * into r;
  perform crm_private.queue_webhook_delivery(r.id, null);
  return r;
end
$$;
comment on function crm.redeliver_webhook(uuid) is 'Send a delivery''s event to its endpoint again (a new delivery, webhooks:manage).';

create or replace function crm.rotate_webhook_secret(endpoint_id uuid) returns crm.webhook_endpoints
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  e crm.webhook_endpoints;
begin
  perform crm_private.require_permission('webhooks:manage');
  update crm.webhook_endpoints x set secret = 'whsec_' || encode(public.gen_random_bytes(32), 'hex')
   where x.id = rotate_webhook_secret.endpoint_id and x.organization_id = crm.current_org_id()
  returning * into e;
  if e.id is null then
    raise exception 'No such webhook endpoint.' using errcode = 'CRNFD', column = 'endpointId';
  end if;
  return e;
end
$$;
comment on function crm.rotate_webhook_secret(uuid) is 'Give an endpoint a new signing secret (the old one stops working at once).';

grant execute on function crm.webhook_event_types(), crm.redeliver_webhook(uuid), crm.rotate_webhook_secret(uuid) to crm_user;
