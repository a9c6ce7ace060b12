--! Previous: sha1:abb7d0a097750cd87cce1afbf5ed303a0fe8f8e7
--! Hash: sha1:e1eb190eef88728fafe2d83f349d6382ed7a814e
--! Message: tenant job framework: a system principal per organization, job runs, per-organization schedules, recurring tasks

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 300-system-principal.sql
-- The system principal: who background jobs act as inside an organization.
--
-- Every organization has one system user (crm.users row, id = crm.system_principal_id(org), named
-- "System") with an active membership holding the organization's internal "System" role. Tenant jobs
-- run as crm_user with that organization's claims and this user as `jwt.claims.sub`, so row-level
-- security applies to them exactly as to a person, and the audit log names a real actor.
--   * It belongs to its own organization only: it cannot be added to another one, so even a job
--     started with the wrong organization claim sees nothing (has_permission finds no membership).
--   * It cannot sign in: no password, no e-mail, and sessions and passwords are refused for it.
--   * Nobody acting as a principal (a person or a job) can change it: the user row, its membership,
--     the System role and that role's grants are guarded; only migrations (no principal) may.
--   * It is not a member people choose: the membership and the role are hidden from the member,
--     role and grant lists, the role cannot be given to anyone, it cannot join teams, and it cannot
--     be the owner or assignee of customers, deals, projects and tasks. The users list shows it
--     (audit entries name it) with isSystem = true.
--   * The System role holds every permission code except those that change who may do what
--     (crm_private.system_role_excludes); codes registered later are granted to it automatically.

-- Columns --------------------------------------------------------------------------------------
alter table crm.users add column if not exists system_organization_id uuid
  references crm.organizations (id) on delete cascade;
create unique index if not exists users_system_organization_id_key on crm.users (system_organization_id);
comment on column crm.users.system_organization_id is E'@behavior -*\nSet on the system principal of an organization (never on a person).';
comment on constraint users_system_organization_id_fkey on crm.users is E'@behavior -*';

alter table crm.roles add column if not exists is_internal boolean not null default false;
create index if not exists roles_organization_id_is_internal_idx on crm.roles (organization_id, is_internal);
comment on column crm.roles.is_internal is E'@behavior -*\nThe role of the organization''s system principal: never listed, never assignable.';

-- Identity -------------------------------------------------------------------------------------
-- Derived from the organization id so that check constraints and policies can name it without a
-- lookup. Never change this expression: constraints depend on it.
create or replace function crm.system_principal_id(organization_id uuid) returns uuid
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select md5('cairn:system-principal:' || organization_id::text)::uuid
$$;
comment on function crm.system_principal_id(uuid) is E'@behavior -queryField -mutationField\nThe user id of an organization''s system principal.';
grant execute on function crm.system_principal_id(uuid) to crm_user;

create or replace function crm.users_is_system(u crm.users) returns boolean
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select u.system_organization_id is not null
$$;
comment on function crm.users_is_system(crm.users) is 'The automation principal of the organization (background jobs act as it); it cannot sign in or be changed.';
grant execute on function crm.users_is_system(crm.users) to crm_user;

create or replace function crm_private.is_system_user(uid uuid) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from crm.users u where u.id = uid and u.system_organization_id is not null)
$$;

create or replace function crm_private.is_internal_role(rid uuid) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from crm.roles r where r.id = rid and r.is_internal)
$$;

-- Codes the System role never holds: jobs do not manage access.
create or replace function crm_private.system_role_excludes(code text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select code in ('roles:manage', 'permissions:manage', 'users:create', 'users:update', 'users:delete', 'teams:manage')
$$;

-- Creates (or completes) the system principal of an organization; returns its user id. Idempotent.
create or replace function crm_private.provision_system_principal(org uuid) returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  uid uuid := crm.system_principal_id(org);
  rid uuid;
begin
  select r.id into rid from crm.roles r where r.organization_id = org and r.is_internal;
  if rid is null then
    insert into crm.roles (organization_id, name, description, is_system, is_internal)
    values (org,
            case when exists (select 1 from crm.roles r where r.organization_id = org and r.name = 'System') then 'System principal' else 'System' end,
            'Background jobs of the organization act with this role. It cannot be assigned, changed or deleted.',
            true, true)
    returning id into rid;
  end if;
  insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
  select org, rid, p.code, null from crm.permissions p where not crm_private.system_role_excludes(p.code)
  on conflict do nothing;
  insert into crm.users (id, username, full_name, system_organization_id)
  values (uid, 'system.' || replace(org::text, '-', ''), 'System', org)
  on conflict (id) do nothing;
  insert into crm.organization_memberships (organization_id, user_id, role_id)
  values (org, uid, rid)
  on conflict on constraint organization_memberships_user_unique do nothing;
  return uid;
end
$$;

-- The system principal of an organization, provisioned if missing; null when the organization does
-- not exist. What the job runner calls before it opens a tenant job's transaction.
create or replace function crm_private.system_principal_for(org uuid) returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from crm.organizations where id = org) then
    return null;
  end if;
  if exists (select 1 from crm.organization_memberships m
              where m.organization_id = org and m.user_id = crm.system_principal_id(org) and m.is_active) then
    return crm.system_principal_id(org);
  end if;
  return crm_private.provision_system_principal(org);
end
$$;

create or replace function crm_private.tg_provision_system_principal() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.provision_system_principal(new.id);
  return null;
end
$$;
-- After _500_seed (the default roles).
drop trigger if exists _510_system_principal on crm.organizations;
create trigger _510_system_principal after insert on crm.organizations
  for each row execute function crm_private.tg_provision_system_principal();

-- New permission codes go to every System role (unless excluded).
create or replace function crm_private.tg_grant_code_to_system_roles() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm_private.system_role_excludes(new.code) then
    insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
    select r.organization_id, r.id, new.code, null from crm.roles r where r.is_internal
    on conflict do nothing;
  end if;
  return null;
end
$$;
drop trigger if exists _510_system_roles on crm.permissions;
create trigger _510_system_roles after insert on crm.permissions
  for each row execute function crm_private.tg_grant_code_to_system_roles();

-- Guard rails ------------------------------------------------------------------------------------
-- Migrations run without a principal (crm.current_user_id() is null); requests and jobs have one.

-- The system user row: no principal may change or delete it.
create or replace function crm_private.tg_system_user_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if old.system_organization_id is not null and crm.current_user_id() is not null then
    raise exception 'The system principal cannot be changed.' using errcode = 'CRFBD', column = 'user_id';
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
drop trigger if exists _050_system_principal on crm.users;
create trigger _050_system_principal before update or delete on crm.users
  for each row execute function crm_private.tg_system_user_guard();

-- Memberships: the system user belongs to its own organization with the System role, and only it
-- holds that role; its membership is not changed or removed while the organization exists.
create or replace function crm_private.tg_system_membership_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op in ('UPDATE', 'DELETE') and crm_private.is_system_user(old.user_id)
     and crm.current_user_id() is not null
     and exists (select 1 from crm.organizations o where o.id = old.organization_id) then
    raise exception 'The system principal''s membership cannot be changed.' using errcode = 'CRFBD', column = 'membership_id';
  end if;
  if tg_op = 'DELETE' then
    return old;
  end if;
  if crm_private.is_system_user(new.user_id) then
    if new.user_id <> crm.system_principal_id(new.organization_id) or not crm_private.is_internal_role(new.role_id) then
      raise exception 'The system principal belongs to its own organization only.' using errcode = 'CRFBD', column = 'user_id';
    end if;
  elsif crm_private.is_internal_role(new.role_id) then
    raise exception 'The System role belongs to the organization''s system principal; choose another role.'
      using errcode = 'CRVAL', column = 'role_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.organization_memberships;
create trigger _050_system_principal before insert or update or delete on crm.organization_memberships
  for each row execute function crm_private.tg_system_membership_guard();

-- The System role: not renamed, edited or deleted by a principal.
create or replace function crm_private.tg_system_role_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if old.is_internal and crm.current_user_id() is not null
     and exists (select 1 from crm.organizations o where o.id = old.organization_id) then
    raise exception 'The System role cannot be changed or deleted.' using errcode = 'CRFBD', column = 'role_id';
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
drop trigger if exists _050_system_principal on crm.roles;
create trigger _050_system_principal before update or delete on crm.roles
  for each row execute function crm_private.tg_system_role_guard();

-- The System role's grants follow the rule above: nothing excluded is added, nothing is revoked.
create or replace function crm_private.tg_system_role_grants_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' then
    if crm_private.system_role_excludes(new.permission_code) and crm_private.is_internal_role(new.role_id) then
      raise exception 'The System role cannot be granted %.', new.permission_code using errcode = 'CRFBD', column = 'permission_code';
    end if;
    return new;
  end if;
  if crm_private.is_internal_role(old.role_id) and crm.current_user_id() is not null then
    raise exception 'The System role''s permissions cannot be revoked.' using errcode = 'CRFBD', column = 'permission_code';
  end if;
  return old;
end
$$;
drop trigger if exists _050_system_principal on crm.role_permissions;
create trigger _050_system_principal before insert or delete on crm.role_permissions
  for each row execute function crm_private.tg_system_role_grants_guard();

-- Not in teams, not invited with the System role.
create or replace function crm_private.tg_system_team_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_system_user(new.user_id) then
    raise exception 'The system principal cannot be a team member.' using errcode = 'CRVAL', column = 'user_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.team_members;
create trigger _050_system_principal before insert or update of user_id on crm.team_members
  for each row execute function crm_private.tg_system_team_guard();

create or replace function crm_private.tg_system_invitation_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_internal_role(new.role_id) then
    raise exception 'The System role belongs to the organization''s system principal; choose another role.'
      using errcode = 'CRVAL', column = 'role_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.invitations;
create trigger _050_system_principal before insert or update of role_id on crm.invitations
  for each row execute function crm_private.tg_system_invitation_guard();

-- It never signs in: no session, no password.
create or replace function crm_private.tg_system_no_login() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_system_user(new.user_id) then
    raise exception 'The system principal cannot sign in.' using errcode = 'CRFBD';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm_private.sessions;
create trigger _050_system_principal before insert on crm_private.sessions
  for each row execute function crm_private.tg_system_no_login();
drop trigger if exists _050_system_principal on crm_private.user_secrets;
create trigger _050_system_principal before insert or update on crm_private.user_secrets
  for each row execute function crm_private.tg_system_no_login();

-- Never an owner or assignee (records a job creates must name a person, or nobody).
do $$
declare
  c record;
begin
  for c in select * from (values
    ('crm.customers', 'customers_owner_id_valid', 'owner_id'),
    ('crm.deals', 'deals_owner_id_valid', 'owner_id'),
    ('crm.projects', 'projects_manager_id_valid', 'manager_id'),
    ('crm.tasks', 'tasks_assignee_id_valid', 'assignee_id')) as x(tbl, con, col)
  loop
    if not exists (select 1 from pg_constraint where conrelid = c.tbl::regclass and conname = c.con) then
      execute format('alter table %s add constraint %I check (%I is distinct from crm.system_principal_id(organization_id))',
                     c.tbl, c.con, c.col);
    end if;
  end loop;
end
$$;

-- Policies: hidden from the member, role and grant lists ---------------------------------------
drop policy if exists roles_select on crm.roles;
create policy roles_select on crm.roles for select
  using (organization_id = (select crm.current_org_id()) and not is_internal);

drop policy if exists role_permissions_select on crm.role_permissions;
create policy role_permissions_select on crm.role_permissions for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.roles r where r.id = role_permissions.role_id));

drop policy if exists memberships_select on crm.organization_memberships;
create policy memberships_select on crm.organization_memberships for select
  using (
    user_id = (select crm.current_user_id())
    or (organization_id = (select crm.current_org_id()) and (select crm.has_permission('users:read'))
        and user_id <> crm.system_principal_id(organization_id))
  );

-- Organizations created before this migration.
select crm_private.provision_system_principal(id) from crm.organizations;

--! split: 301-job-framework.sql
-- Tenant jobs: per-organization schedules, the fan-out that enqueues them, and the record of every run.
--
-- A tenant job is one graphile-worker job for one organization (payload {"organizationId": …}, job
-- key "tenant:<task>:<organization id>"). The worker's runner (worker/tenant/runner.ts) runs it as
-- crm_user with that organization's claims and its system principal (300-system-principal.sql) and
-- records it in crm.job_runs. The schedule of each task (hourly, daily, weekly) is in the task
-- registry (worker/tenant/registry.ts); the cron task jobs:fan_out passes it to
-- crm_private.fan_out_tenant_jobs, which enqueues every organization that is due, once per slot.
-- docs/jobs.md explains it all.

-- Organization settings: when daily and weekly jobs run, in the organization's time zone ----------
--   settings.timezone        IANA name (already there, default 'UTC'); now checked against the server's zone list
--   settings.daily_job_hour  0–23, default 3 (03:00 local)
--   settings.weekly_job_day  ISO weekday 1 (Monday) – 7 (Sunday), default 1; weekly jobs run at daily_job_hour
do $$
begin
  if not exists (select 1 from pg_constraint where conrelid = 'crm.organizations'::regclass and conname = 'organizations_settings_daily_job_hour') then
    alter table crm.organizations add constraint organizations_settings_daily_job_hour check (
      not settings ? 'daily_job_hour'
      or case when jsonb_typeof(settings->'daily_job_hour') = 'number'
              then (settings->>'daily_job_hour')::numeric in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
              else false end);
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'crm.organizations'::regclass and conname = 'organizations_settings_weekly_job_day') then
    alter table crm.organizations add constraint organizations_settings_weekly_job_day check (
      not settings ? 'weekly_job_day'
      or case when jsonb_typeof(settings->'weekly_job_day') = 'number'
              then (settings->>'weekly_job_day')::numeric in (1, 2, 3, 4, 5, 6, 7)
              else false end);
  end if;
end
$$;

-- A time zone the server does not know would make every local-time computation fail.
create or replace function crm_private.tg_organization_time_zone() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if new.settings ? 'timezone'
     and (tg_op = 'INSERT' or new.settings->'timezone' is distinct from old.settings->'timezone')
     and not exists (select 1 from pg_timezone_names z where z.name = new.settings->>'timezone') then
    raise exception 'Unknown time zone "%"; use an IANA name such as Europe/Berlin.', new.settings->>'timezone'
      using errcode = 'CRVAL', column = 'settings.timezone';
  end if;
  return new;
end
$$;
drop trigger if exists _110_time_zone on crm.organizations;
create trigger _110_time_zone before insert or update of settings on crm.organizations
  for each row execute function crm_private.tg_organization_time_zone();

-- Job runs -----------------------------------------------------------------------------------------
create table if not exists crm.job_runs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  task text not null constraint job_runs_task_length check (length(task) between 1 and 100),
  outcome text not null default 'running' constraint job_runs_outcome_check check (outcome in ('running', 'succeeded', 'failed')),
  attempt int not null default 1 constraint job_runs_attempt_range check (attempt >= 1),
  max_attempts int constraint job_runs_max_attempts_range check (max_attempts >= 1),
  job_id bigint,
  rows_affected bigint,
  error text,
  error_code text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint job_runs_organization_id_id_key unique (organization_id, id),
  constraint job_runs_finished_at_valid check ((outcome = 'running') = (finished_at is null))
);
create index if not exists job_runs_organization_id_started_at_idx on crm.job_runs (organization_id, started_at desc);
create index if not exists job_runs_organization_id_task_started_at_idx on crm.job_runs (organization_id, task, started_at desc);
create index if not exists job_runs_organization_id_outcome_started_at_idx on crm.job_runs (organization_id, outcome, started_at desc);
create index if not exists job_runs_started_at_idx on crm.job_runs (started_at);
comment on table crm.job_runs is E'@behavior -insert -update -delete\nOne run (one attempt) of a background job for this organization: written by the job runner, readable with jobs:read.';
comment on column crm.job_runs.task is 'The job''s task identifier, e.g. tasks:recur.';
comment on column crm.job_runs.outcome is 'running, succeeded or failed (a failed attempt is retried until attempt = maxAttempts).';
comment on column crm.job_runs.job_id is 'The graphile-worker job id (several attempts share it).';
comment on column crm.job_runs.rows_affected is 'What the job reports it changed (e.g. tasks created).';
comment on column crm.job_runs.error is 'The error message of a failed run.';
comment on column crm.job_runs.error_code is 'The SQLSTATE of a failed run, when the error came from the database.';

alter table crm.job_runs enable row level security;
drop policy if exists job_runs_select on crm.job_runs;
create policy job_runs_select on crm.job_runs for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('jobs:read')));
-- Written by the runner as the owner only: no insert, update or delete for crm_user.
grant select on crm.job_runs to crm_user;

select crm_private.register_permission('jobs:read', 'View the organization''s background job runs', array['Administrator']);

-- Schedules ------------------------------------------------------------------------------------------
-- The last slot each organization was enqueued for, per task: what makes the fan-out enqueue a slot
-- once, however often it runs, and catch up a missed slot once (not once per missed slot).
create table if not exists crm_private.tenant_job_schedule (
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  task text not null,
  last_slot timestamptz not null,
  enqueued_at timestamptz not null default now(),
  primary key (organization_id, task)
);
alter table crm_private.tenant_job_schedule enable row level security;
drop policy if exists no_access on crm_private.tenant_job_schedule;
create policy no_access on crm_private.tenant_job_schedule using (false);

-- The start of the latest slot at or before `as_of` for a schedule, in a time zone: the hour
-- (hourly), today's or yesterday's `local_hour`:00 (daily), or the latest `iso_weekday` at
-- `local_hour`:00 (weekly). Computed on local wall-clock time, then turned back into an instant, so
-- daylight-saving changes move the instant, not the local hour. A local time skipped by a DST change
-- resolves to the next valid one. One expression without SET options, so the planner inlines it into
-- the fan-out's statement (it only calls pg_catalog functions).
create or replace function crm_private.schedule_slot(kind text, as_of timestamptz, tz text, local_hour int, iso_weekday int)
  returns timestamptz
  language sql stable parallel safe
as $$
  select case kind
    when 'hourly' then date_trunc('hour', as_of at time zone tz) at time zone tz
    when 'daily' then
      (date_trunc('day', (as_of at time zone tz) - make_interval(hours => local_hour)) + make_interval(hours => local_hour)) at time zone tz
    when 'weekly' then
      (date_trunc('day', (as_of at time zone tz) - make_interval(hours => local_hour))
         - make_interval(days => (extract(isodow from (as_of at time zone tz) - make_interval(hours => local_hour))::int - iso_weekday + 7) % 7)
         + make_interval(hours => local_hour)) at time zone tz
  end
$$;

-- Enqueues one tenant job. The job key makes a second request while one is queued replace it (never
-- two queued runs of a task for an organization); the runner's lock keeps a queued run from starting
-- while another is running.
create or replace function crm_private.enqueue_tenant_job(
  task text,
  organization_id uuid,
  payload jsonb default '{}'::jsonb,
  max_attempts int default 5,
  run_at timestamptz default null
) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm_private.add_job(
    task,
    coalesce(payload, '{}'::jsonb) || jsonb_build_object('organizationId', organization_id),
    job_key := 'tenant:' || task || ':' || organization_id::text,
    run_at := run_at,
    max_attempts := max_attempts)
$$;

-- The fan-out: for every scheduled task × organization whose latest slot (in the organization's time
-- zone and hours) has not been enqueued yet, record the slot and enqueue one job — one statement for
-- all organizations, the jobs added in one graphile_worker.add_jobs batch (same job keys and payload
-- as crm_private.enqueue_tenant_job). `tasks` is the registry's schedule:
-- [{"identifier", "schedule", "max_attempts"}].
create or replace function crm_private.fan_out_tenant_jobs(tasks jsonb, as_of timestamptz default now())
  returns table (task text, organization_id uuid, slot timestamptz)
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  with t as (
    select x.identifier, x.schedule, coalesce(x.max_attempts, 5) as max_attempts
      from jsonb_to_recordset(tasks) as x(identifier text, schedule text, max_attempts int)
     where x.schedule in ('hourly', 'daily', 'weekly')
  ), o as (
    select org.id,
           coalesce(z.name, 'UTC') as tz,
           coalesce((org.settings->>'daily_job_hour')::int, 3) as local_hour,
           coalesce((org.settings->>'weekly_job_day')::int, 1) as iso_weekday
      from crm.organizations org
      left join pg_timezone_names z on z.name = org.settings->>'timezone'
  ), due as (
    select t.identifier, t.max_attempts, o.id as org, crm_private.schedule_slot(t.schedule, as_of, o.tz, o.local_hour, o.iso_weekday) as slot
      from t cross join o
  ), claimed as (
    insert into crm_private.tenant_job_schedule as s (organization_id, task, last_slot)
    select d.org, d.identifier, d.slot from due d
     where not exists (select 1 from crm_private.tenant_job_schedule x
                        where x.organization_id = d.org and x.task = d.identifier and x.last_slot >= d.slot)
    on conflict on constraint tenant_job_schedule_pkey do update
      set last_slot = excluded.last_slot, enqueued_at = now()
      where s.last_slot < excluded.last_slot
    returning s.organization_id, s.task, s.last_slot
  ), queued as (
    select count(*) as n
      from graphile_worker.add_jobs((
        select array_agg(row(
                 c.task,
                 json_build_object('slot', c.last_slot, 'organizationId', c.organization_id),
                 null, now(), d.max_attempts, 'tenant:' || c.task || ':' || c.organization_id::text, 0, null
               )::graphile_worker.job_spec)
          from claimed c join due d on d.org = c.organization_id and d.identifier = c.task))
  )
  select c.task, c.organization_id, c.last_slot from claimed c cross join queued q
$$;

-- Retention: finished runs older than the retention period go; a run still "running" long after any
-- job could (its worker died; graphile-worker retries the job after 4 hours as a new run) is closed.
create or replace function crm_private.prune_job_runs(retention interval default interval '90 days') returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  abandoned bigint;
  removed bigint;
begin
  update crm.job_runs
     set outcome = 'failed', finished_at = now(), error = 'The worker stopped before the run finished.'
   where outcome = 'running' and started_at < now() - interval '6 hours';
  get diagnostics abandoned = row_count;
  delete from crm.job_runs where started_at < now() - retention and outcome <> 'running';
  get diagnostics removed = row_count;
  return jsonb_build_object('job_runs', removed, 'job_runs_abandoned', abandoned);
end
$$;

-- Tenant job SQL -------------------------------------------------------------------------------------
-- Functions that tenant jobs run live in crm_jobs: never exposed by the API (PostGraphile reads
-- only crm), executable by crm_user, and SECURITY INVOKER, so they run under the organization's RLS
-- as the system principal (the catalog test checks this). Each takes the job payload and returns
-- the number of rows it changed.
create schema if not exists crm_jobs;
revoke all on schema crm_jobs from public;
grant usage on schema crm_jobs to crm_user;

-- The organization's time zone (UTC when unset or unknown to the server).
create or replace function crm_jobs.organization_time_zone() returns text
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select z.name from crm.organizations o join pg_timezone_names z on z.name = o.settings->>'timezone'
                    where o.id = crm.current_org_id()), 'UTC')
$$;
grant execute on function crm_jobs.organization_time_zone() to crm_user;

--! split: 310-recurring-tasks.sql
-- Recurring tasks (tasks:recur): a task with is_recurring is a template; every recurrence_interval
-- the daily tenant job creates its next occurrence.
--
-- The rule (docs/jobs.md, "Recurring tasks"), all in the organization's time zone:
--   * Occurrence n of a template is due to be created on the local date of
--     created_at + n × recurrence_interval; its due date is the template's due_at + n × interval.
--     Multiples of the interval are always added to the template's own dates, never to the previous
--     occurrence, so month ends stay month ends: Jan 31 + 1 month = Feb 28 (29), + 2 months = Mar 31.
--   * A run creates, for each template, the latest occurrence whose date has come (if it is newer than
--     the last one created): missed periods are not back-filled one by one.
--   * Copied: type, title, description, priority, estimated hours, customer, contact, deal, project,
--     and the assignee while their membership is active (unassigned otherwise). The occurrence
--     points at its template (recurrence_template_id) and has its number (occurrence_number).
--   * A template linked to a record that is deleted (hidden) does not recur until it is restored or
--     the link removed.
--   * Idempotent: the template's recurrence_count records the last occurrence created, and
--     (template, occurrence_number) is unique, so running twice creates nothing the second time.
--   * Ending a recurrence is an update (isRecurring: false); occurrences already created stay.
-- Intervals are whole days (weeks are 7 days) or whole months (years are 12 months), not mixed.

-- Columns --------------------------------------------------------------------------------------
alter table crm.tasks add column if not exists recurrence_template_id uuid;
alter table crm.tasks add column if not exists occurrence_number int;
alter table crm.tasks add column if not exists recurrence_count int not null default 0;

do $$
begin
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_template_fkey') then
    alter table crm.tasks add constraint tasks_recurrence_template_fkey foreign key (organization_id, recurrence_template_id)
      references crm.tasks (organization_id, id) on delete set null (recurrence_template_id);
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_occurrence_number_range') then
    alter table crm.tasks add constraint tasks_occurrence_number_range check (occurrence_number >= 1);
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_count_range') then
    alter table crm.tasks add constraint tasks_recurrence_count_range check (recurrence_count >= 0);
  end if;
  -- Whole days or whole months, at least one day; no hours, no mix of months and days. Tasks saved
  -- before this rule with another interval (hours were allowed) keep it until they are edited: the
  -- constraint is then left NOT VALID rather than failing the migration.
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_interval_valid') then
    alter table crm.tasks add constraint tasks_recurrence_interval_valid check (
      recurrence_interval is null
      or (date_trunc('day', recurrence_interval) = recurrence_interval
          and recurrence_interval >= interval '1 day'
          and (extract(day from recurrence_interval) = 0
               or extract(year from recurrence_interval) * 12 + extract(month from recurrence_interval) = 0))) not valid;
    begin
      alter table crm.tasks validate constraint tasks_recurrence_interval_valid;
    exception when check_violation then
      raise notice 'crm.tasks has recurring tasks with intervals in hours or mixed units; tasks_recurrence_interval_valid is left NOT VALID';
    end;
  end if;
end
$$;
create unique index if not exists tasks_recurrence_occurrence_key on crm.tasks (organization_id, recurrence_template_id, occurrence_number);

comment on column crm.tasks.recurrence_interval is 'How often a recurring task repeats: whole days or weeks (e.g. 7 days) or whole months (e.g. 1 month); not mixed.';
-- Filterable: the partial index tasks_recurring_idx (… where is_recurring) serves `isRecurring: true`.
comment on column crm.tasks.is_recurring is E'@isIndexed\nA recurring task is a template: every interval, its next occurrence is created (set false to end the recurrence).';
comment on column crm.tasks.last_triggered_at is E'@behavior -insert -update\nWhen the last occurrence was created from this template.';
comment on column crm.tasks.recurrence_template_id is E'@behavior -insert -update\nThe recurring task this occurrence was created from.';
comment on column crm.tasks.occurrence_number is E'@behavior -insert -update\nWhich occurrence of its template this is (1, 2, …).';
comment on column crm.tasks.recurrence_count is E'@behavior -insert -update\nOn a template: the number of the last occurrence created.';
comment on constraint tasks_recurrence_template_fkey on crm.tasks is E'@fieldName recurrenceTemplate\n@foreignFieldName occurrences';

-- The job writes these as crm_user (under RLS); the API hides them (behaviors above).
grant insert (recurrence_template_id, occurrence_number) on crm.tasks to crm_user;
grant update (last_triggered_at, recurrence_count) on crm.tasks to crm_user;

-- The schedule ---------------------------------------------------------------------------------------
create or replace function crm_jobs.interval_months(step interval) returns int
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select (extract(year from step) * 12 + extract(month from step))::int
$$;

-- How many whole intervals have passed from `anchor` (a local date and time) to the local date
-- `on_date`: the largest n with (anchor + n × step)::date <= on_date (0 before the first). An interval
-- saved before the whole-days-or-months rule counts as its months, else its days, at least one day.
create or replace function crm_jobs.recurrence_periods_elapsed(anchor timestamp, step interval, on_date date) returns int
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case
    when step is null or anchor is null or on_date <= anchor::date then 0
    when crm_jobs.interval_months(step) = 0 then (on_date - anchor::date) / greatest(extract(day from step)::int, 1)
    else (select case when (anchor + m * step)::date > on_date then m - 1 else m end
            from (select ((extract(year from on_date) - extract(year from anchor)) * 12
                          + extract(month from on_date) - extract(month from anchor))::int / crm_jobs.interval_months(step) as m) x)
  end
$$;

-- The job ----------------------------------------------------------------------------------------
-- One statement for the whole organization, run by the tenant job runner as the system principal:
-- RLS limits every table it touches to the organization. Returns the number of occurrences created.
-- payload.asOf (an instant) replaces now() — for tests and for re-running a missed day by hand.
create or replace function crm_jobs.recur_tasks(payload jsonb default '{}'::jsonb) returns bigint
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text := crm_jobs.organization_time_zone();
  as_of timestamptz := coalesce((payload->>'asOf')::timestamptz, now());
  today date := (as_of at time zone tz)::date;
  created bigint;
begin
  with due as (
    select t.*, p.n
      from crm.tasks t
      cross join lateral (
        select crm_jobs.recurrence_periods_elapsed(t.created_at at time zone tz, t.recurrence_interval, today) as n) p
     where t.is_recurring
       and p.n > t.recurrence_count
       and (t.customer_id is null or exists (select 1 from crm.customers c where c.id = t.customer_id))
       and (t.contact_id is null or exists (select 1 from crm.contacts c where c.id = t.contact_id))
       and (t.deal_id is null or exists (select 1 from crm.deals d where d.id = t.deal_id))
       and (t.project_id is null or exists (select 1 from crm.projects x where x.id = t.project_id))
  ), created_rows as (
    insert into crm.tasks (type, title, description, priority, due_at, assignee_id, customer_id, contact_id, deal_id, project_id,
                           estimated_hours, recurrence_template_id, occurrence_number)
    select d.type, d.title, d.description, d.priority,
           ((d.due_at at time zone tz) + d.n * d.recurrence_interval) at time zone tz,
           case when exists (select 1 from crm.organization_memberships m
                              where m.organization_id = d.organization_id and m.user_id = d.assignee_id and m.is_active)
                then d.assignee_id end,
           d.customer_id, d.contact_id, d.deal_id, d.project_id, d.estimated_hours, d.id, d.n
      from due d
    on conflict (organization_id, recurrence_template_id, occurrence_number) do nothing
    returning 1
  ), advanced as (
    update crm.tasks t set recurrence_count = d.n, last_triggered_at = as_of
      from due d
     where t.id = d.id
    returning 1
  )
  select count(*) into created from created_rows;
  return created;
end
$$;
grant execute on function crm_jobs.interval_months(interval), crm_jobs.recurrence_periods_elapsed(timestamp, interval, date),
  crm_jobs.recur_tasks(jsonb) to crm_user;
