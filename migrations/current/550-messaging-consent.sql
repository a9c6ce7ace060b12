-- Messaging, part 1: permissions, the organization's messaging settings, consent per customer and
-- channel, the organization's suppression list, the signing key of message links, and the one
-- eligibility rule every marketing send path uses. docs/campaigns.md.
do $$
begin
  perform crm_private.register_permission('consent:manage',
    'Record customers'' consent (opt-in, opt-out) and edit the suppression list',
    array['Administrator', 'Sales Manager']);
end
$$;

-- Settings ------------------------------------------------------------------------------------------
-- One row per organization, created with it. Automation templates point at crm.message_templates
-- (the foreign keys are added in 560 once that table exists).
create table if not exists crm.messaging_settings (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  send_rate_per_minute int not null default 6000
    constraint messaging_settings_send_rate_per_minute_range check (send_rate_per_minute between 1 and 1000000),
  quiet_hours_start smallint constraint messaging_settings_quiet_hours_start_range check (quiet_hours_start between 0 and 23),
  quiet_hours_end smallint constraint messaging_settings_quiet_hours_end_range check (quiet_hours_end between 0 and 23),
  conversion_window_days int not null default 7
    constraint messaging_settings_conversion_window_days_range check (conversion_window_days between 1 and 365),
  birthday_enabled boolean not null default false,
  birthday_template_id uuid,
  inactivity_enabled boolean not null default false,
  inactivity_days int not null default 90 constraint messaging_settings_inactivity_days_range check (inactivity_days between 1 and 3650),
  inactivity_template_id uuid,
  welcome_enabled boolean not null default false,
  welcome_template_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint messaging_settings_organization_unique unique (organization_id),
  constraint messaging_settings_organization_id_id_key unique (organization_id, id),
  constraint messaging_settings_quiet_hours_valid check ((quiet_hours_start is null) = (quiet_hours_end is null))
);
comment on table crm.messaging_settings is E'@behavior -insert -delete\nThe organization''s messaging settings: send rate, quiet hours (local time), the conversion window of campaign metrics, and the lifecycle automations (birthday, inactivity, welcome), each with its template and on/off switch. Edited with settings:manage.';
comment on column crm.messaging_settings.organization_id is E'@behavior -insert -update';
comment on column crm.messaging_settings.send_rate_per_minute is 'Messages the worker sends per minute at most for this organization.';
comment on column crm.messaging_settings.quiet_hours_start is 'Local hour (0–23) from which nothing is sent; with quietHoursEnd. Messages wait until the quiet hours end.';
comment on column crm.messaging_settings.quiet_hours_end is 'Local hour (0–23) at which sending resumes. 21 → 8 spans midnight.';
comment on column crm.messaging_settings.conversion_window_days is 'Days after a send during which a recipient''s paid order counts as a conversion (campaigns may override).';
comment on column crm.messaging_settings.inactivity_days is 'Customers with no paid order for this many days get the inactivity message (once per inactivity episode).';

alter table crm.messaging_settings enable row level security;
drop policy if exists messaging_settings_select on crm.messaging_settings;
create policy messaging_settings_select on crm.messaging_settings for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists messaging_settings_update on crm.messaging_settings;
create policy messaging_settings_update on crm.messaging_settings for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));
grant select on crm.messaging_settings to crm_user;
grant update (send_rate_per_minute, quiet_hours_start, quiet_hours_end, conversion_window_days, birthday_enabled, birthday_template_id,
  inactivity_enabled, inactivity_days, inactivity_template_id, welcome_enabled, welcome_template_id) on crm.messaging_settings to crm_user;

create or replace function crm_private.seed_messaging_settings(org uuid) returns void
  language sql
  set search_path = pg_catalog, pg_temp
as $$
  insert into crm.messaging_settings (organization_id) values (org) on conflict (organization_id) do nothing
$$;
create or replace function crm_private.tg_seed_messaging_settings() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_messaging_settings(new.id);
  return null;
end
$$;
drop trigger if exists _550_seed_messaging_settings on crm.organizations;
create trigger _550_seed_messaging_settings after insert on crm.organizations
  for each row execute function crm_private.tg_seed_messaging_settings();
select crm_private.seed_messaging_settings(id) from crm.organizations;

drop trigger if exists _100_updated_at on crm.messaging_settings;
create trigger _100_updated_at before update on crm.messaging_settings for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.messaging_settings;
create trigger _800_audit after insert or update or delete on crm.messaging_settings for each row execute function crm_private.tg_audit();

-- Consent ---------------------------------------------------------------------------------------------
-- The latest consent state of a customer (or one of its contacts) for a channel. No row: the customer
-- may receive marketing messages (soft opt-in of an existing customer relationship); opted_out: nothing
-- is sent on that channel, by any marketing path. Written by setConsent and the unsubscribe page.
create table if not exists crm.consents (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  contact_id uuid,
  channel text not null constraint consents_channel_check check (channel in ('email', 'sms')),
  status text not null constraint consents_status_check check (status in ('opted_in', 'opted_out')),
  source text not null default 'manual' constraint consents_source_length check (length(btrim(source)) between 1 and 200),
  recorded_at timestamptz not null default now(),
  recorded_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  constraint consents_organization_id_id_key unique (organization_id, id),
  constraint consents_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint consents_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete cascade
);
create unique index if not exists consents_subject_unique on crm.consents
  (organization_id, customer_id, channel, coalesce(contact_id, '00000000-0000-0000-0000-000000000000'::uuid));
create index if not exists consents_organization_id_contact_id_idx on crm.consents (organization_id, contact_id);
create index if not exists consents_recorded_by_idx on crm.consents (recorded_by);
comment on table crm.consents is E'@behavior -insert -update -delete\nConsent of a customer (or one of its contacts) to marketing messages on a channel: opted in or out, with its source (manual, unsubscribe link, import …) and time. Written with setConsent; the unsubscribe page records opt-outs.';

-- The suppression list: addresses nothing is sent to (hard bounces, complaints, manual entries).
create table if not exists crm.suppressions (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  channel text not null constraint suppressions_channel_check check (channel in ('email', 'sms')),
  address citext not null constraint suppressions_address_length check (length(btrim(address::text)) between 3 and 320),
  reason text not null default 'manual' constraint suppressions_reason_check check (reason in ('hard_bounce', 'complaint', 'manual', 'unsubscribe')),
  note text constraint suppressions_note_length check (length(note) <= 1000),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  constraint suppressions_address_unique unique (organization_id, channel, address),
  constraint suppressions_organization_id_id_key unique (organization_id, id)
);
create index if not exists suppressions_created_by_idx on crm.suppressions (created_by);
comment on table crm.suppressions is E'@behavior -update\nAddresses the organization never sends to: hard bounces and complaints (recorded from the e-mail provider''s notifications), unsubscribes, and manual entries. Needs consent:manage to add or remove.';
comment on column crm.suppressions.organization_id is E'@behavior -insert -update';
comment on column crm.suppressions.created_by is E'@behavior -insert -update';

alter table crm.consents enable row level security;
alter table crm.suppressions enable row level security;
drop policy if exists consents_select on crm.consents;
create policy consents_select on crm.consents for select using (organization_id = (select crm.current_org_id()));
drop policy if exists suppressions_select on crm.suppressions;
create policy suppressions_select on crm.suppressions for select using (organization_id = (select crm.current_org_id()));
drop policy if exists suppressions_insert on crm.suppressions;
create policy suppressions_insert on crm.suppressions for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('consent:manage')));
drop policy if exists suppressions_delete on crm.suppressions;
create policy suppressions_delete on crm.suppressions for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('consent:manage')));
grant select on crm.consents, crm.suppressions to crm_user;
grant insert (channel, address, reason, note), delete on crm.suppressions to crm_user;

drop trigger if exists _800_audit on crm.consents;
create trigger _800_audit after insert or update or delete on crm.consents for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.suppressions;
create trigger _800_audit after insert or update or delete on crm.suppressions for each row execute function crm_private.tg_audit();

-- Records a consent decision (upsert of the subject's row). Needs consent:manage; the customer (and
-- contact) must be visible to the caller.
create or replace function crm.set_consent(customer_id uuid, channel text, opted_in boolean, source text default 'manual', contact_id uuid default null)
  returns crm.consents
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  result crm.consents;
begin
  if not crm.has_permission('consent:manage') then
    raise exception 'Recording consent needs consent:manage.' using errcode = 'CRFBD';
  end if;
  if not exists (select 1 from crm.customers c where c.organization_id = org and c.id = set_consent.customer_id and c.deleted_at is null
                   and (crm.has_permission('customers:read_all') or c.owner_id = any (crm.visible_owner_ids('customers')))) then
    raise exception 'Customer not found.' using errcode = 'CRNFD', column = 'customer_id';
  end if;
  if set_consent.contact_id is not null and not exists (
       select 1 from crm.contacts k where k.organization_id = org and k.id = set_consent.contact_id and k.customer_id = set_consent.customer_id) then
    raise exception 'The contact belongs to another customer.' using errcode = 'CRVAL', column = 'contact_id';
  end if;
  if channel not in ('email', 'sms') then
    raise exception 'Unknown channel "%"; use email or sms.', channel using errcode = 'CRVAL', column = 'channel';
  end if;
  result := crm_private.record_consent(org, set_consent.customer_id, set_consent.contact_id, set_consent.channel,
                                       set_consent.opted_in, coalesce(nullif(btrim(source), ''), 'manual'));
  return result;
end
$$;
comment on function crm.set_consent(uuid, text, boolean, text, uuid) is 'Records a customer''s (or contact''s) consent to marketing messages on a channel (email, sms): optedIn true or false, with its source. Needs consent:manage.';
revoke all on function crm.set_consent(uuid, text, boolean, text, uuid) from public;
grant execute on function crm.set_consent(uuid, text, boolean, text, uuid) to crm_user;

create or replace function crm_private.record_consent(org uuid, customer uuid, contact uuid, chan text, opted_in boolean, src text)
  returns crm.consents
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  insert into crm.consents (organization_id, customer_id, contact_id, channel, status, source, recorded_at)
  values (org, customer, contact, chan, case when opted_in then 'opted_in' else 'opted_out' end, src, now())
  on conflict (organization_id, customer_id, channel, (coalesce(contact_id, '00000000-0000-0000-0000-000000000000'::uuid)))
  do update set status = excluded.status, source = excluded.source, recorded_at = excluded.recorded_at, recorded_by = crm.current_user_id()
  returning *
$$;

-- The eligibility rule of marketing sends, used by every send path (fan-out, automations, the worker's
-- last check before sending, enqueue_message) and by the segment field has_consent. A plain SQL
-- function (no pinned search_path, names qualified) so the planner inlines it into set-based
-- statements. Hidden from the API.
create or replace function crm.may_receive(org uuid, customer uuid, chan text, address text) returns boolean
  language sql stable
as $$
  select may_receive.address is not null
     and not exists (select 1 from crm.consents k
                      where k.organization_id = org and k.customer_id = customer and k.channel = chan and k.status = 'opted_out')
     and not exists (select 1 from crm.suppressions s
                      where s.organization_id = org and s.channel = chan and s.address operator(public.=) may_receive.address::public.citext)
$$;
comment on function crm.may_receive(uuid, uuid, text, text) is E'@behavior -*\nWhether a marketing message may go to this customer at this address on this channel: an address, no opt-out, not suppressed.';
grant execute on function crm.may_receive(uuid, uuid, text, text) to crm_user;

-- The address of a customer on a channel: the customer's own, else its primary contact's.
create or replace function crm.recipient_address(org uuid, customer uuid, chan text) returns text
  language sql stable
as $$
  select case chan
           when 'email' then coalesce((select c.email::text from crm.customers c where c.organization_id = org and c.id = customer),
                                      (select k.email::text from crm.contacts k where k.organization_id = org and k.customer_id = customer
                                          and k.is_primary and k.deleted_at is null))
           when 'sms' then coalesce((select c.phone from crm.customers c where c.organization_id = org and c.id = customer),
                                    (select coalesce(k.mobile, k.phone) from crm.contacts k where k.organization_id = org and k.customer_id = customer
                                        and k.is_primary and k.deleted_at is null))
         end
$$;
comment on function crm.recipient_address(uuid, uuid, text) is E'@behavior -*\nThe address a message to this customer goes to on a channel: its own e-mail or phone, else its primary contact''s.';
grant execute on function crm.recipient_address(uuid, uuid, text) to crm_user;

-- Signed links -----------------------------------------------------------------------------------------
-- One deployment-wide signing key (random, created here) and the public base URL of the API, which
-- the server writes at start-up (PUBLIC_API_URL). Tokens are "<message id hex>.<HMAC-SHA256 of kind and
-- id, base64url, 128 bits>": unsubscribe, open and click links never expire and cannot be forged.
create table if not exists crm_private.messaging_keys (
  id boolean primary key default true constraint messaging_keys_single check (id),
  secret bytea not null default public.gen_random_bytes(32),
  public_url text not null default 'http://localhost:3000'
);
insert into crm_private.messaging_keys (id) values (true) on conflict do nothing;
alter table crm_private.messaging_keys enable row level security;
drop policy if exists no_access on crm_private.messaging_keys;
create policy no_access on crm_private.messaging_keys using (false);

create or replace function crm_private.sign_message(kind text, id uuid, secret bytea) returns text
  language sql immutable
as $$
  select replace(id::text, '-', '') || '.'
      || left(translate(encode(public.hmac(convert_to(kind || ':' || id::text, 'UTF8'), secret, 'sha256'), 'base64'), '+/=', '-_'), 22)
$$;

create or replace function crm_private.message_token(kind text, message uuid) returns text
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select crm_private.sign_message(kind, message, k.secret) from crm_private.messaging_keys k
$$;

-- The message a token names, or null when the token is malformed or its signature is wrong.
create or replace function crm_private.verify_message_token(kind text, token text) returns uuid
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  id uuid;
begin
  if token !~ '^[0-9a-f]{32}\.[A-Za-z0-9_-]{22}$' then
    return null;
  end if;
  id := (substr(token, 1, 8) || '-' || substr(token, 9, 4) || '-' || substr(token, 13, 4) || '-' || substr(token, 17, 4) || '-' || substr(token, 21, 12))::uuid;
  if crm_private.message_token(kind, id) = token then
    return id;
  end if;
  return null;
end
$$;

create or replace function crm_private.set_messaging_public_url(url text) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm_private.messaging_keys set public_url = rtrim(url, '/') where public_url is distinct from rtrim(url, '/')
$$;
