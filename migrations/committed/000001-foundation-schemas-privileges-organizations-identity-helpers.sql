--! Previous: -
--! Hash: sha1:4368e3c5c87fc2e17f635c1580da411411a3c563
--! Message: foundation: schemas, privileges, organizations, identity helpers, job helper

-- Schemas ----------------------------------------------------------------------------------------
create schema if not exists crm;
create schema if not exists crm_private;

-- Nothing is executable or usable by PUBLIC unless granted here.
alter default privileges revoke all on sequences from public;
alter default privileges revoke all on functions from public;
revoke all on schema crm from public;
revoke all on schema crm_private from public;
grant usage on schema public to crm_anonymous, crm_user;
grant usage on schema crm to crm_anonymous, crm_user;
-- crm_private is reachable only through SECURITY DEFINER functions owned by crm_owner.

alter default privileges in schema crm grant usage, select on sequences to crm_user;

-- Request context ------------------------------------------------------------------------------
-- The server sets these per transaction from a verified token (never from client input):
--   jwt.claims.sub  the user id         jwt.claims.org  the organization id
--   jwt.claims.sid  the session id      cairn.request_id, cairn.client_ip
create or replace function crm.current_user_id() returns uuid
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select nullif(current_setting('jwt.claims.sub', true), '')::uuid
$$;
comment on function crm.current_user_id() is E'@behavior -queryField\nThe authenticated user of this request, or null.';

create or replace function crm.current_org_id() returns uuid
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select nullif(current_setting('jwt.claims.org', true), '')::uuid
$$;
comment on function crm.current_org_id() is E'@behavior -queryField\nThe organization (tenant) of this request, or null.';

create or replace function crm.current_session_id() returns uuid
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select nullif(current_setting('jwt.claims.sid', true), '')::uuid
$$;
comment on function crm.current_session_id() is E'@behavior -queryField\nThe session of this request, or null.';

create or replace function crm_private.request_id() returns text
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select nullif(current_setting('cairn.request_id', true), '')
$$;

grant execute on function crm.current_user_id(), crm.current_org_id(), crm.current_session_id()
  to crm_anonymous, crm_user;

-- Generic trigger: keep updated_at current.
create or replace function crm_private.tg_set_updated_at() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

-- Jobs -----------------------------------------------------------------------------------------
-- The one way SQL enqueues background work: in the same transaction as its cause, so a job exists
-- if and only if the change that caused it committed.
create or replace function crm_private.add_job(
  identifier text,
  payload jsonb default '{}'::jsonb,
  job_key text default null,
  run_at timestamptz default null,
  max_attempts int default 25,
  priority int default 0
) returns void
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  perform graphile_worker.add_job(
    identifier,
    payload := (coalesce(payload, '{}'::jsonb)
      || jsonb_strip_nulls(jsonb_build_object('_request_id', crm_private.request_id())))::json,
    job_key := job_key,
    run_at := coalesce(run_at, now()),
    max_attempts := max_attempts,
    priority := priority
  );
end
$$;
revoke all on function crm_private.add_job(text, jsonb, text, timestamptz, int, int) from public;

-- Housekeeping run by the maintenance:prune job; later modules add their own steps here.
create or replace function crm_private.prune(retention interval default interval '30 days')
  returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  failed_jobs bigint;
begin
  -- Permanently failed jobs are kept for inspection for the retention period, then removed.
  delete from graphile_worker._private_jobs j
   where j.attempts >= j.max_attempts
     and j.locked_at is null
     and j.updated_at < now() - retention;
  get diagnostics failed_jobs = row_count;
  return jsonb_build_object('failed_jobs', failed_jobs);
end
$$;

-- Organizations (the tenant) -------------------------------------------------------------------
create table if not exists crm.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(btrim(name)) between 1 and 200),
  slug citext not null unique
    constraint organizations_slug_format check (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
  settings jsonb not null default jsonb_build_object(
    'currency', 'USD', 'timezone', 'UTC', 'locale', 'en'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint organizations_settings_object check (jsonb_typeof(settings) = 'object'),
  constraint organizations_settings_currency check (
    not settings ? 'currency' or (settings->>'currency') ~ '^[A-Z]{3}$'),
  constraint organizations_settings_timezone check (
    not settings ? 'timezone' or jsonb_typeof(settings->'timezone') = 'string'),
  constraint organizations_settings_locale check (
    not settings ? 'locale' or (settings->>'locale') ~ '^[a-z]{2}(-[A-Z]{2})?$')
);
comment on table crm.organizations is E'@behavior -insert -delete\nA tenant. Every tenant-owned record belongs to exactly one organization.';

drop trigger if exists _100_updated_at on crm.organizations;
create trigger _100_updated_at before update on crm.organizations
  for each row execute function crm_private.tg_set_updated_at();

alter table crm.organizations enable row level security;

-- A caller sees only the organization of the request. The identity module widens this to every
-- organization the user belongs to and adds update rights for settings:manage.
drop policy if exists organizations_select on crm.organizations;
create policy organizations_select on crm.organizations for select
  using (id = (select crm.current_org_id()));

grant select on crm.organizations to crm_user;
