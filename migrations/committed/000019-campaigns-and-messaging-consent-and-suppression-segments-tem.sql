--! Previous: sha1:15845ee275cfbef0bb0f3b8246eadc07aed3605b
--! Hash: sha1:cadc9240dcf3f079e92807f045ba0c7e381a5022
--! Message: Campaigns and messaging: consent and suppression, segments, templates, campaigns, the message queue, engagement, automations

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 550-messaging-consent.sql
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

--! split: 560-segments-templates.sql
-- Messaging, part 2: segments (a filter document compiled to SQL by one function) and message
-- templates (placeholders checked on write, rendered in SQL at fan-out). docs/campaigns.md.

-- Segments ------------------------------------------------------------------------------------------
create table if not exists crm.segments (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint segments_name_length check (length(btrim(name)) between 1 and 200),
  description text constraint segments_description_length check (length(description) <= 5000),
  filter jsonb not null constraint segments_filter_object check (jsonb_typeof(filter) = 'object'),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint segments_name_unique unique (organization_id, name),
  constraint segments_organization_id_id_key unique (organization_id, id)
);
create index if not exists segments_created_by_idx on crm.segments (created_by);
comment on table crm.segments is E'A named group of customers: a filter document ({"all": [...]} or {"any": [...]} of conditions on known fields) that campaigns target. See docs/campaigns.md for the language.';
comment on column crm.segments.organization_id is E'@behavior -insert -update';
comment on column crm.segments.created_by is E'@behavior -insert -update';
comment on column crm.segments.filter is 'The filter document, checked on write: an unknown field or operator, or a value of the wrong type, is refused with VALIDATION naming its path.';

-- Templates --------------------------------------------------------------------------------------------
create table if not exists crm.message_templates (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint message_templates_name_length check (length(btrim(name)) between 1 and 200),
  channel text not null constraint message_templates_channel_check check (channel in ('email', 'sms')),
  subject text constraint message_templates_subject_length check (length(subject) <= 500),
  body text not null constraint message_templates_body_length check (length(body) between 1 and 100000),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint message_templates_name_unique unique (organization_id, name),
  constraint message_templates_organization_id_id_key unique (organization_id, id),
  constraint message_templates_subject_valid check (channel <> 'email' or length(btrim(subject)) > 0)
);
create index if not exists message_templates_created_by_idx on crm.message_templates (created_by);
comment on table crm.message_templates is E'A message with placeholders, rendered for each recipient when a campaign or automation queues it: [FirstName], [LastName], [Level], [Points], [CompanyName], [UnsubscribeUrl]. An e-mail body is HTML (the values are escaped); every marketing e-mail gets an unsubscribe link (appended when the body has no [UnsubscribeUrl]).';
comment on column crm.message_templates.organization_id is E'@behavior -insert -update';
comment on column crm.message_templates.created_by is E'@behavior -insert -update';
comment on column crm.message_templates.subject is 'The e-mail subject (required for e-mail; placeholders allowed).';

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'messaging_settings_birthday_template_fkey') then
    alter table crm.messaging_settings add constraint messaging_settings_birthday_template_fkey foreign key (organization_id, birthday_template_id)
      references crm.message_templates (organization_id, id) on delete set null (birthday_template_id);
    alter table crm.messaging_settings add constraint messaging_settings_inactivity_template_fkey foreign key (organization_id, inactivity_template_id)
      references crm.message_templates (organization_id, id) on delete set null (inactivity_template_id);
    alter table crm.messaging_settings add constraint messaging_settings_welcome_template_fkey foreign key (organization_id, welcome_template_id)
      references crm.message_templates (organization_id, id) on delete set null (welcome_template_id);
  end if;
end
$$;
create index if not exists messaging_settings_birthday_template_idx on crm.messaging_settings (organization_id, birthday_template_id);
create index if not exists messaging_settings_inactivity_template_idx on crm.messaging_settings (organization_id, inactivity_template_id);
create index if not exists messaging_settings_welcome_template_idx on crm.messaging_settings (organization_id, welcome_template_id);
comment on constraint messaging_settings_birthday_template_fkey on crm.messaging_settings is E'@fieldName birthdayTemplate\n@foreignFieldName birthdaySettings';
comment on constraint messaging_settings_inactivity_template_fkey on crm.messaging_settings is E'@fieldName inactivityTemplate\n@foreignFieldName inactivitySettings';
comment on constraint messaging_settings_welcome_template_fkey on crm.messaging_settings is E'@fieldName welcomeTemplate\n@foreignFieldName welcomeSettings';

-- Row-level security: campaigns:read sees, campaigns:create / update / delete write.
alter table crm.segments enable row level security;
alter table crm.message_templates enable row level security;
do $$
declare
  t text;
begin
  foreach t in array array['segments', 'message_templates'] loop
    execute format('drop policy if exists %1$s_select on crm.%1$I', t);
    execute format('create policy %1$s_select on crm.%1$I for select using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:read'')))', t);
    execute format('drop policy if exists %1$s_insert on crm.%1$I', t);
    execute format('create policy %1$s_insert on crm.%1$I for insert with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:create'')))', t);
    execute format('drop policy if exists %1$s_update on crm.%1$I', t);
    execute format('create policy %1$s_update on crm.%1$I for update using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:update'')))
                    with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:update'')))', t);
    execute format('drop policy if exists %1$s_delete on crm.%1$I', t);
    execute format('create policy %1$s_delete on crm.%1$I for delete using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:delete'')))', t);
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;
grant select, delete on crm.segments, crm.message_templates to crm_user;
grant insert (name, description, filter), update (name, description, filter) on crm.segments to crm_user;
grant insert (name, channel, subject, body), update (name, channel, subject, body) on crm.message_templates to crm_user;

-- The segment compiler ------------------------------------------------------------------------------
-- Compiles a filter document into a boolean SQL expression over `c` (a row of crm.customers). Only
-- known fields and operators produce SQL, from the fixed fragments below; every value the caller wrote
-- stays in the document and is read by the expression as `$1 #>> '{path}'` — the caller's text never
-- becomes SQL text. Run the result with `execute … using filter`. Refuses anything else with VALIDATION
-- (column = the path of the offending part, e.g. filter.all.2.op).
--
-- node := {"all": [node, …]} | {"any": [node, …]} | {"not": node}
--       | {"field": <name>, "op": <operator>, "value": <value>}          (custom_field also takes "key")
create or replace function crm.segment_sql(filter jsonb, path text[] default '{}') returns text
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  here text := array_to_string(array['filter'] || path, '.');
  keys text[];
  parts text[] := '{}';
  i int;
  field text;
  op text;
  val jsonb;
  v text;        -- SQL reading the value: ($1 #>> '{…,value}')
  k text;        -- SQL reading the key
  lhs text;
  paid constant text := $q$o.status in ('paid', 'partially_paid')$q$;
  comparison constant text[] := array['=', '!=', '>', '<', '>=', '<='];
  equality constant text[] := array['=', '!=', 'in'];
begin
  if filter is null or jsonb_typeof(filter) <> 'object' then
    raise exception 'A filter is an object: {"all": [...]}, {"any": [...]}, {"not": ...} or a condition {"field", "op", "value"}.'
      using errcode = 'CRVAL', column = here;
  end if;
  select array_agg(x order by x) into keys from jsonb_object_keys(filter) x;
  if keys = array['all'] or keys = array['any'] then
    if jsonb_typeof(filter -> keys[1]) <> 'array' or jsonb_array_length(filter -> keys[1]) = 0 then
      raise exception '"%" takes a non-empty list of conditions.', keys[1] using errcode = 'CRVAL', column = here || '.' || keys[1];
    end if;
    if jsonb_array_length(filter -> keys[1]) > 100 then
      raise exception 'At most 100 conditions in one list.' using errcode = 'CRVAL', column = here || '.' || keys[1];
    end if;
    for i in 0 .. jsonb_array_length(filter -> keys[1]) - 1 loop
      parts := parts || crm.segment_sql(filter -> keys[1] -> i, path || array[keys[1], i::text]);
    end loop;
    return '(' || array_to_string(parts, case keys[1] when 'all' then ' and ' else ' or ' end) || ')';
  elsif keys = array['not'] then
    return '(not coalesce(' || crm.segment_sql(filter -> 'not', path || array['not']) || ', false))';
  end if;
  if not (keys <@ array['field', 'key', 'op', 'value']) or not (array['field', 'op', 'value'] <@ keys) then
    raise exception 'A condition has "field", "op" and "value" (and "key" for custom_field); found %.', array_to_string(keys, ', ')
      using errcode = 'CRVAL', column = here;
  end if;
  if jsonb_typeof(filter -> 'field') <> 'string' then
    raise exception 'The field is a name.' using errcode = 'CRVAL', column = here || '.field';
  end if;
  field := filter ->> 'field';
  op := filter ->> 'op';
  val := filter -> 'value';
  v := format('($1 #>> %L)', '{' || array_to_string(path || array['value'], ',') || '}');
  k := format('($1 #>> %L)', '{' || array_to_string(path || array['key'], ',') || '}');

  if field not in ('level', 'last_purchase_days_ago', 'rfm_score', 'status', 'tag', 'order_count', 'total_spent',
                   'birthday_month', 'city', 'country', 'custom_field', 'has_consent', 'lead_score') then
    raise exception 'Unknown field. Known fields: level, last_purchase_days_ago, rfm_score, status, tag, order_count, total_spent, birthday_month, city, country, custom_field, has_consent, lead_score.'
      using errcode = 'CRVAL', column = here || '.field';
  end if;
  if (field <> 'custom_field') and keys @> array['key'] then
    raise exception 'Only custom_field takes a key.' using errcode = 'CRVAL', column = here || '.key';
  end if;
  if jsonb_typeof(filter -> 'op') is distinct from 'string' or op not in ('=', '!=', '>', '<', '>=', '<=', 'in', 'has', 'not_has') then
    raise exception 'Unknown operator. Operators: =, !=, >, <, >=, <=, in, has, not_has (by field).' using errcode = 'CRVAL', column = here || '.op';
  end if;

  -- Numeric fields ----------------------------------------------------------------------------------
  if field in ('last_purchase_days_ago', 'rfm_score', 'order_count', 'total_spent', 'lead_score', 'birthday_month') then
    if field = 'birthday_month' then
      if not (op = any (equality)) then
        raise exception 'birthday_month takes =, != or in.' using errcode = 'CRVAL', column = here || '.op';
      end if;
    elsif not (op = any (comparison)) then
      raise exception '% takes =, !=, >, <, >= or <=.', field using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op = 'in' then
      if jsonb_typeof(val) <> 'array' or jsonb_array_length(val) = 0
         or exists (select 1 from jsonb_array_elements(val) e where jsonb_typeof(e) <> 'number' or (e::text)::numeric not between 1 and 12 or (e::text)::numeric % 1 <> 0) then
        raise exception 'in takes a non-empty list of months (1–12).' using errcode = 'CRVAL', column = here || '.value';
      end if;
    elsif jsonb_typeof(val) <> 'number' then
      raise exception '% compares with a number.', field using errcode = 'CRVAL', column = here || '.value';
    elsif field = 'birthday_month' and ((val::text)::numeric not between 1 and 12 or (val::text)::numeric % 1 <> 0) then
      raise exception 'A month is 1–12.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    lhs := case field
      when 'rfm_score' then 'c.rfm_score'
      when 'lead_score' then 'c.lead_score'
      when 'birthday_month' then 'extract(month from c.birth_date)'
      when 'last_purchase_days_ago' then
        format('floor(extract(epoch from (now() - (select max(o.ordered_at) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id and %s))) / 86400)', paid)
      when 'order_count' then
        format('(select count(*) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id and %s)', paid)
      when 'total_spent' then
        'coalesce((select sum(o.paid_amount - o.refunded_amount) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id), 0)'
    end;
    if op = 'in' then
      return format('(%s = any (array(select jsonb_array_elements_text($1 #> %L)::numeric)))', lhs, '{' || array_to_string(path || array['value'], ',') || '}');
    end if;
    return format('(%s %s %s::numeric)', lhs, case op when '!=' then '<>' else op end, v);
  end if;

  -- Level: by name; =/!= the level itself, >/< by rank ---------------------------------------------
  if field = 'level' then
    if not (op = any (comparison)) then
      raise exception 'level takes =, !=, >, <, >= or <= (by rank).' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' or not exists (
         select 1 from crm.customer_levels l where l.organization_id = crm.current_org_id() and lower(l.name::text) = lower(val #>> '{}')) then
      raise exception 'Unknown level; use the name of one of the organization''s levels.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('((select l.rank from crm.customer_levels l where l.organization_id = c.organization_id and l.id = c.level_id) %s '
                  '(select l.rank from crm.customer_levels l where l.organization_id = c.organization_id and lower(l.name::text) = lower(%s)))',
                  case op when '!=' then '<>' else op end, v);
  end if;

  -- Tags --------------------------------------------------------------------------------------------
  if field = 'tag' then
    if op not in ('has', 'not_has') then
      raise exception 'tag takes has or not_has.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' then
      raise exception 'A tag is a name.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('(%s exists (select 1 from crm.customer_tags ct join crm.tags t on t.organization_id = ct.organization_id and t.id = ct.tag_id '
                  'where ct.organization_id = c.organization_id and ct.customer_id = c.id and lower(t.name::text) = lower(%s)))',
                  case op when 'not_has' then 'not' else '' end, v);
  end if;

  -- Consent ---------------------------------------------------------------------------------------------
  if field = 'has_consent' then
    if op not in ('=', '!=') then
      raise exception 'has_consent takes = or !=.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' or val #>> '{}' not in ('email', 'sms') then
      raise exception 'has_consent names a channel: email or sms.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('(%s coalesce(crm.may_receive(c.organization_id, c.id, %2$s, crm.recipient_address(c.organization_id, c.id, %2$s)), false))',
                  case op when '!=' then 'not' else '' end, v);
  end if;

  -- Text fields -------------------------------------------------------------------------------------
  if field in ('status', 'city', 'country') then
    if not (op = any (equality)) then
      raise exception '% takes =, != or in.', field using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op = 'in' then
      if jsonb_typeof(val) <> 'array' or jsonb_array_length(val) = 0 or exists (select 1 from jsonb_array_elements(val) e where jsonb_typeof(e) <> 'string') then
        raise exception 'in takes a non-empty list of texts.' using errcode = 'CRVAL', column = here || '.value';
      end if;
    elsif jsonb_typeof(val) <> 'string' then
      raise exception '% compares with a text.', field using errcode = 'CRVAL', column = here || '.value';
    end if;
    if field = 'status' and exists (
         select 1 from jsonb_array_elements(case when op = 'in' then val else jsonb_build_array(val) end) e
          where e #>> '{}' not in ('lead', 'prospect', 'customer', 'churned')) then
      raise exception 'Unknown status; use lead, prospect, customer or churned.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    lhs := case field when 'status' then 'c.status' when 'city' then $q$lower(c.billing_address ->> 'city')$q$
                      else $q$lower(c.billing_address ->> 'country')$q$ end;
    if op = 'in' then
      return format('(%s = any (array(select lower(jsonb_array_elements_text($1 #> %L)))))', lhs, '{' || array_to_string(path || array['value'], ',') || '}');
    end if;
    return format('(%s %s lower(%s))', lhs, case op when '!=' then 'is distinct from' else '=' end, v);
  end if;

  -- Custom fields: {"field": "custom_field", "key": "segment", "op": "=", "value": "retail"} ----------
  if field = 'custom_field' then
    if jsonb_typeof(filter -> 'key') is distinct from 'string' or length(filter ->> 'key') not between 1 and 100 then
      raise exception 'custom_field needs the key of the custom field.' using errcode = 'CRVAL', column = here || '.key';
    end if;
    if not (op = any (comparison)) then
      raise exception 'custom_field takes =, !=, >, <, >= or <=.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op in ('=', '!=') then
      if jsonb_typeof(val) not in ('string', 'number', 'boolean') then
        raise exception 'custom_field compares with a text, number or boolean.' using errcode = 'CRVAL', column = here || '.value';
      end if;
      return format('((c.custom_fields ->> %s) %s %s)', k, case op when '!=' then 'is distinct from' else '=' end, v);
    end if;
    if jsonb_typeof(val) <> 'number' then
      raise exception '% compares with a number.', op using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format($f$((case when jsonb_typeof(c.custom_fields -> %1$s) = 'number' then (c.custom_fields ->> %1$s)::numeric end) %2$s %3$s::numeric)$f$, k, op, v);
  end if;
  raise exception 'Unknown field.' using errcode = 'CRVAL', column = here || '.field';
end
$$;
comment on function crm.segment_sql(jsonb, text[]) is E'@behavior -*\nCompiles a segment filter document to a boolean SQL expression over c (crm.customers) that reads its values from $1 (the document). docs/campaigns.md.';
grant execute on function crm.segment_sql(jsonb, text[]) to crm_user;

create or replace function crm_private.tg_segment_filter() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm.segment_sql(new.filter);
  return new;
end
$$;
drop trigger if exists _110_filter on crm.segments;
create trigger _110_filter before insert or update of filter on crm.segments for each row execute function crm_private.tg_segment_filter();

-- The customers a filter selects, under the caller's row-level security (a Sales Representative sees
-- only their own). A connection: totalCount is the count, the first page the preview.
drop function if exists crm.segment_preview(jsonb);
create or replace function crm.segment_preview(filter jsonb default null) returns setof crm.customers
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm.has_permission('campaigns:read') then
    raise exception 'Previewing a segment needs campaigns:read.' using errcode = 'CRFBD';
  end if;
  return query execute 'select c.* from crm.customers c where c.deleted_at is null and '
    || case when filter is null then 'true' else crm.segment_sql(filter) end || ' order by c.created_at, c.id'
    using filter;
end
$$;
comment on function crm.segment_preview(jsonb) is E'The customers a segment filter selects, among those you can see: totalCount and a first page (no filter: every customer you can see). An invalid filter is refused with VALIDATION naming the path (filter.all.0.op …).';
grant execute on function crm.segment_preview(jsonb) to crm_user;

create or replace function crm.segments_customer_count(s crm.segments) returns bigint
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  n bigint;
begin
  execute 'select count(*) from crm.customers c where c.deleted_at is null and ' || crm.segment_sql(s.filter) into n using s.filter;
  return n;
end
$$;
comment on function crm.segments_customer_count(crm.segments) is 'How many customers you can see are in the segment now.';
grant execute on function crm.segments_customer_count(crm.segments) to crm_user;

-- Templates: placeholders ---------------------------------------------------------------------------
create or replace function crm_private.tg_template_placeholders() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  unknown text;
  col text;
begin
  foreach col in array array['subject', 'body'] loop
    select string_agg(distinct '[' || m[1] || ']', ', ') into unknown
      from regexp_matches(coalesce(case col when 'subject' then new.subject else new.body end, ''), '\[([A-Za-z][A-Za-z0-9_]*)\]', 'g') m
     where m[1] not in ('FirstName', 'LastName', 'Level', 'Points', 'CompanyName', 'UnsubscribeUrl');
    if unknown is not null then
      raise exception 'Unknown placeholder %. Placeholders: [FirstName], [LastName], [Level], [Points], [CompanyName], [UnsubscribeUrl].', unknown
        using errcode = 'CRVAL', column = col;
    end if;
  end loop;
  return new;
end
$$;
drop trigger if exists _110_placeholders on crm.message_templates;
create trigger _110_placeholders before insert or update on crm.message_templates for each row execute function crm_private.tg_template_placeholders();

-- HTML-escapes a value for an e-mail body (html = true), or leaves it (SMS).
create or replace function crm_private.escape_value(value text, html boolean) returns text
  language sql immutable
as $$
  select case when html
    then replace(replace(replace(replace(replace(coalesce(value, ''), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
    else coalesce(value, '') end
$$;

-- Renders a template text for one recipient. Inlined into the fan-out (a plain SQL function).
create or replace function crm_private.render_text(tpl text, html boolean, first_name text, last_name text, level text, points int,
                                                   company text, unsubscribe_url text) returns text
  language sql immutable
as $$
  select replace(replace(replace(replace(replace(replace(tpl,
    '[FirstName]', crm_private.escape_value(first_name, html)),
    '[LastName]', crm_private.escape_value(last_name, html)),
    '[Level]', crm_private.escape_value(level, html)),
    '[Points]', coalesce(points, 0)::text),
    '[CompanyName]', crm_private.escape_value(company, html)),
    '[UnsubscribeUrl]', crm_private.escape_value(unsubscribe_url, html))
$$;

-- The body of a marketing message: rendered, and for e-mail with an unsubscribe link at the end when
-- the template has none.
create or replace function crm_private.render_body(tpl text, chan text, first_name text, last_name text, level text, points int,
                                                   company text, unsubscribe_url text) returns text
  language sql immutable
as $$
  select crm_private.render_text(
    case when chan = 'email' and position('[UnsubscribeUrl]' in tpl) = 0
         then tpl || E'\n<p style="font-size:12px">Unsubscribe: <a href="[UnsubscribeUrl]">[UnsubscribeUrl]</a></p>'
         else tpl end,
    chan = 'email', first_name, last_name, level, points, company, unsubscribe_url)
$$;

--! split: 570-campaigns.sql
-- Messaging, part 3: campaigns (seed 003 fields, seed 002 workflow), their recipients
-- (campaign_contacts with seed 003's states), and tasks linked to a campaign. docs/campaigns.md.

create table if not exists crm.campaigns (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint campaigns_name_length check (length(btrim(name)) between 1 and 200),
  description text constraint campaigns_description_length check (length(description) <= 10000),
  type text not null default 'email' constraint campaigns_type_check check (type in ('email', 'sms', 'social', 'webinar', 'event', 'content', 'other')),
  status text not null default 'planning' constraint campaigns_status_check check (status in ('planning', 'active', 'paused', 'completed', 'cancelled')),
  start_date date,
  end_date date,
  budget numeric(16, 2) constraint campaigns_budget_range check (budget >= 0),
  actual_cost numeric(16, 2) not null default 0 constraint campaigns_actual_cost_range check (actual_cost >= 0),
  owner_id uuid default crm.current_user_id(),
  segment_id uuid,
  template_id uuid,
  goals text constraint campaigns_goals_length check (length(goals) <= 5000),
  tags text[] not null default '{}' constraint campaigns_tags_length check (cardinality(tags) <= 50),
  custom_fields jsonb not null default '{}'::jsonb constraint campaigns_custom_fields_object check (jsonb_typeof(custom_fields) = 'object'),
  conversion_window_days int constraint campaigns_conversion_window_days_range check (conversion_window_days between 1 and 365),
  executed_at timestamptz,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint campaigns_organization_id_id_key unique (organization_id, id),
  constraint campaigns_end_date_range check (end_date is null or start_date is null or end_date >= start_date),
  constraint campaigns_owner_fkey foreign key (organization_id, owner_id)
    references crm.organization_memberships (organization_id, user_id) on delete set null (owner_id),
  constraint campaigns_segment_fkey foreign key (organization_id, segment_id)
    references crm.segments (organization_id, id) on delete restrict,
  constraint campaigns_template_fkey foreign key (organization_id, template_id)
    references crm.message_templates (organization_id, id) on delete restrict
);
create index if not exists campaigns_organization_id_status_idx on crm.campaigns (organization_id, status);
create index if not exists campaigns_organization_id_owner_id_idx on crm.campaigns (organization_id, owner_id);
create index if not exists campaigns_organization_id_segment_id_idx on crm.campaigns (organization_id, segment_id);
create index if not exists campaigns_organization_id_template_id_idx on crm.campaigns (organization_id, template_id);
create index if not exists campaigns_organization_id_created_at_idx on crm.campaigns (organization_id, created_at);
create index if not exists campaigns_created_by_idx on crm.campaigns (created_by);
comment on table crm.campaigns is E'@behavior -delete\nA marketing campaign: planning → active ⇄ paused → completed, or cancelled. An e-mail or SMS campaign has a template and recipients (a segment and/or people added by hand); executeCampaign queues its messages. Its metrics are computed from the messages and orders.';
comment on column crm.campaigns.organization_id is E'@behavior -insert -update';
comment on column crm.campaigns.created_by is E'@behavior -insert -update';
comment on column crm.campaigns.executed_at is E'@behavior -insert -update\nWhen executeCampaign last queued messages.';
comment on column crm.campaigns.deleted_at is E'@behavior -insert -update\nSet by deleteCampaign (soft delete).';
comment on column crm.campaigns.status is 'planning → active ⇄ paused → completed; planning, active or paused → cancelled. Other moves are refused with INVALID_STATE. executeCampaign activates a planned or paused campaign.';
comment on column crm.campaigns.actual_cost is 'What the campaign cost so far (typed in); ROI = (attributed revenue − actual cost) / actual cost.';
comment on column crm.campaigns.conversion_window_days is 'Days after a send during which a recipient''s paid order counts as a conversion; empty: the organization''s setting.';

-- A high-volume table (a row per recipient, written by the fan-out): organization_id has no foreign
-- key of its own; the composite keys to the campaign and the customer tie the row to its organization
-- (and delete it with them).
create table if not exists crm.campaign_contacts (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id(),
  campaign_id uuid not null,
  customer_id uuid not null,
  contact_id uuid,
  message_id uuid,
  source text not null default 'manual' constraint campaign_contacts_source_check check (source in ('manual', 'segment')),
  status text not null default 'pending' constraint campaign_contacts_status_check
    check (status in ('pending', 'removed', 'skipped', 'queued', 'sent', 'delivered', 'opened', 'clicked', 'bounced', 'unsubscribed', 'failed')),
  skip_reason text constraint campaign_contacts_skip_reason_length check (length(skip_reason) <= 200),
  added_at timestamptz not null default now(),
  queued_at timestamptz,
  sent_at timestamptz,
  delivered_at timestamptz,
  opened_at timestamptz,
  clicked_at timestamptz,
  bounced_at timestamptz,
  unsubscribed_at timestamptz,
  failed_at timestamptz,
  constraint campaign_contacts_organization_id_id_key unique (organization_id, id),
  constraint campaign_contacts_customer_unique unique (organization_id, campaign_id, customer_id),
  constraint campaign_contacts_campaign_fkey foreign key (organization_id, campaign_id) references crm.campaigns (organization_id, id) on delete cascade,
  constraint campaign_contacts_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint campaign_contacts_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete set null (contact_id)
);
create index if not exists campaign_contacts_organization_id_customer_id_idx on crm.campaign_contacts (organization_id, customer_id);
drop index if exists crm.campaign_contacts_organization_id_contact_id_idx;
create index if not exists campaign_contacts_organization_id_contact_id_partial_idx on crm.campaign_contacts (organization_id, contact_id) where contact_id is not null;
drop index if exists crm.campaign_contacts_organization_id_message_id_idx;
alter table crm.campaign_contacts drop constraint if exists campaign_contacts_organization_id_fkey;
comment on column crm.campaign_contacts.message_id is 'The message queued for this recipient (crm.messages, unique per campaign and customer).';
comment on table crm.campaign_contacts is E'@behavior -insert -update -delete\nA campaign''s recipients and how far each got: pending (added) or removed, skipped (no address, opted out or suppressed at execution), queued, sent, delivered, opened, clicked, bounced, unsubscribed, failed, each with its time. Added and removed with addCampaignRecipients, addCampaignSegment, removeCampaignRecipients; moved by the message queue and the engagement endpoints.';

-- Tasks can belong to a campaign.
alter table crm.tasks add column if not exists campaign_id uuid;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'tasks_campaign_fkey') then
    alter table crm.tasks add constraint tasks_campaign_fkey foreign key (organization_id, campaign_id)
      references crm.campaigns (organization_id, id) on delete set null (campaign_id);
  end if;
end
$$;
create index if not exists tasks_organization_id_campaign_id_idx on crm.tasks (organization_id, campaign_id);
comment on constraint tasks_campaign_fkey on crm.tasks is E'@fieldName campaign\n@foreignFieldName tasks';
comment on column crm.tasks.campaign_id is 'The campaign this task belongs to.';
grant insert (campaign_id), update (campaign_id) on crm.tasks to crm_user;

-- Row-level security -----------------------------------------------------------------------------------
alter table crm.campaigns enable row level security;
alter table crm.campaign_contacts enable row level security;
drop policy if exists campaigns_select on crm.campaigns;
create policy campaigns_select on crm.campaigns for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null and (select crm.has_permission('campaigns:read')));
drop policy if exists campaigns_insert on crm.campaigns;
create policy campaigns_insert on crm.campaigns for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('campaigns:create')));
drop policy if exists campaigns_update on crm.campaigns;
create policy campaigns_update on crm.campaigns for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null and (select crm.has_permission('campaigns:update')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('campaigns:update')));
drop policy if exists campaign_contacts_select on crm.campaign_contacts;
create policy campaign_contacts_select on crm.campaign_contacts for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('campaigns:read')));

grant select on crm.campaigns, crm.campaign_contacts to crm_user;
grant insert (name, description, type, start_date, end_date, budget, actual_cost, owner_id, segment_id, template_id, goals, tags, custom_fields, conversion_window_days),
      update (name, description, type, status, start_date, end_date, budget, actual_cost, owner_id, segment_id, template_id, goals, tags, custom_fields, conversion_window_days)
  on crm.campaigns to crm_user;

-- The workflow -------------------------------------------------------------------------------------------
create or replace function crm_private.tg_campaign_workflow() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' then
    if new.status <> 'planning' then
      raise exception 'A campaign starts in planning.' using errcode = 'CRSTA', column = 'status';
    end if;
  elsif new.status is distinct from old.status
        and not ((old.status, new.status) in (('planning', 'active'), ('planning', 'cancelled'), ('active', 'paused'), ('paused', 'active'),
                                              ('active', 'completed'), ('paused', 'completed'), ('active', 'cancelled'), ('paused', 'cancelled'))) then
    raise exception 'A campaign cannot go from % to %.', old.status, new.status
      using errcode = 'CRSTA', column = 'status', hint = 'planning → active ⇄ paused → completed; planning, active or paused → cancelled.';
  end if;
  if tg_op = 'UPDATE' and old.status in ('completed', 'cancelled') and new.status = old.status
     and (new.segment_id, new.template_id) is distinct from (old.segment_id, old.template_id) then
    raise exception 'A % campaign cannot change its segment or template.', old.status using errcode = 'CRSTA', column = 'status';
  end if;
  return new;
end
$$;
drop trigger if exists _120_workflow on crm.campaigns;
create trigger _120_workflow before insert or update on crm.campaigns for each row execute function crm_private.tg_campaign_workflow();

-- The template must speak the campaign's channel (e-mail and SMS campaigns).
create or replace function crm_private.tg_campaign_template() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if new.template_id is not null and new.type in ('email', 'sms') and exists (
       select 1 from crm.message_templates t where t.organization_id = new.organization_id and t.id = new.template_id and t.channel <> new.type) then
    raise exception 'The template is for another channel than this % campaign.', new.type using errcode = 'CRVAL', column = 'template_id';
  end if;
  return new;
end
$$;
drop trigger if exists _200_guard on crm.campaigns;
create trigger _200_guard before insert or update of template_id, type on crm.campaigns for each row execute function crm_private.tg_campaign_template();

drop trigger if exists _100_updated_at on crm.campaigns;
create trigger _100_updated_at before update on crm.campaigns for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.campaigns;
create trigger _800_audit after insert or update or delete on crm.campaigns for each row execute function crm_private.tg_audit();

-- Soft delete ------------------------------------------------------------------------------------------
create or replace function crm.delete_campaign(id uuid) returns crm.campaigns
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.campaigns;
begin
  perform crm_private.require_permission('campaigns:delete');
  update crm.campaigns c set deleted_at = now()
   where c.id = delete_campaign.id and c.organization_id = crm.current_org_id() and c.deleted_at is null
  returning * into r;
  if r.id is null then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'id';
  end if;
  -- Nothing more goes out for a deleted campaign.
  update crm.messages m set status = 'cancelled', error_message = 'The campaign was deleted.', updated_at = now()
   where m.organization_id = r.organization_id and m.campaign_id = r.id and m.status = 'pending';
  return r;
end
$$;
comment on function crm.delete_campaign(uuid) is 'Delete (hide) a campaign; its queued messages not yet sent are cancelled. Needs campaigns:delete.';
grant execute on function crm.delete_campaign(uuid) to crm_user;

--! split: 580-messages.sql
-- Messaging, part 4: the message queue (seed 000's MessageQueue, made safe), the local providers'
-- outboxes, and the functions the messages:send worker task claims and records with.
-- docs/campaigns.md#delivery-guarantees.

-- A high-volume table (the fan-out writes a row per recipient): organization_id has no foreign key of
-- its own, the composite keys to the customer and the campaign tie a message to its organization (and
-- delete it with them); indexes are the ones the queue, the keys and the policies need.
create table if not exists crm.messages (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id(),
  customer_id uuid,
  contact_id uuid,
  channel text not null constraint messages_channel_check check (channel in ('email', 'sms')),
  kind text not null default 'marketing' constraint messages_kind_check check (kind in ('marketing', 'transactional')),
  recipient text not null constraint messages_recipient_length check (length(recipient) between 3 and 320),
  subject text constraint messages_subject_length check (length(subject) <= 1000),
  body text not null,
  status text not null default 'pending'
    constraint messages_status_check check (status in ('pending', 'sending', 'sent', 'delivered', 'failed', 'bounced', 'cancelled')),
  scheduled_for timestamptz not null default now(),
  sent_at timestamptz,
  delivered_at timestamptz,
  opened_at timestamptz,
  clicked_at timestamptz,
  bounced_at timestamptz,
  attempts int not null default 0,
  next_attempt_at timestamptz,
  lease_expires_at timestamptz,
  claimed_at timestamptz,
  error_message text constraint messages_error_message_length check (length(error_message) <= 2000),
  provider text,
  provider_message_id text,
  campaign_id uuid,
  template_id uuid,
  automation text constraint messages_automation_check check (automation in ('birthday', 'inactivity', 'welcome', 'notice')),
  dedupe_key text constraint messages_dedupe_key_length check (length(dedupe_key) <= 300),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint messages_organization_id_id_key unique (organization_id, id),
  constraint messages_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint messages_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete set null (contact_id),
  constraint messages_campaign_fkey foreign key (organization_id, campaign_id) references crm.campaigns (organization_id, id) on delete cascade,
  constraint messages_template_fkey foreign key (organization_id, template_id) references crm.message_templates (organization_id, id) on delete set null (template_id)
);
-- At most one message per customer per campaign: the fan-out's guarantee under concurrent executions.
create unique index if not exists messages_campaign_customer_unique on crm.messages (organization_id, campaign_id, customer_id)
  where campaign_id is not null;
-- Automations: once per key (birthday: customer and year; inactivity: customer and episode; welcome: customer).
create unique index if not exists messages_dedupe_key_unique on crm.messages (organization_id, dedupe_key) where dedupe_key is not null;
create index if not exists messages_organization_id_customer_id_idx on crm.messages (organization_id, customer_id);
-- Partial: most messages have neither (campaign messages name their template through the campaign).
drop index if exists crm.messages_organization_id_contact_id_idx;
drop index if exists crm.messages_organization_id_template_id_idx;
create index if not exists messages_organization_id_contact_id_partial_idx on crm.messages (organization_id, contact_id) where contact_id is not null;
create index if not exists messages_organization_id_template_id_partial_idx on crm.messages (organization_id, template_id) where template_id is not null;
alter table crm.messages drop constraint if exists messages_organization_id_fkey;
drop index if exists crm.messages_organization_id_status_idx;
drop index if exists crm.messages_organization_id_claimed_at_idx;
-- The worker's queue: due pending messages, and leases to reconcile.
create index if not exists messages_due_idx on crm.messages (scheduled_for) where status = 'pending';
create index if not exists messages_sending_idx on crm.messages (lease_expires_at) where status = 'sending';
create index if not exists messages_provider_message_id_idx on crm.messages (provider_message_id) where provider_message_id is not null;
comment on table crm.messages is E'@behavior -insert -update -delete\nThe message queue: every e-mail and SMS a campaign, an automation or another module queued, rendered, with its delivery state: pending → sending → sent → delivered, or failed, bounced, cancelled. Sent by the messages:send worker task.';
comment on column crm.messages.status is 'pending (waiting for its time, the rate limit or quiet hours) → sending (handed to the provider under a lease) → sent → delivered; failed (permanent error or retries used up), bounced, cancelled (opted out or suppressed before sending, campaign deleted).';
comment on column crm.messages.attempts is 'Provider calls made so far (transient errors are retried with exponential backoff).';
comment on column crm.messages.provider_message_id is 'The provider''s id of the accepted message (SES MessageId, SMS provider id, local-…).';
comment on column crm.messages.lease_expires_at is E'@behavior -*';
comment on column crm.messages.claimed_at is E'@behavior -*';
comment on column crm.messages.dedupe_key is E'@behavior -*';
comment on constraint messages_campaign_fkey on crm.messages is E'@fieldName campaign\n@foreignFieldName messages';

alter table crm.messages enable row level security;
drop policy if exists messages_select on crm.messages;
create policy messages_select on crm.messages for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('campaigns:read')));
grant select on crm.messages to crm_user;

drop trigger if exists _100_updated_at on crm.messages;
create trigger _100_updated_at before update on crm.messages for each row execute function crm_private.tg_set_updated_at();

-- campaign_contacts.message_id has no foreign key: messages go only with their campaign or customer,
-- which take the recipient row with them.
alter table crm.campaign_contacts drop constraint if exists campaign_contacts_message_fkey;

-- Messages claimed per organization and minute: the send rate's counter.
create table if not exists crm_private.send_counters (
  organization_id uuid not null,
  minute timestamptz not null,
  claimed int not null default 0,
  primary key (organization_id, minute)
);
alter table crm_private.send_counters enable row level security;
drop policy if exists no_access on crm_private.send_counters;
create policy no_access on crm_private.send_counters using (false);

-- The local providers' outboxes (development and tests): what "left the machine". The idempotency
-- key (the message id) makes a repeated hand-over a no-op, and lets the worker reconcile a message
-- whose send it did not record.
alter table crm_private.email_outbox add column if not exists idempotency_key text;
alter table crm_private.email_outbox add column if not exists html text;
alter table crm_private.email_outbox add column if not exists headers jsonb;
create unique index if not exists email_outbox_idempotency_key_unique on crm_private.email_outbox (idempotency_key) where idempotency_key is not null;

create table if not exists crm_private.sms_outbox (
  id bigint generated always as identity primary key,
  idempotency_key text,
  to_number text not null,
  body text not null,
  created_at timestamptz not null default now()
);
create unique index if not exists sms_outbox_idempotency_key_unique on crm_private.sms_outbox (idempotency_key) where idempotency_key is not null;
alter table crm_private.sms_outbox enable row level security;
drop policy if exists no_access on crm_private.sms_outbox;
create policy no_access on crm_private.sms_outbox using (false);

-- Claiming ----------------------------------------------------------------------------------------------
-- Run by the worker (as the owner) in its own short transaction:
-- 1. cancels due marketing messages whose recipient opted out or was suppressed since queuing;
-- 2. locks up to `batch` due pending messages (FOR UPDATE SKIP LOCKED: workers never take the same
--    row), of active campaigns only, outside the organization's quiet hours and within its send rate
--    for the current minute;
-- 3. marks them sending with a lease, counts the attempt, and returns them with their link tokens.
create or replace function crm_private.claim_messages(batch int, lease_seconds int)
  returns table (id uuid, organization_id uuid, channel text, kind text, recipient text, subject text, body text, attempts int,
                 unsubscribe_token text, open_token text, click_token text, public_url text)
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
  delete from crm_private.send_counters c where c.minute < date_trunc('minute', now()) - interval '1 hour';
  return query
  with held as (
    -- Organizations in their quiet hours now, or past this minute's send rate: their messages wait.
    select s.organization_id
      from crm.messaging_settings s
      left join crm_private.send_counters k on k.organization_id = s.organization_id and k.minute = date_trunc('minute', now())
     where coalesce(k.claimed, 0) >= s.send_rate_per_minute
        or (s.quiet_hours_start is not null
            and (select case when s.quiet_hours_start <= s.quiet_hours_end
                             then h >= s.quiet_hours_start and h < s.quiet_hours_end
                             else h >= s.quiet_hours_start or h < s.quiet_hours_end end
                   from extract(hour from now() at time zone crm_private.org_timezone(s.organization_id)) h))
  ), candidates as (
    select m.id, m.organization_id, m.scheduled_for,
           crm.may_receive(m.organization_id, m.customer_id, m.channel, m.recipient) as ok
      from crm.messages m
     where m.status = 'pending' and m.scheduled_for <= now() and (m.next_attempt_at is null or m.next_attempt_at <= now())
       and m.organization_id not in (select h.organization_id from held h)
       and (m.campaign_id is null or exists (select 1 from crm.campaigns c where c.organization_id = m.organization_id and c.id = m.campaign_id
                                                and c.status = 'active' and c.deleted_at is null))
     order by m.scheduled_for
     limit batch
       for update of m skip locked
  ), cancelled as (
    -- Opted out or suppressed since it was queued: never sent.
    update crm.messages m set status = 'cancelled', error_message = 'The recipient opted out or is suppressed.'
      from candidates c where m.id = c.id and not c.ok
    returning m.id, m.organization_id, m.campaign_id, m.customer_id
  ), cancelled_contacts as (
    update crm.campaign_contacts cc set status = 'skipped', skip_reason = 'Opted out or suppressed.'
      from cancelled x
     where x.campaign_id is not null and cc.organization_id = x.organization_id and cc.campaign_id = x.campaign_id
       and cc.customer_id = x.customer_id and cc.status = 'queued'
    returning 1
  ), orgs as (
    select o.organization_id,
           coalesce(s.send_rate_per_minute, 6000)
             - coalesce((select k.claimed from crm_private.send_counters k
                          where k.organization_id = o.organization_id and k.minute = date_trunc('minute', now())), 0) as allowance,
           case when s.quiet_hours_start is null then false
                else (select case when s.quiet_hours_start <= s.quiet_hours_end
                                  then h >= s.quiet_hours_start and h < s.quiet_hours_end
                                  else h >= s.quiet_hours_start or h < s.quiet_hours_end end
                        from extract(hour from now() at time zone crm_private.org_timezone(o.organization_id)) h) end as quiet
      from (select distinct c.organization_id from candidates c where c.ok) o
      left join crm.messaging_settings s on s.organization_id = o.organization_id
  ), picked as (
    select c.id, c.organization_id
      from (select c.*, row_number() over (partition by c.organization_id order by c.scheduled_for) as n from candidates c where c.ok) c
      join orgs o on o.organization_id = c.organization_id
     where not o.quiet and c.n <= o.allowance
     order by c.scheduled_for
     limit batch
  ), counted as (
    insert into crm_private.send_counters (organization_id, minute, claimed)
    select p.organization_id, date_trunc('minute', now()), count(*) from picked p group by p.organization_id
    on conflict (organization_id, minute) do update set claimed = crm_private.send_counters.claimed + excluded.claimed
    returning 1
  ), keys as (
    select k.secret, k.public_url from crm_private.messaging_keys k
  ), claimed as (
    update crm.messages m
       set status = 'sending', attempts = m.attempts + 1, claimed_at = now(),
           lease_expires_at = now() + make_interval(secs => lease_seconds), next_attempt_at = null
      from picked p, keys k
     where m.id = p.id
    returning m.id, m.organization_id, m.channel, m.kind, m.recipient, m.subject, m.body, m.attempts,
              crm_private.sign_message('unsubscribe', m.id, k.secret) as unsubscribe_token, crm_private.sign_message('open', m.id, k.secret) as open_token,
              crm_private.sign_message('click', m.id, k.secret) as click_token, k.public_url
  )
  select * from claimed;
end
$$;

-- Messages whose lease ran out while sending (the worker died between claiming and recording): the
-- worker asks the provider about each (reconciliation by idempotency key) before it sends anything.
create or replace function crm_private.expired_leases(batch int)
  returns table (id uuid, channel text, provider text, attempts int)
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select m.id, m.channel, m.provider, m.attempts from crm.messages m
   where m.status = 'sending' and m.lease_expires_at < now()
   order by m.lease_expires_at
   limit batch
     for update skip locked
$$;

-- Records the outcomes of a batch in one statement per outcome, and moves the campaign recipients.
-- outcomes: [{"id", "outcome": "sent" | "retry" | "failed" | "released", "provider", "providerMessageId", "error", "retryInMs"}]
create or replace function crm_private.record_message_outcomes(outcomes jsonb, max_attempts int) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  with o as (
    select x.id, x.outcome, x.provider, x."providerMessageId" as provider_message_id, left(x.error, 2000) as error, x."retryInMs" as retry_in_ms
      from jsonb_to_recordset(outcomes) as x(id uuid, outcome text, provider text, "providerMessageId" text, error text, "retryInMs" bigint)
  ), updated as (
    update crm.messages m
       set status = case
                      when o.outcome = 'sent' then 'sent'
                      when o.outcome = 'released' then 'pending'
                      when o.outcome = 'retry' and m.attempts < max_attempts then 'pending'
                      else 'failed' end,
           sent_at = case when o.outcome = 'sent' then coalesce(m.sent_at, now()) else m.sent_at end,
           provider = coalesce(o.provider, m.provider),
           provider_message_id = coalesce(o.provider_message_id, m.provider_message_id),
           error_message = case when o.outcome = 'sent' then null when o.outcome = 'released' then m.error_message else o.error end,
           next_attempt_at = case when o.outcome = 'retry' and m.attempts < max_attempts
                                  then now() + make_interval(secs => coalesce(o.retry_in_ms, 0) / 1000.0) end,
           attempts = case when o.outcome = 'released' then greatest(m.attempts - 1, 0) else m.attempts end,
           lease_expires_at = null
      from o
     where m.id = o.id and m.status = 'sending'
    returning m.id, m.organization_id, m.campaign_id, m.customer_id, m.status, m.sent_at
  ), contacts as (
    update crm.campaign_contacts cc
       set status = case when u.status = 'sent' then 'sent' else 'failed' end,
           sent_at = case when u.status = 'sent' then u.sent_at else cc.sent_at end,
           failed_at = case when u.status = 'failed' then now() else cc.failed_at end
      from updated u
     where u.campaign_id is not null and u.status in ('sent', 'failed')
       and cc.organization_id = u.organization_id and cc.campaign_id = u.campaign_id and cc.customer_id = u.customer_id and cc.status = 'queued'
    returning 1
  )
  select count(*) into n from updated;
  return n;
end
$$;

--! split: 590-campaign-execution.sql
-- Messaging, part 5: recipients, executeCampaign (the fan-out), metrics, engagement (unsubscribe,
-- opens, clicks, provider notifications), lifecycle automations and enqueue_message for other
-- modules. docs/campaigns.md.

-- Wakes the sender: one messages:send job now (a job key, so a burst of executions queues one), or a
-- job at a later time for a scheduled campaign. The worker's crontab also runs messages:send every minute.
create or replace function crm_private.wake_sender(at timestamptz default null) returns void
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  if at is null or at <= now() then
    perform crm_private.add_job('messages:send', '{}'::jsonb, job_key := 'messages:send', max_attempts := 5);
  else
    perform crm_private.add_job('messages:send', '{}'::jsonb, run_at := at, max_attempts := 5);
  end if;
end
$$;

-- Recipients ------------------------------------------------------------------------------------------
create or replace function crm_private.campaign_for_change(campaign uuid) returns crm.campaigns
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns;
begin
  perform crm_private.require_permission('campaigns:update');
  select * into c from crm.campaigns x where x.id = campaign and x.organization_id = crm.current_org_id() and x.deleted_at is null;
  if c.id is null then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'campaign_id';
  end if;
  if c.status in ('completed', 'cancelled') then
    raise exception 'The campaign is %: its recipients can no longer change.', c.status using errcode = 'CRSTA', column = 'campaign_id';
  end if;
  return c;
end
$$;

create or replace function crm.add_campaign_recipients(campaign_id uuid, customer_ids uuid[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  n int;
begin
  if cardinality(customer_ids) > 10000 then
    raise exception 'At most 10,000 customers at a time; use a segment for more.' using errcode = 'CRVAL', column = 'customer_ids';
  end if;
  if exists (select 1 from unnest(customer_ids) i where not exists (
       select 1 from crm.customers x where x.organization_id = c.organization_id and x.id = i and x.deleted_at is null
          and (crm.has_permission('customers:read_all') or x.owner_id = any (crm.visible_owner_ids('customers'))))) then
    raise exception 'A customer was not found.' using errcode = 'CRNFD', column = 'customer_ids';
  end if;
  insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
  select c.organization_id, c.id, i, 'manual', 'pending' from (select distinct unnest(customer_ids) as i) u
  on conflict on constraint campaign_contacts_customer_unique do update set status = 'pending', added_at = now()
   where crm.campaign_contacts.status = 'removed';
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.add_campaign_recipients(uuid, uuid[]) is 'Adds customers to a campaign''s recipients by hand (pending until executeCampaign). Needs campaigns:update.';
grant execute on function crm.add_campaign_recipients(uuid, uuid[]) to crm_user;

create or replace function crm.add_campaign_segment(campaign_id uuid, segment_id uuid) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  f jsonb;
  n int;
begin
  select s.filter into f from crm.segments s where s.organization_id = c.organization_id and s.id = add_campaign_segment.segment_id;
  if f is null then
    raise exception 'No such segment.' using errcode = 'CRNFD', column = 'segment_id';
  end if;
  execute format($q$
    insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
    select c.organization_id, $2, c.id, 'segment', 'pending' from crm.customers c
     where c.organization_id = $3 and c.deleted_at is null and %s
    on conflict (organization_id, campaign_id, customer_id) do nothing$q$, crm.segment_sql(f))
    using f, c.id, c.organization_id;
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.add_campaign_segment(uuid, uuid) is 'Adds the customers a segment selects now to a campaign''s recipients (pending). Needs campaigns:update.';
grant execute on function crm.add_campaign_segment(uuid, uuid) to crm_user;

create or replace function crm.remove_campaign_recipients(campaign_id uuid, customer_ids uuid[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  n int;
begin
  -- A queued message not yet handed to a provider is cancelled with it.
  update crm.messages m set status = 'cancelled', error_message = 'Removed from the campaign.'
   where m.organization_id = c.organization_id and m.campaign_id = c.id and m.customer_id = any (customer_ids) and m.status = 'pending';
  insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
  select c.organization_id, c.id, i, 'manual', 'removed' from (select distinct unnest(customer_ids) as i) u
   where exists (select 1 from crm.customers x where x.organization_id = c.organization_id and x.id = u.i)
  on conflict on constraint campaign_contacts_customer_unique do update set status = 'removed'
   where crm.campaign_contacts.status in ('pending', 'skipped', 'queued')
     and not exists (select 1 from crm.messages m where m.organization_id = crm.campaign_contacts.organization_id
                        and m.id = crm.campaign_contacts.message_id and m.status <> 'cancelled');
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.remove_campaign_recipients(uuid, uuid[]) is 'Removes customers from a campaign (also a segment''s members: they stay out when it executes); a message already handed to a provider cannot be taken back. Needs campaigns:update.';
grant execute on function crm.remove_campaign_recipients(uuid, uuid[]) to crm_user;

-- The fan-out --------------------------------------------------------------------------------------------
-- executeCampaign: one INSERT … SELECT from the recipients (the segment's members now, plus those added
-- by hand, minus those removed) into crm.messages, rendered per recipient, skipping anyone without an
-- address, opted out or suppressed; each customer at most once per campaign (the unique index
-- messages_campaign_customer_unique; concurrent executions also wait for each other on the campaign row),
-- so executing again after a pause queues only those not queued yet.
create or replace function crm.execute_campaign(id uuid, scheduled_for timestamptz default null) returns crm.campaigns
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
  set work_mem = '128MB'
as $$
declare
  org uuid := crm.current_org_id();
  c crm.campaigns;
  t crm.message_templates;
  f jsonb;
  cond text := 'false';
  queued int;
begin
  perform crm_private.require_permission('campaigns:execute');
  select * into c from crm.campaigns x where x.id = execute_campaign.id and x.organization_id = org and x.deleted_at is null for update;
  if c.id is null then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'id';
  end if;
  if c.status not in ('planning', 'active', 'paused') then
    raise exception 'A % campaign cannot be executed.', c.status using errcode = 'CRSTA', column = 'status';
  end if;
  if c.type not in ('email', 'sms') then
    raise exception 'Only e-mail and SMS campaigns send messages.' using errcode = 'CRVAL', column = 'type';
  end if;
  select * into t from crm.message_templates x where x.organization_id = org and x.id = c.template_id;
  if t.id is null then
    raise exception 'The campaign needs a template.' using errcode = 'CRVAL', column = 'template_id';
  end if;
  if scheduled_for is not null and scheduled_for < now() - interval '1 minute' then
    raise exception 'scheduledFor is in the past.' using errcode = 'CRVAL', column = 'scheduled_for';
  end if;
  if c.segment_id is not null then
    select s.filter into f from crm.segments s where s.organization_id = org and s.id = c.segment_id;
    cond := crm.segment_sql(f);
  end if;

  execute format($q$
    with keys as (
      select k.secret, k.public_url from crm_private.messaging_keys k
    ), org as (
      select o.name from crm.organizations o where o.id = $2
    ), recipients as (
      select c.id as customer_id, c.name, c.level_id, coalesce(cc.source, 'segment') as source,
             pc.id as contact_id, pc.first_name, pc.last_name,
             case when $6 = 'email' then coalesce(c.email::text, pc.email::text) else coalesce(c.phone, pc.mobile, pc.phone) end as address,
             gen_random_uuid() as message_id
        from crm.customers c
        left join crm.campaign_contacts cc on cc.organization_id = c.organization_id and cc.campaign_id = $3 and cc.customer_id = c.id
        left join crm.contacts pc on pc.organization_id = c.organization_id and pc.customer_id = c.id and pc.is_primary and pc.deleted_at is null
        where c.organization_id = $2 and c.deleted_at is null
         and ((cc.id is not null and cc.status in ('pending', 'skipped')) or (cc.id is null and %s))
    ), prepared as (
      -- crm.may_receive in set form (hash joins rather than a probe per recipient): an address, no
      -- opt-out for the channel, not suppressed.
      select r.*, r.address is not null and k.customer_id is null and s.address is null as eligible
        from recipients r
        left join (select distinct k.customer_id from crm.consents k
                    where k.organization_id = $2 and k.channel = $6 and k.status = 'opted_out') k on k.customer_id = r.customer_id
        left join (select s.address from crm.suppressions s where s.organization_id = $2 and s.channel = $6) s
          on s.address operator(public.=) r.address::public.citext
    ), inserted as (
      insert into crm.messages (id, organization_id, customer_id, contact_id, channel, kind, recipient, subject, body, scheduled_for,
                                campaign_id, template_id)
      select p.message_id, $2, p.customer_id, p.contact_id, $6, 'marketing', p.address,
             crm_private.render_text($7, false, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name, null),
             crm_private.render_body($8, $6, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name,
                                     k.public_url || '/unsubscribe/' || crm_private.sign_message('unsubscribe', p.message_id, k.secret)),
             coalesce($4, now()), $3, null
        from prepared p
        cross join keys k
        cross join org o
        cross join lateral (select coalesce(p.first_name, split_part(p.name, ' ', 1)) as first_name,
                                   coalesce(nullif(p.last_name, ''), nullif(substr(p.name, length(split_part(p.name, ' ', 1)) + 2), ''), '') as last_name) v
        left join crm.customer_levels l on l.organization_id = $2 and l.id = p.level_id
        left join lateral (select lg.balance_after from crm.loyalty_ledger lg
                            where lg.organization_id = $2 and lg.customer_id = p.customer_id order by lg.id desc limit 1) b on true
       where p.eligible
      on conflict (organization_id, campaign_id, customer_id) where campaign_id is not null do nothing
      returning id, customer_id, contact_id
    ), contacts as (
      -- New rows are the segment's members (rows added by hand exist already and keep their source).
      insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, contact_id, message_id, source, status, skip_reason, queued_at)
      select $2, $3, i.customer_id, i.contact_id, i.id, 'segment', 'queued', null, now() from inserted i
      union all
      select $2, $3, p.customer_id, p.contact_id, null, 'segment', 'skipped',
             case when p.address is null then 'No address for the channel.' else 'Opted out or suppressed.' end, null
        from prepared p
       where not p.eligible
      on conflict (organization_id, campaign_id, customer_id) do update
         set contact_id = excluded.contact_id, message_id = excluded.message_id, status = excluded.status,
             skip_reason = excluded.skip_reason, queued_at = excluded.queued_at
       where crm.campaign_contacts.status in ('pending', 'skipped')
      returning 1
    )
    select count(*) from inserted$q$, cond)
    into queued
    using f, org, c.id, scheduled_for, t.id, t.channel, t.subject, t.body;

  update crm.campaigns x set status = 'active', executed_at = now()
   where x.id = c.id and x.organization_id = org
  returning * into c;
  if queued > 0 then
    perform crm_private.wake_sender(scheduled_for);
  end if;
  return c;
end
$$;
comment on function crm.execute_campaign(uuid, timestamptz) is 'Queues the campaign''s messages (one INSERT … SELECT): to its segment''s members and the recipients added by hand, once per customer, skipping anyone opted out, suppressed or without an address; rendered from the template. scheduledFor: send later (default now). Activates a planned or paused campaign; executing again queues only customers not queued yet. Needs campaigns:execute.';
grant execute on function crm.execute_campaign(uuid, timestamptz) to crm_user;

-- Metrics -----------------------------------------------------------------------------------------------
drop type if exists crm.campaign_performance cascade;
create type crm.campaign_performance as (
  campaign_id uuid,
  recipients int,
  skipped int,
  queued int,
  sent int,
  delivered int,
  opened int,
  clicked int,
  bounced int,
  failed int,
  unsubscribed int,
  conversions int,
  attributed_revenue numeric,
  actual_cost numeric,
  cost_per_conversion numeric,
  roi numeric,
  conversion_window_days int
);
comment on type crm.campaign_performance is 'A campaign''s metrics, computed from its messages, recipients and the recipients'' orders (docs/campaigns.md#metrics).';
comment on column crm.campaign_performance.queued is 'Messages queued (every message the campaign created, whatever became of it).';
comment on column crm.campaign_performance.sent is 'Messages a provider accepted.';
comment on column crm.campaign_performance.conversions is 'Paid orders by recipients placed within conversionWindowDays after their message was sent.';
comment on column crm.campaign_performance.attributed_revenue is 'What those orders brought in (paid minus refunded).';
comment on column crm.campaign_performance.cost_per_conversion is 'actualCost / conversions (empty without conversions).';
comment on column crm.campaign_performance.roi is '(attributedRevenue − actualCost) / actualCost (empty while actualCost is 0).';

create or replace function crm_private.campaign_performance(org uuid, campaign uuid) returns crm.campaign_performance
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with c as (
    select x.id, x.actual_cost,
           coalesce(x.conversion_window_days, (select s.conversion_window_days from crm.messaging_settings s where s.organization_id = org), 7) as win
      from crm.campaigns x where x.organization_id = org and x.id = campaign
  ), m as (
    select count(*)::int as queued,
           count(*) filter (where x.sent_at is not null)::int as sent,
           count(*) filter (where x.delivered_at is not null)::int as delivered,
           count(*) filter (where x.opened_at is not null)::int as opened,
           count(*) filter (where x.clicked_at is not null)::int as clicked,
           count(*) filter (where x.status = 'bounced')::int as bounced,
           count(*) filter (where x.status = 'failed')::int as failed
      from crm.messages x where x.organization_id = org and x.campaign_id = campaign
  ), r as (
    select count(*) filter (where cc.status <> 'removed')::int as recipients,
           count(*) filter (where cc.status = 'skipped')::int as skipped,
           count(*) filter (where cc.unsubscribed_at is not null)::int as unsubscribed
      from crm.campaign_contacts cc where cc.organization_id = org and cc.campaign_id = campaign
  ), conv as (
    select count(distinct o.id)::int as conversions, coalesce(sum(o.paid_amount - o.refunded_amount), 0) as revenue
      from crm.messages x
      join c on true
      join crm.orders o on o.organization_id = org and o.customer_id = x.customer_id
                       and o.ordered_at >= x.sent_at and o.ordered_at < x.sent_at + make_interval(days => c.win)
                       and o.status in ('paid', 'partially_paid')
     where x.organization_id = org and x.campaign_id = campaign and x.sent_at is not null
  )
  select c.id, r.recipients, r.skipped, m.queued, m.sent, m.delivered, m.opened, m.clicked, m.bounced, m.failed, r.unsubscribed,
         conv.conversions, conv.revenue, c.actual_cost,
         case when conv.conversions > 0 then round(c.actual_cost / conv.conversions, 2) end,
         case when c.actual_cost > 0 then round((conv.revenue - c.actual_cost) / c.actual_cost, 4) end,
         c.win
    from c, m, r, conv
$$;

create or replace function crm.campaign_metrics(campaign_id uuid) returns crm.campaign_performance
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  result crm.campaign_performance;
begin
  perform crm_private.require_permission('campaigns:read');
  result := crm_private.campaign_performance(crm.current_org_id(), campaign_id);
  if result.campaign_id is null or not exists (select 1 from crm.campaigns x where x.organization_id = crm.current_org_id()
                                                  and x.id = campaign_metrics.campaign_id and x.deleted_at is null) then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'campaign_id';
  end if;
  return result;
end
$$;
comment on function crm.campaign_metrics(uuid) is 'A campaign''s metrics: queued, sent, delivered, opened, clicked, bounced, unsubscribed, conversions, attributed revenue, cost per conversion and ROI — computed from the data. Needs campaigns:read.';
grant execute on function crm.campaign_metrics(uuid) to crm_user;

create or replace function crm.campaigns_metrics(c crm.campaigns) returns crm.campaign_performance
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select crm.campaign_metrics(c.id)
$$;
comment on function crm.campaigns_metrics(crm.campaigns) is 'The campaign''s metrics (as campaignMetrics).';
grant execute on function crm.campaigns_metrics(crm.campaigns) to crm_user;

-- Engagement (called by the public HTTP endpoints, as the owner) ------------------------------------------
-- Rank of a recipient's state: a later event never moves it back (opened after clicked stays clicked).
create or replace function crm_private.contact_state_rank(status text) returns int
  language sql immutable
as $$
  select case status when 'pending' then 0 when 'skipped' then 0 when 'removed' then 0 when 'queued' then 1 when 'failed' then 2
                     when 'sent' then 3 when 'delivered' then 4 when 'opened' then 5 when 'clicked' then 6
                     when 'bounced' then 7 when 'unsubscribed' then 8 else 0 end
$$;

create or replace function crm_private.advance_contact(org uuid, message uuid, state text, at timestamptz default now()) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.campaign_contacts cc
     set status = case when crm_private.contact_state_rank(state) > crm_private.contact_state_rank(cc.status) then state else cc.status end,
         delivered_at = case when state = 'delivered' then coalesce(cc.delivered_at, at) else cc.delivered_at end,
         opened_at = case when state in ('opened', 'clicked') then coalesce(cc.opened_at, at) else cc.opened_at end,
         clicked_at = case when state = 'clicked' then coalesce(cc.clicked_at, at) else cc.clicked_at end,
         bounced_at = case when state = 'bounced' then coalesce(cc.bounced_at, at) else cc.bounced_at end,
         unsubscribed_at = case when state = 'unsubscribed' then coalesce(cc.unsubscribed_at, at) else cc.unsubscribed_at end
    from crm.messages m
   where m.id = message and m.organization_id = org and m.campaign_id is not null
     and cc.organization_id = m.organization_id and cc.campaign_id = m.campaign_id and cc.customer_id = m.customer_id
$$;

-- The unsubscribe page: records the opt-out of the message's customer on its channel. Returns the
-- organization's name and the channel for the confirmation page (null: unknown or forged token).
create or replace function crm_private.unsubscribe(token text, apply boolean default true)
  returns table (organization_name text, channel text, already boolean)
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('unsubscribe', token);
  m crm.messages;
  was boolean;
begin
  select * into m from crm.messages x where x.id = mid;
  if m.id is null then
    return;
  end if;
  was := exists (select 1 from crm.consents k where k.organization_id = m.organization_id and k.customer_id = m.customer_id
                    and k.channel = m.channel and k.contact_id is null and k.status = 'opted_out');
  if apply and not was and m.customer_id is not null then
    perform crm_private.record_consent(m.organization_id, m.customer_id, null, m.channel, false, 'unsubscribe link');
    perform crm_private.advance_contact(m.organization_id, m.id, 'unsubscribed');
    update crm.messages x set status = 'cancelled', error_message = 'The recipient unsubscribed.'
     where x.organization_id = m.organization_id and x.customer_id = m.customer_id and x.channel = m.channel
       and x.status = 'pending' and x.kind = 'marketing';
  end if;
  return query select o.name, m.channel, was from crm.organizations o where o.id = m.organization_id;
end
$$;

create or replace function crm_private.record_open(token text) returns boolean
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('open', token);
  org uuid;
begin
  update crm.messages x set opened_at = coalesce(x.opened_at, now()) where x.id = mid returning x.organization_id into org;
  if org is null then
    return false;
  end if;
  perform crm_private.advance_contact(org, mid, 'opened');
  return true;
end
$$;

-- A click: the target must be a link of the message itself (no open redirect).
create or replace function crm_private.record_click(token text, url text) returns boolean
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('click', token);
  org uuid;
begin
  if url is null or url !~* '^https?://' then
    return false;
  end if;
  update crm.messages x set clicked_at = coalesce(x.clicked_at, now()), opened_at = coalesce(x.opened_at, now())
   where x.id = mid and (position('href="' || url || '"' in x.body) > 0
                         or position('href="' || replace(url, '&', '&amp;') || '"' in x.body) > 0)
  returning x.organization_id into org;
  if org is null then
    return false;
  end if;
  perform crm_private.advance_contact(org, mid, 'clicked');
  return true;
end
$$;

-- A provider notification about a message it accepted (SES through SNS): delivered, bounce (permanent:
-- the address is suppressed) or complaint (suppressed). Also reconciles a message whose send was not
-- recorded (status sending): the provider accepted it, so it is sent. Returns the messages touched.
create or replace function crm_private.record_provider_event(provider_message_id text, event text, permanent boolean,
                                                             addresses text[], detail text, message_id uuid default null)
  returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.messages;
  n int := 0;
begin
  for m in select * from crm.messages x
            where (x.provider_message_id = record_provider_event.provider_message_id and record_provider_event.provider_message_id is not null)
               or x.id = record_provider_event.message_id
            for update loop
    n := n + 1;
    if m.status = 'sending' then
      update crm.messages x set status = 'sent', sent_at = now(), provider_message_id = coalesce(x.provider_message_id, record_provider_event.provider_message_id),
                                lease_expires_at = null where x.id = m.id;
      update crm.campaign_contacts cc set status = 'sent', sent_at = now()
       where cc.organization_id = m.organization_id and cc.campaign_id = m.campaign_id and cc.customer_id = m.customer_id
         and cc.status in ('queued', 'failed');
    end if;
    if event = 'delivery' then
      update crm.messages x set status = case when x.status in ('sent', 'sending') then 'delivered' else x.status end,
                                delivered_at = coalesce(x.delivered_at, now()) where x.id = m.id;
      perform crm_private.advance_contact(m.organization_id, m.id, 'delivered');
    elsif event = 'bounce' and permanent then
      update crm.messages x set status = 'bounced', bounced_at = coalesce(x.bounced_at, now()), error_message = left(detail, 2000) where x.id = m.id;
      perform crm_private.advance_contact(m.organization_id, m.id, 'bounced');
      insert into crm.suppressions (organization_id, channel, address, reason, note, created_by)
      select m.organization_id, m.channel, a, 'hard_bounce', left(detail, 1000), null
        from unnest(coalesce(addresses, array[m.recipient])) a
      on conflict (organization_id, channel, address) do nothing;
    elsif event = 'complaint' then
      insert into crm.suppressions (organization_id, channel, address, reason, note, created_by)
      select m.organization_id, m.channel, a, 'complaint', left(detail, 1000), null
        from unnest(coalesce(addresses, array[m.recipient])) a
      on conflict (organization_id, channel, address) do nothing;
      if m.customer_id is not null then
        perform crm_private.record_consent(m.organization_id, m.customer_id, null, m.channel, false, 'complaint');
      end if;
      perform crm_private.advance_contact(m.organization_id, m.id, 'unsubscribed');
    end if;
  end loop;
  return n;
end
$$;

-- Queuing a message from a template for a set of customers (automations) -------------------------------
-- Renders like the fan-out; once per dedupe key; honours consent and suppression. Returns how many
-- were queued.
create or replace function crm_private.queue_template_messages(org uuid, template uuid, automation text, customer_ids uuid[],
                                                               dedupe_keys text[], scheduled_for timestamptz default null)
  returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  t crm.message_templates;
  n int;
begin
  select * into t from crm.message_templates x where x.organization_id = org and x.id = template;
  if t.id is null or cardinality(customer_ids) = 0 then
    return 0;
  end if;
  with keys as (
    select k.secret, k.public_url from crm_private.messaging_keys k
  ), targets as (
    select u.customer_id, u.dedupe_key, gen_random_uuid() as message_id
      from unnest(customer_ids, dedupe_keys) as u(customer_id, dedupe_key)
  ), prepared as (
    select tg.*, x.name, x.level_id, pc.id as contact_id, pc.first_name, pc.last_name,
           case when t.channel = 'email' then coalesce(x.email::text, pc.email::text) else coalesce(x.phone, pc.mobile, pc.phone) end as address
      from targets tg
      join crm.customers x on x.organization_id = org and x.id = tg.customer_id and x.deleted_at is null
      left join crm.contacts pc on pc.organization_id = org and pc.customer_id = x.id and pc.is_primary and pc.deleted_at is null
  ), inserted as (
    insert into crm.messages (id, organization_id, customer_id, contact_id, channel, kind, recipient, subject, body, scheduled_for,
                              template_id, automation, dedupe_key)
    select p.message_id, org, p.customer_id, p.contact_id, t.channel, 'marketing', p.address,
           crm_private.render_text(t.subject, false, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name, null),
           crm_private.render_body(t.body, t.channel, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name,
                                   k.public_url || '/unsubscribe/' || crm_private.sign_message('unsubscribe', p.message_id, k.secret)),
           coalesce(scheduled_for, now()), t.id, automation, p.dedupe_key
      from prepared p
      cross join keys k
      join crm.organizations o on o.id = org
      cross join lateral (select coalesce(p.first_name, split_part(p.name, ' ', 1)) as first_name,
                                 coalesce(nullif(p.last_name, ''), nullif(substr(p.name, length(split_part(p.name, ' ', 1)) + 2), ''), '') as last_name) v
      left join crm.customer_levels l on l.organization_id = org and l.id = p.level_id
      left join lateral (select lg.balance_after from crm.loyalty_ledger lg
                          where lg.organization_id = org and lg.customer_id = p.customer_id order by lg.id desc limit 1) b on true
     where crm.may_receive(org, p.customer_id, t.channel, p.address)
    on conflict (organization_id, dedupe_key) where messages.dedupe_key is not null do nothing
    returning 1
  )
  select count(*) into n from inserted;
  if n > 0 then
    perform crm_private.wake_sender(scheduled_for);
  end if;
  return n;
end
$$;

-- For other modules (finance's overdue notices, …): queue one e-mail or SMS to a customer, with your
-- own subject and body (already rendered; e-mail bodies are HTML), honouring consent and the
-- suppression list like every send path. Returns the message id, or null when the customer may not
-- receive it (no address, opted out, suppressed) or `key` (a dedupe key: once per key) was used before.
drop function if exists crm_private.enqueue_message(uuid, uuid, text, text, text, text, text, timestamptz);
create or replace function crm_private.enqueue_message(org uuid, customer uuid, channel text, subject text, body text,
                                                       key text default null, kind text default 'transactional',
                                                       scheduled_for timestamptz default null)
  returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  address text := crm.recipient_address(org, customer, enqueue_message.channel);
  mid uuid;
begin
  if not crm.may_receive(org, customer, enqueue_message.channel, address) then
    return null;
  end if;
  insert into crm.messages as x (organization_id, customer_id, channel, kind, recipient, subject, body, scheduled_for, automation, dedupe_key)
  values (org, customer, enqueue_message.channel, enqueue_message.kind, address, enqueue_message.subject, enqueue_message.body,
          coalesce(enqueue_message.scheduled_for, now()), 'notice', enqueue_message.key)
  on conflict (organization_id, dedupe_key) where x.dedupe_key is not null do nothing
  returning x.id into mid;
  if mid is not null then
    perform crm_private.wake_sender(enqueue_message.scheduled_for);
  end if;
  return mid;
end
$$;

-- Lifecycle automations -----------------------------------------------------------------------------------
-- Welcome: queued in the transaction that creates the customer (a statement trigger: an import of
-- 10,000 customers is one insert).
create or replace function crm_private.tg_welcome_messages() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  s record;
begin
  for s in select ms.organization_id, ms.welcome_template_id, array_agg(n.id) as ids
             from crm.messaging_settings ms
             join new_rows n on n.organization_id = ms.organization_id
            where ms.welcome_enabled and ms.welcome_template_id is not null
            group by ms.organization_id, ms.welcome_template_id loop
    perform crm_private.queue_template_messages(s.organization_id, s.welcome_template_id, 'welcome', s.ids,
                                                array(select 'welcome:' || i::text from unnest(s.ids) i));
  end loop;
  return null;
end
$$;
drop trigger if exists _350_welcome_message on crm.customers;
create trigger _350_welcome_message after insert on crm.customers referencing new table as new_rows
  for each statement execute function crm_private.tg_welcome_messages();

-- Birthday: customers whose birthday is today in the organization's time zone, once per year. A
-- 29 February birthday is celebrated on 28 February in years without one.
-- Inactivity: customers who bought before but have no paid order for inactivity_days; once per
-- episode (the episode is named by the last paid order: a new purchase starts a new one).
-- Run by the daily tenant jobs (crm_jobs below, as the organization's system principal); queuing
-- needs the owner (the queue and the signing key are not the caller's), hence SECURITY DEFINER with an
-- explicit check of the caller. Returns the messages queued.
create or replace function crm.run_message_automation(automation text, as_of timestamptz default null) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  s crm.messaging_settings;
  at timestamptz := coalesce(as_of, now());
  today date := (coalesce(as_of, now()) at time zone crm_private.org_timezone(crm.current_org_id()))::date;
  leap boolean;
  ids uuid[];
  keys text[];
begin
  if org is null or not (crm.current_user_id() = crm.system_principal_id(org) or crm.has_permission('settings:manage')) then
    raise exception 'Automations run as the organization''s system principal.' using errcode = 'CRFBD';
  end if;
  select * into s from crm.messaging_settings x where x.organization_id = org;
  if s.id is null then
    return 0;
  end if;
  if automation = 'birthday' then
    if not s.birthday_enabled or s.birthday_template_id is null then
      return 0;
    end if;
    leap := extract(day from (date_trunc('year', today) + interval '2 months' - interval '1 day')) = 29;
    select array_agg(c.id), array_agg('birthday:' || c.id::text || ':' || extract(year from today)::text) into ids, keys
      from crm.customers c
     where c.organization_id = org and c.deleted_at is null and c.birth_date is not null
       and ((extract(month from c.birth_date) = extract(month from today) and extract(day from c.birth_date) = extract(day from today))
            or (not leap and extract(month from c.birth_date) = 2 and extract(day from c.birth_date) = 29
                and extract(month from today) = 2 and extract(day from today) = 28));
    return crm_private.queue_template_messages(org, s.birthday_template_id, 'birthday', coalesce(ids, '{}'), coalesce(keys, '{}'));
  elsif automation = 'inactivity' then
    if not s.inactivity_enabled or s.inactivity_template_id is null then
      return 0;
    end if;
    select array_agg(l.customer_id), array_agg('inactivity:' || l.customer_id::text || ':' || l.order_id::text) into ids, keys
      from (select distinct on (o.customer_id) o.customer_id, o.id as order_id, o.ordered_at
              from crm.orders o
             where o.organization_id = org and o.status in ('paid', 'partially_paid')
             order by o.customer_id, o.ordered_at desc, o.id desc) l
      join crm.customers c on c.organization_id = org and c.id = l.customer_id and c.deleted_at is null
     where l.ordered_at < at - make_interval(days => s.inactivity_days);
    return crm_private.queue_template_messages(org, s.inactivity_template_id, 'inactivity', coalesce(ids, '{}'), coalesce(keys, '{}'));
  end if;
  raise exception 'Unknown automation "%"; birthday or inactivity.', automation using errcode = 'CRVAL', column = 'automation';
end
$$;
comment on function crm.run_message_automation(text, timestamptz) is E'@behavior -*\nQueues the birthday or inactivity messages due today (the daily tenant jobs call it).';
grant execute on function crm.run_message_automation(text, timestamptz) to crm_user;

create or replace function crm_jobs.send_birthday_messages(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.run_message_automation('birthday', (payload->>'asOf')::timestamptz)::bigint
$$;
grant execute on function crm_jobs.send_birthday_messages(jsonb) to crm_user;

create or replace function crm_jobs.send_inactivity_messages(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.run_message_automation('inactivity', (payload->>'asOf')::timestamptz)::bigint
$$;
grant execute on function crm_jobs.send_inactivity_messages(jsonb) to crm_user;

-- Reference guards (a caller's write may only point at rows the caller can see).
select crm_private.guard_references('crm.campaigns');
select crm_private.guard_references('crm.consents');
-- The queue's tables are written only by the owner's functions (crm_user has no insert or update
-- grant on them), so their guard is skipped without a call per row (the fan-out writes 100,000).
drop trigger if exists _950_references_visible on crm.campaign_contacts;
create trigger _950_references_visible before insert or update on crm.campaign_contacts
  for each row when (current_user = 'crm_user') execute function crm_private.tg_references_visible();
drop trigger if exists _950_references_visible on crm.messages;
create trigger _950_references_visible before insert or update on crm.messages
  for each row when (current_user = 'crm_user') execute function crm_private.tg_references_visible();
select crm_private.guard_references('crm.messaging_settings');

--! split: 990-client-guards.sql
-- Tables added since the client guard loop last ran get their restrictive `<table>_client_guard`
-- policy (see crm_private.apply_client_guards()).
select crm_private.apply_client_guards();
