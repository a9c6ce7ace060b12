-- AI: permissions, the organization's AI settings (cloud opt-out, daily call budget) and the count
-- of cloud calls per day. docs/ai.md.
do $$
begin
  perform crm_private.register_permission('ai:use',
    'Ask for lead scores, e-mail drafts and customer insights (on records you can see)',
    array['Administrator', 'Sales Manager', 'Sales Representative']);
  perform crm_private.register_permission('ai:manage',
    'Change the organization''s AI settings (cloud AI opt-out, daily call budget); read models and usage',
    array['Administrator']);
end
$$;

-- One row per organization, created with it.
create table if not exists crm.ai_settings (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  cloud_enabled boolean not null default true,
  daily_call_budget int not null default 500 constraint ai_settings_daily_call_budget_range check (daily_call_budget between 0 and 1000000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint ai_settings_organization_unique unique (organization_id),
  constraint ai_settings_organization_id_id_key unique (organization_id, id)
);
comment on table crm.ai_settings is E'@behavior -insert -delete\nThe organization''s AI settings: whether its data may be sent to the deployment''s cloud model (Amazon Bedrock), and how many cloud calls a day it may make. Edited with ai:manage.';
comment on column crm.ai_settings.organization_id is E'@behavior -insert -update';
comment on column crm.ai_settings.cloud_enabled is 'When off, this organization''s data is never sent to a cloud model: scores, drafts and insights come from the local model, whatever the deployment configures.';
comment on column crm.ai_settings.daily_call_budget is 'Cloud model calls a day (in the organization''s time zone), retries included; past it, the local model answers and the fallback is recorded.';

-- Cloud calls per organization and day: written by the worker (as the owner, outside the job's
-- transaction, so a call is counted even when its job later fails).
create table if not exists crm.ai_usage (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  day date not null,
  calls int not null default 0 constraint ai_usage_calls_range check (calls >= 0),
  fallbacks int not null default 0 constraint ai_usage_fallbacks_range check (fallbacks >= 0),
  updated_at timestamptz not null default now(),
  constraint ai_usage_day_unique unique (organization_id, day),
  constraint ai_usage_organization_id_id_key unique (organization_id, id)
);
comment on table crm.ai_usage is E'@behavior -insert -update -delete\nCloud AI calls (retries included) and fallbacks to the local model, per day in the organization''s time zone. Readable with ai:manage.';

alter table crm.ai_settings enable row level security;
alter table crm.ai_usage enable row level security;

drop policy if exists ai_settings_select on crm.ai_settings;
create policy ai_settings_select on crm.ai_settings for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists ai_settings_update on crm.ai_settings;
create policy ai_settings_update on crm.ai_settings for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('ai:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('ai:manage')));

drop policy if exists ai_usage_select on crm.ai_usage;
create policy ai_usage_select on crm.ai_usage for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('ai:manage')));

grant select on crm.ai_settings, crm.ai_usage to crm_user;
grant update (cloud_enabled, daily_call_budget) on crm.ai_settings to crm_user;

create or replace function crm_private.seed_ai_settings(org uuid) returns void
  language sql
  set search_path = pg_catalog, pg_temp
as $$
  insert into crm.ai_settings (organization_id) values (org) on conflict (organization_id) do nothing
$$;
create or replace function crm_private.tg_seed_ai_settings() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_ai_settings(new.id);
  return null;
end
$$;
drop trigger if exists _530_seed_ai_settings on crm.organizations;
create trigger _530_seed_ai_settings after insert on crm.organizations
  for each row execute function crm_private.tg_seed_ai_settings();
select crm_private.seed_ai_settings(id) from crm.organizations;

drop trigger if exists _100_updated_at on crm.ai_settings;
create trigger _100_updated_at before update on crm.ai_settings for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.ai_settings;
create trigger _800_audit after insert or update or delete on crm.ai_settings for each row execute function crm_private.tg_audit();

-- Reserves up to `wanted` cloud calls of today's budget for an organization and returns how many it
-- got (0 when the budget is spent or cloud AI is off). Run by the worker as the owner.
create or replace function crm_private.ai_reserve_calls(org uuid, wanted int) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  budget int;
  today date := (now() at time zone crm_private.org_timezone(org))::date;
  before int;
  after int;
begin
  select case when s.cloud_enabled then s.daily_call_budget else 0 end into budget from crm.ai_settings s where s.organization_id = org;
  if coalesce(budget, 0) <= 0 or wanted <= 0 then
    return 0;
  end if;
  insert into crm.ai_usage (organization_id, day, calls) values (org, today, 0) on conflict (organization_id, day) do nothing;
  select u.calls into before from crm.ai_usage u where u.organization_id = org and u.day = today for update;
  after := least(budget, before + wanted);
  update crm.ai_usage u set calls = after, updated_at = now() where u.organization_id = org and u.day = today;
  return greatest(after - before, 0);
end
$$;

-- Counts fallbacks to the local model (budget spent, errors after retries).
create or replace function crm_private.ai_record_fallbacks(org uuid, n int) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  insert into crm.ai_usage (organization_id, day, fallbacks)
  values (org, (now() at time zone crm_private.org_timezone(org))::date, n)
  on conflict (organization_id, day) do update set fallbacks = crm.ai_usage.fallbacks + excluded.fallbacks, updated_at = now()
$$;
