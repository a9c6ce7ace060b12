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
