--! Previous: sha1:2674037b343648cbed6bdcfe6839bb0b9206cd1a
--! Hash: sha1:d7461838582b779ff45410e096271105bbc6cccc
--! Message: RFM scoring: settings, one set-based scoring statement, run log, levels from scores; loyalty expiry as a tenant job

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 510-rfm-settings.sql
-- RFM settings: how the rfm:score job scores an organization's customers (docs/rfm.md). One row per
-- organization, created with the organization from the deployment's defaults
-- (crm_private.rfm_defaults, written at start-up from the RFM_DEFAULT_* environment variables);
-- edited with updateRfmSettings (settings:manage).

-- The deployment's defaults for new organizations: one row, replaced by the service at start-up
-- (crm_private.set_rfm_defaults) from its configuration. The values here are the built-in defaults.
create table if not exists crm_private.rfm_defaults (
  singleton boolean primary key default true constraint rfm_defaults_singleton_check check (singleton),
  settings jsonb not null,
  updated_at timestamptz not null default now()
);
alter table crm_private.rfm_defaults enable row level security;
drop policy if exists no_access on crm_private.rfm_defaults;
create policy no_access on crm_private.rfm_defaults using (false);
insert into crm_private.rfm_defaults (settings) values (jsonb_build_object(
  'mode', 'thresholds',
  'recency_breaks', jsonb_build_array(30, 90, 180, 365),
  'frequency_breaks', jsonb_build_array(2, 3, 5, 10),
  'monetary_breaks', jsonb_build_array(100, 250, 500, 1000),
  'recency_weight', 1, 'frequency_weight', 1, 'monetary_weight', 1,
  'lookback_days', 730,
  'counted_statuses', jsonb_build_array('paid', 'partially_paid'),
  'scores_retention_days', 180))
on conflict (singleton) do nothing;

create table if not exists crm.rfm_settings (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  mode text not null default 'thresholds' constraint rfm_settings_mode_check check (mode in ('thresholds', 'quintiles')),
  recency_breaks int[] not null default '{30,90,180,365}',
  frequency_breaks int[] not null default '{2,3,5,10}',
  monetary_breaks numeric(16, 2)[] not null default '{100,250,500,1000}',
  recency_weight numeric(6, 3) not null default 1 constraint rfm_settings_recency_weight_range check (recency_weight between 0 and 100),
  frequency_weight numeric(6, 3) not null default 1 constraint rfm_settings_frequency_weight_range check (frequency_weight between 0 and 100),
  monetary_weight numeric(6, 3) not null default 1 constraint rfm_settings_monetary_weight_range check (monetary_weight between 0 and 100),
  lookback_days int not null default 730 constraint rfm_settings_lookback_days_range check (lookback_days between 1 and 3650),
  counted_statuses text[] not null default '{paid,partially_paid}',
  scores_retention_days int not null default 180 constraint rfm_settings_scores_retention_days_range check (scores_retention_days between 1 and 3650),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint rfm_settings_organization_unique unique (organization_id),
  constraint rfm_settings_organization_id_id_key unique (organization_id, id)
);
comment on table crm.rfm_settings is E'@behavior -insert -update -delete\nHow RFM scoring scores this organization''s customers (docs/rfm.md): thresholds or quintiles, the break-points, the weights, the lookback window, the order statuses that count, and how long per-run scores are kept. Read with rfmSettings (one row) or organization.rfmSetting, changed with updateRfmSettings (settings:manage).';
comment on column crm.rfm_settings.organization_id is E'@behavior -insert -update';
comment on column crm.rfm_settings.mode is 'thresholds: fixed break-points give the 1–5 scores; quintiles: ntile(5) of the organization''s buying customers (ties share the higher score).';
comment on column crm.rfm_settings.recency_breaks is 'Four strictly increasing numbers of days since the last counted order: at most the first → R 5, the second → 4, the third → 3, the fourth → 2, more → 1 (thresholds mode).';
comment on column crm.rfm_settings.frequency_breaks is 'Four strictly increasing order counts: at least the first → F 2, the second → 3, the third → 4, the fourth → 5 (thresholds mode).';
comment on column crm.rfm_settings.monetary_breaks is 'Four strictly increasing net amounts: at least the first → M 2, the second → 3, the third → 4, the fourth → 5 (thresholds mode).';
comment on column crm.rfm_settings.recency_weight is 'Weight of R in the score (≥ 0; the weights are not all 0). The score is the weighted mean of R, F and M.';
comment on column crm.rfm_settings.frequency_weight is 'Weight of F in the score.';
comment on column crm.rfm_settings.monetary_weight is 'Weight of M in the score.';
comment on column crm.rfm_settings.lookback_days is 'Only orders placed in the last this many days count.';
comment on column crm.rfm_settings.counted_statuses is 'Order statuses that count: a non-empty subset of pending, partially_paid, paid (cancelled and refunded orders never count; partial refunds are netted).';
comment on column crm.rfm_settings.scores_retention_days is 'Per-run scores (rfmScores) and runs older than this many days are deleted by the scoring job.';

create index if not exists rfm_settings_organization_id_idx on crm.rfm_settings (organization_id);

alter table crm.rfm_settings enable row level security;
drop policy if exists rfm_settings_select on crm.rfm_settings;
create policy rfm_settings_select on crm.rfm_settings for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists rfm_settings_update on crm.rfm_settings;
create policy rfm_settings_update on crm.rfm_settings for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));

grant select on crm.rfm_settings to crm_user;
grant update (mode, recency_breaks, frequency_breaks, monetary_breaks, recency_weight, frequency_weight, monetary_weight,
              lookback_days, counted_statuses, scores_retention_days) on crm.rfm_settings to crm_user;

-- Validation (a trigger, so every writer gets the same VALIDATION error with the field) --------------
create or replace function crm_private.rfm_breaks_valid(breaks numeric[]) returns boolean
  language sql immutable
  set search_path = pg_catalog, pg_temp
as $$
  select cardinality(breaks) = 4 and array_ndims(breaks) = 1 and array_position(breaks, null) is null
     and breaks[1] >= 0 and breaks[1] < breaks[2] and breaks[2] < breaks[3] and breaks[3] < breaks[4]
$$;

-- Every rule of a settings row, with the field at fault (the trigger and the start-up defaults use it).
create or replace function crm_private.rfm_settings_check(s crm.rfm_settings) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if s.mode is null or s.mode not in ('thresholds', 'quintiles') then
    raise exception 'mode must be thresholds or quintiles.' using errcode = 'CRVAL', column = 'mode';
  end if;
  if s.recency_breaks is null or not crm_private.rfm_breaks_valid(s.recency_breaks::numeric[]) then
    raise exception 'recencyBreaks must be four strictly increasing numbers of days (0 or more), e.g. [30, 90, 180, 365].'
      using errcode = 'CRVAL', column = 'recency_breaks';
  end if;
  if s.frequency_breaks is null or not crm_private.rfm_breaks_valid(s.frequency_breaks::numeric[]) or s.frequency_breaks[1] < 1 then
    raise exception 'frequencyBreaks must be four strictly increasing order counts (1 or more), e.g. [2, 3, 5, 10].'
      using errcode = 'CRVAL', column = 'frequency_breaks';
  end if;
  if s.monetary_breaks is null or not crm_private.rfm_breaks_valid(s.monetary_breaks::numeric[]) then
    raise exception 'monetaryBreaks must be four strictly increasing amounts (0 or more), e.g. [100, 250, 500, 1000].'
      using errcode = 'CRVAL', column = 'monetary_breaks';
  end if;
  if s.recency_weight is null or s.recency_weight < 0 then
    raise exception 'recencyWeight must be 0 or more.' using errcode = 'CRVAL', column = 'recency_weight';
  end if;
  if s.frequency_weight is null or s.frequency_weight < 0 then
    raise exception 'frequencyWeight must be 0 or more.' using errcode = 'CRVAL', column = 'frequency_weight';
  end if;
  if s.monetary_weight is null or s.monetary_weight < 0 then
    raise exception 'monetaryWeight must be 0 or more.' using errcode = 'CRVAL', column = 'monetary_weight';
  end if;
  if s.recency_weight + s.frequency_weight + s.monetary_weight <= 0 then
    raise exception 'The weights cannot all be 0: give recency, frequency or monetary a weight above 0.' using errcode = 'CRVAL', column = 'recency_weight';
  end if;
  if s.lookback_days is null or s.lookback_days not between 1 and 3650 then
    raise exception 'lookbackDays must be between 1 and 3650.' using errcode = 'CRVAL', column = 'lookback_days';
  end if;
  if s.scores_retention_days is null or s.scores_retention_days not between 1 and 3650 then
    raise exception 'scoresRetentionDays must be between 1 and 3650.' using errcode = 'CRVAL', column = 'scores_retention_days';
  end if;
  if s.counted_statuses is null or cardinality(s.counted_statuses) = 0 or array_position(s.counted_statuses, null) is not null
     or not s.counted_statuses <@ array['pending', 'partially_paid', 'paid'] then
    raise exception 'countedStatuses must be one or more of pending, partially_paid and paid (cancelled and refunded orders never count).'
      using errcode = 'CRVAL', column = 'counted_statuses';
  end if;
end
$$;

create or replace function crm_private.tg_rfm_settings_valid() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.rfm_settings_check(new);
  new.counted_statuses := array(select distinct x from unnest(new.counted_statuses) x order by x);
  return new;
end
$$;
drop trigger if exists _110_valid on crm.rfm_settings;
create trigger _110_valid before insert or update on crm.rfm_settings
  for each row execute function crm_private.tg_rfm_settings_valid();
drop trigger if exists _100_updated_at on crm.rfm_settings;
create trigger _100_updated_at before update on crm.rfm_settings for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.rfm_settings;
create trigger _800_audit after insert or update or delete on crm.rfm_settings for each row execute function crm_private.tg_audit();

-- Defaults for every organization ---------------------------------------------------------------------
create or replace function crm_private.seed_rfm_settings(org uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  d jsonb := coalesce((select settings from crm_private.rfm_defaults), '{}'::jsonb);
begin
  insert into crm.rfm_settings (organization_id, mode, recency_breaks, frequency_breaks, monetary_breaks,
                                recency_weight, frequency_weight, monetary_weight, lookback_days, counted_statuses,
                                scores_retention_days)
  values (org,
          coalesce(d->>'mode', 'thresholds'),
          coalesce((select array_agg(x::int order by i) from jsonb_array_elements_text(d->'recency_breaks') with ordinality e (x, i)), '{30,90,180,365}'),
          coalesce((select array_agg(x::int order by i) from jsonb_array_elements_text(d->'frequency_breaks') with ordinality e (x, i)), '{2,3,5,10}'),
          coalesce((select array_agg(x::numeric order by i) from jsonb_array_elements_text(d->'monetary_breaks') with ordinality e (x, i)), '{100,250,500,1000}'),
          coalesce((d->>'recency_weight')::numeric, 1),
          coalesce((d->>'frequency_weight')::numeric, 1),
          coalesce((d->>'monetary_weight')::numeric, 1),
          coalesce((d->>'lookback_days')::int, 730),
          coalesce((select array_agg(x) from jsonb_array_elements_text(d->'counted_statuses') e (x)), '{paid,partially_paid}'),
          coalesce((d->>'scores_retention_days')::int, 180))
  on conflict (organization_id) do nothing;
end
$$;
create or replace function crm_private.tg_seed_rfm_settings() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_rfm_settings(new.id);
  return null;
end
$$;
drop trigger if exists _540_seed_rfm_settings on crm.organizations;
create trigger _540_seed_rfm_settings after insert on crm.organizations
  for each row execute function crm_private.tg_seed_rfm_settings();

-- The service writes its configured defaults at start-up (src/service.ts); they are checked like a
-- settings row, so a bad environment variable stops the start with the field named.
create or replace function crm_private.set_rfm_defaults(settings jsonb) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.rfm_settings_check(jsonb_populate_record(null::crm.rfm_settings, settings));
  insert into crm_private.rfm_defaults (singleton, settings) values (true, settings)
  on conflict (singleton) do update set settings = excluded.settings, updated_at = now()
   where crm_private.rfm_defaults.settings is distinct from excluded.settings;
end
$$;

select crm_private.seed_rfm_settings(id) from crm.organizations;

-- API --------------------------------------------------------------------------------------------------
-- rfmSettings is the table's list (one row: the organization's); organization.rfmSetting the same row.
drop function if exists crm.current_rfm_settings();

-- updateRfmSettings: change any of the settings (the others are kept); settings:manage.
create or replace function crm.update_rfm_settings(
  mode text default null,
  recency_breaks int[] default null,
  frequency_breaks int[] default null,
  monetary_breaks numeric[] default null,
  recency_weight numeric default null,
  frequency_weight numeric default null,
  monetary_weight numeric default null,
  lookback_days int default null,
  counted_statuses text[] default null,
  scores_retention_days int default null
) returns crm.rfm_settings
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  s crm.rfm_settings;
begin
  if not crm.has_permission('settings:manage') then
    raise exception 'Changing the RFM settings needs settings:manage.' using errcode = 'CRFBD';
  end if;
  update crm.rfm_settings x set
    mode = coalesce(update_rfm_settings.mode, x.mode),
    recency_breaks = coalesce(update_rfm_settings.recency_breaks, x.recency_breaks),
    frequency_breaks = coalesce(update_rfm_settings.frequency_breaks, x.frequency_breaks),
    monetary_breaks = coalesce(update_rfm_settings.monetary_breaks, x.monetary_breaks),
    recency_weight = coalesce(update_rfm_settings.recency_weight, x.recency_weight),
    frequency_weight = coalesce(update_rfm_settings.frequency_weight, x.frequency_weight),
    monetary_weight = coalesce(update_rfm_settings.monetary_weight, x.monetary_weight),
    lookback_days = coalesce(update_rfm_settings.lookback_days, x.lookback_days),
    counted_statuses = coalesce(update_rfm_settings.counted_statuses, x.counted_statuses),
    scores_retention_days = coalesce(update_rfm_settings.scores_retention_days, x.scores_retention_days)
   where x.organization_id = crm.current_org_id()
  returning * into s;
  if s.id is null then
    raise exception 'The organization has no RFM settings.' using errcode = 'CRNFD';
  end if;
  return s;
end
$$;
comment on function crm.update_rfm_settings(text, int[], int[], numeric[], numeric, numeric, numeric, int, text[], int) is
  'Change the organization''s RFM settings (settings:manage); fields left out keep their value. Takes effect at the next run (recalculateRfm runs one now).';
grant execute on function crm.update_rfm_settings(text, int[], int[], numeric[], numeric, numeric, numeric, int, text[], int) to crm_user;

--! split: 520-rfm-scoring.sql
-- RFM scoring (docs/rfm.md): the rfm:score tenant job scores every customer of an organization in one
-- set-based statement (crm_jobs.score_rfm), moves levels through customer_levels.minimum_score
-- (hand-set levels are kept), and logs each run (crm.rfm_runs) and each customer's scores in it
-- (crm.rfm_scores, kept scores_retention_days). recalculateRfm queues a run now; rfmDistribution
-- counts customers per R×F cell and per level.

-- Runs --------------------------------------------------------------------------------------------------
create table if not exists crm.rfm_runs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  reason text not null default 'scheduled' constraint rfm_runs_reason_check check (reason in ('scheduled', 'manual')),
  status text not null default 'queued' constraint rfm_runs_status_check check (status in ('queued', 'completed')),
  requested_by uuid references crm.users (id) on delete set null,
  requested_at timestamptz not null default now(),
  job_run_id uuid,
  as_of timestamptz,
  finished_at timestamptz,
  mode text,
  settings jsonb,
  customers_scored int constraint rfm_runs_customers_scored_range check (customers_scored >= 0),
  levels_changed int constraint rfm_runs_levels_changed_range check (levels_changed >= 0),
  constraint rfm_runs_organization_id_id_key unique (organization_id, id),
  constraint rfm_runs_job_run_fkey foreign key (organization_id, job_run_id)
    references crm.job_runs (organization_id, id) on delete set null (job_run_id),
  constraint rfm_runs_finished_at_valid check ((status = 'completed') = (finished_at is not null))
);
create index if not exists rfm_runs_organization_id_requested_at_idx on crm.rfm_runs (organization_id, requested_at desc);
create index if not exists rfm_runs_organization_id_status_idx on crm.rfm_runs (organization_id, status);
create index if not exists rfm_runs_organization_id_job_run_id_idx on crm.rfm_runs (organization_id, job_run_id);
create index if not exists rfm_runs_requested_by_idx on crm.rfm_runs (requested_by);
comment on table crm.rfm_runs is E'@behavior -insert -update -delete\nOne RFM scoring of the organization: queued by recalculateRfm or the daily schedule, completed by the rfm:score job (jobRun has the attempt, its outcome and error). Readable with jobs:read or settings:manage.';
comment on column crm.rfm_runs.reason is 'scheduled (the daily run) or manual (recalculateRfm).';
comment on column crm.rfm_runs.status is 'queued until the job has scored the organization, then completed.';
comment on column crm.rfm_runs.as_of is 'The instant the scores were computed for.';
comment on column crm.rfm_runs.settings is 'The settings the run used.';
comment on column crm.rfm_runs.customers_scored is 'Customers scored by the run.';
comment on column crm.rfm_runs.levels_changed is 'Customers whose level the run changed.';
comment on constraint rfm_runs_job_run_fkey on crm.rfm_runs is E'@fieldName jobRun\n@foreignFieldName rfmRuns';
comment on constraint rfm_runs_requested_by_fkey on crm.rfm_runs is E'@fieldName requester\n@foreignFieldName rfmRuns';

-- Per-run scores ------------------------------------------------------------------------------------------
create table if not exists crm.rfm_scores (
  id bigint generated always as identity primary key,
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  run_id uuid not null,
  customer_id uuid not null,
  recency_score smallint not null constraint rfm_scores_recency_score_range check (recency_score between 1 and 5),
  frequency_score smallint not null constraint rfm_scores_frequency_score_range check (frequency_score between 1 and 5),
  monetary_score smallint not null constraint rfm_scores_monetary_score_range check (monetary_score between 1 and 5),
  score numeric(5, 2) not null constraint rfm_scores_score_range check (score between 0 and 5),
  recency_days int,
  order_count int not null default 0,
  monetary_value numeric(16, 2) not null default 0,
  level_before_id uuid,
  level_after_id uuid,
  scored_at timestamptz not null default now(),
  constraint rfm_scores_run_fkey foreign key (organization_id, run_id) references crm.rfm_runs (organization_id, id) on delete cascade,
  constraint rfm_scores_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint rfm_scores_level_before_fkey foreign key (organization_id, level_before_id)
    references crm.customer_levels (organization_id, id) on delete set null (level_before_id),
  constraint rfm_scores_level_after_fkey foreign key (organization_id, level_after_id)
    references crm.customer_levels (organization_id, id) on delete set null (level_after_id)
);
create index if not exists rfm_scores_organization_id_run_id_idx on crm.rfm_scores (organization_id, run_id);
create index if not exists rfm_scores_organization_id_customer_id_idx on crm.rfm_scores (organization_id, customer_id, scored_at);
create index if not exists rfm_scores_organization_id_level_before_id_idx on crm.rfm_scores (organization_id, level_before_id);
create index if not exists rfm_scores_organization_id_level_after_id_idx on crm.rfm_scores (organization_id, level_after_id);
comment on table crm.rfm_scores is E'@behavior -insert -update -delete\nEvery customer''s R, F, M, score and level before and after, per RFM run (kept rfmSettings.scoresRetentionDays). Visible with the customer.';
comment on constraint rfm_scores_run_fkey on crm.rfm_scores is E'@fieldName run\n@foreignFieldName rfmScores';
comment on constraint rfm_scores_customer_fkey on crm.rfm_scores is E'@fieldName customer\n@foreignFieldName rfmScores';
comment on constraint rfm_scores_level_before_fkey on crm.rfm_scores is E'@fieldName levelBefore\n@foreignFieldName rfmScoresBefore';
comment on constraint rfm_scores_level_after_fkey on crm.rfm_scores is E'@fieldName levelAfter\n@foreignFieldName rfmScoresAfter';

-- Row-level security ----------------------------------------------------------------------------------------
-- Runs: read with jobs:read or settings:manage; written by the organization's system principal (the
-- job) only — recalculateRfm queues a run as the owner after its own permission check.
alter table crm.rfm_runs enable row level security;
alter table crm.rfm_scores enable row level security;

drop policy if exists rfm_runs_select on crm.rfm_runs;
create policy rfm_runs_select on crm.rfm_runs for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('jobs:read')) or (select crm.has_permission('settings:manage'))));
drop policy if exists rfm_runs_insert on crm.rfm_runs;
create policy rfm_runs_insert on crm.rfm_runs for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));
drop policy if exists rfm_runs_update on crm.rfm_runs;
create policy rfm_runs_update on crm.rfm_runs for update
  using (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id))
  with check (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));
drop policy if exists rfm_runs_delete on crm.rfm_runs;
create policy rfm_runs_delete on crm.rfm_runs for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));

-- Scores: visible with their customer (the customers policy decides); written by the job only.
drop policy if exists rfm_scores_select on crm.rfm_scores;
create policy rfm_scores_select on crm.rfm_scores for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = rfm_scores.customer_id));
drop policy if exists rfm_scores_insert on crm.rfm_scores;
create policy rfm_scores_insert on crm.rfm_scores for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));
drop policy if exists rfm_scores_delete on crm.rfm_scores;
create policy rfm_scores_delete on crm.rfm_scores for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));

grant select on crm.rfm_runs, crm.rfm_scores to crm_user;
grant insert (reason, status, requested_by, job_run_id, as_of, finished_at, mode, settings, customers_scored, levels_changed),
      update (status, job_run_id, as_of, finished_at, mode, settings, customers_scored, levels_changed), delete
  on crm.rfm_runs to crm_user;
grant insert (run_id, customer_id, recency_score, frequency_score, monetary_score, score, recency_days, order_count,
              monetary_value, level_before_id, level_after_id, scored_at), delete
  on crm.rfm_scores to crm_user;

select crm_private.guard_references('crm.rfm_runs');
-- The reference check (a visible row for every foreign key) is skipped for the organization's system
-- principal: it sees every row of its organization, and the composite keys keep it inside it. Without
-- this the scoring of 50,000 customers spent most of its time in that per-row check.
drop trigger if exists _950_references_visible on crm.rfm_scores;
create trigger _950_references_visible before insert or update on crm.rfm_scores for each row
  when (crm.current_user_id() is distinct from crm.system_principal_id(new.organization_id))
  execute function crm_private.tg_references_visible();
drop trigger if exists _950_references_visible on crm.customers;
create trigger _950_references_visible before insert or update on crm.customers for each row
  when (crm.current_user_id() is distinct from crm.system_principal_id(new.organization_id))
  execute function crm_private.tg_references_visible();

-- Customers: the job writes the RFM columns and the level as crm_user, under the organization's RLS.
-- The API does not offer these columns, and the guard refuses them to everyone but the system
-- principal (setCustomerLevel changes the level as the owner, after its own checks).
grant update (rfm_recency_score, rfm_frequency_score, rfm_monetary_score, rfm_score, rfm_recency_days, rfm_order_count,
              rfm_monetary_value, rfm_scored_at, level_id) on crm.customers to crm_user;
comment on column crm.customers.rfm_recency_score is E'@behavior -insert -update\nRFM recency score, 1 (long ago, or no counted order) to 5 (recent); null until the first rfm:score run.';
comment on column crm.customers.rfm_frequency_score is E'@behavior -insert -update\nRFM frequency score, 1 (few or no orders) to 5 (many).';
comment on column crm.customers.rfm_monetary_score is E'@behavior -insert -update\nRFM monetary score, 1 (little or nothing spent) to 5 (much).';
comment on column crm.customers.rfm_score is E'@behavior -insert -update\nWeighted RFM score (1–5; 1.00 for a customer without counted orders), mapped to a customer level through customerLevels.minimumScore.';
comment on column crm.customers.rfm_recency_days is E'@behavior -insert -update\nDays since the last counted order when last scored (null: no counted order in the lookback window).';
comment on column crm.customers.rfm_order_count is E'@behavior -insert -update\nCounted orders in the lookback window when last scored (0: none).';
comment on column crm.customers.rfm_monetary_value is E'@behavior -insert -update\nNet amount (paid minus refunded) of the counted orders in the lookback window when last scored (0: none).';
comment on column crm.customers.rfm_scored_at is E'@behavior -insert -update\nWhen rfm:score last scored this customer.';

create or replace function crm_private.tg_customer_rfm_guard() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if current_user <> 'crm_user' or crm.current_user_id() = crm.system_principal_id(new.organization_id) then
    return new;
  end if;
  if (new.rfm_recency_score, new.rfm_frequency_score, new.rfm_monetary_score, new.rfm_score, new.rfm_recency_days,
      new.rfm_order_count, new.rfm_monetary_value, new.rfm_scored_at)
     is distinct from
     (old.rfm_recency_score, old.rfm_frequency_score, old.rfm_monetary_score, old.rfm_score, old.rfm_recency_days,
      old.rfm_order_count, old.rfm_monetary_value, old.rfm_scored_at) then
    raise exception 'RFM scores are written by the scoring job.' using errcode = 'CRFBD', column = 'rfm_score';
  end if;
  if new.level_id is distinct from old.level_id then
    raise exception 'Change a customer''s level with setCustomerLevel.' using errcode = 'CRFBD', column = 'level_id';
  end if;
  return new;
end
$$;
drop trigger if exists _175_rfm_guard on crm.customers;
create trigger _175_rfm_guard before update of rfm_recency_score, rfm_frequency_score, rfm_monetary_score, rfm_score,
  rfm_recency_days, rfm_order_count, rfm_monetary_value, rfm_scored_at, level_id on crm.customers
  for each row execute function crm_private.tg_customer_rfm_guard();

-- The nightly scoring writes every customer row of the organization. Those writes are not edits of
-- the customer: while the scoring statement runs (cairn.rfm_scoring = on, set by crm_jobs.score_rfm,
-- and only for the organization's system principal) the customers' triggers that follow edits stay
-- quiet — updated_at is not moved, no audit entry unless the level changed (the audit trigger leaves
-- the RFM columns out anyway), no live-subscription or webhook event per customer, no lead-scoring
-- check. Level changes still go through _115_level_stamp, _310_level_change (history, promotion
-- event) and the audit log; scores are in crm.rfm_scores per run.
create or replace function crm_jobs.rfm_scoring() returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(current_setting('cairn.rfm_scoring', true), '') = 'on'
     and crm.current_user_id() is not distinct from crm.system_principal_id(crm.current_org_id())
$$;
grant execute on function crm_jobs.rfm_scoring() to crm_user;

drop trigger if exists _100_updated_at on crm.customers;
create trigger _100_updated_at before update on crm.customers for each row
  when (not crm_jobs.rfm_scoring()) execute function crm_private.tg_set_updated_at();
drop trigger if exists _170_lead_score on crm.customers;
create trigger _170_lead_score before insert or update on crm.customers for each row
  when (not crm_jobs.rfm_scoring()) execute function crm_private.tg_lead_score_guard();
drop trigger if exists _800_audit on crm.customers;
create trigger _800_audit after update on crm.customers for each row
  when (not crm_jobs.rfm_scoring() or old.level_id is distinct from new.level_id)
  execute function crm_private.tg_audit('search_vector', 'rfm_recency_score', 'rfm_frequency_score', 'rfm_monetary_score',
    'rfm_score', 'rfm_recency_days', 'rfm_order_count', 'rfm_monetary_value', 'rfm_scored_at');
drop trigger if exists _800_audit_delete on crm.customers;
create trigger _800_audit_delete after delete on crm.customers for each row
  execute function crm_private.tg_audit('search_vector', 'rfm_recency_score', 'rfm_frequency_score', 'rfm_monetary_score',
    'rfm_score', 'rfm_recency_days', 'rfm_order_count', 'rfm_monetary_value', 'rfm_scored_at');
drop trigger if exists _800_audit_insert on crm.customers;
create trigger _800_audit_insert after insert on crm.customers referencing new table as new_rows
  for each statement execute function crm_private.tg_audit_inserted('search_vector', 'rfm_recency_score', 'rfm_frequency_score',
    'rfm_monetary_score', 'rfm_score', 'rfm_recency_days', 'rfm_order_count', 'rfm_monetary_value', 'rfm_scored_at');
drop trigger if exists _600_lead_scoring_update on crm.customers;
create trigger _600_lead_scoring_update after update on crm.customers referencing old table as old_rows new table as new_rows
  for each statement when (not crm_jobs.rfm_scoring()) execute function crm_private.tg_lead_subject_changed('customer');
drop trigger if exists _700_realtime_update on crm.customers;
create trigger _700_realtime_update after update on crm.customers referencing old table as old_rows new table as new_rows
  for each statement when (not crm_jobs.rfm_scoring()) execute function crm_private.tg_realtime_changes('customers');
drop trigger if exists _710_webhooks_update on crm.customers;
create trigger _710_webhooks_update after update on crm.customers referencing old table as old_rows new table as new_rows
  for each statement when (not crm_jobs.rfm_scoring()) execute function crm_private.tg_webhook_outbox('customer');

-- Scoring ----------------------------------------------------------------------------------------------------
-- R, F, M for one value under the thresholds rules (docs/rfm.md).
create or replace function crm_jobs.rfm_threshold_score(v numeric, breaks numeric[], higher_is_better boolean) returns smallint
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select (case
    when v is null then 1
    when higher_is_better then 1 + (v >= breaks[1])::int + (v >= breaks[2])::int + (v >= breaks[3])::int + (v >= breaks[4])::int
    else 1 + (v <= breaks[1])::int + (v <= breaks[2])::int + (v <= breaks[3])::int + (v <= breaks[4])::int
  end)::smallint
$$;

-- The rfm:score job. Payload: {"rfmRunId"?: a queued run (recalculateRfm), "asOf"?: the instant to score
-- for (tests), "jobRunId"?: the crm.job_runs row (set by the worker task)}. Returns the customers scored.
create or replace function crm_jobs.score_rfm(payload jsonb default '{}'::jsonb) returns bigint
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  tz text := crm_jobs.organization_time_zone();
  t_now timestamptz := coalesce((payload->>'asOf')::timestamptz, now());
  s crm.rfm_settings;
  run uuid;
  n_scored bigint;
  n_changed bigint;
  w_sum numeric;
begin
  select * into s from crm.rfm_settings x where x.organization_id = org;
  if s.id is null then
    raise exception 'The organization has no RFM settings.' using errcode = 'CRNFD';
  end if;
  w_sum := s.recency_weight + s.frequency_weight + s.monetary_weight;

  -- The run: the one recalculateRfm queued, or a new (scheduled) one.
  update crm.rfm_runs r set as_of = t_now
   where r.id = nullif(payload->>'rfmRunId', '')::uuid and r.status = 'queued'
  returning r.id into run;
  if run is null then
    insert into crm.rfm_runs (reason, status, as_of) values (coalesce(nullif(payload->>'reason', ''), 'scheduled'), 'queued', t_now)
    returning id into run;
  end if;

  perform set_config('cairn.level_change_source', 'rfm', true),
          set_config('cairn.level_change_reason', format('RFM score (%s)', s.mode), true),
          set_config('cairn.rfm_scoring', 'on', true);

  -- One statement for the whole organization: aggregate the counted orders per customer, score them
  -- (fixed break-points or quintiles), map the score to a level, update the customers and log the run.
  with lv as materialized (
    select l.id, l.rank, l.minimum_score from crm.customer_levels l
  ), agg as (
    select o.customer_id,
           (t_now at time zone tz)::date - max(o.ordered_at at time zone tz)::date as recency_days,
           count(*)::int as order_count,
           sum(o.paid_amount - o.refunded_amount) as monetary_value
      from crm.orders o
     where o.status = any (s.counted_statuses)
       and o.ordered_at > t_now - make_interval(days => s.lookback_days)
       and o.ordered_at <= t_now
     group by o.customer_id
  ), tiles as (
    select a.*,
           ntile(5) over (order by a.recency_days desc, a.customer_id) as r_tile,
           ntile(5) over (order by a.order_count, a.customer_id) as f_tile,
           ntile(5) over (order by a.monetary_value, a.customer_id) as m_tile
      from agg a
  ), q as (
    -- Quintiles: customers with the same value share the highest tile among them (ceil(5 × cume_dist)).
    select t.customer_id, t.recency_days, t.order_count, t.monetary_value,
           case when s.mode = 'quintiles' then max(t.r_tile) over (partition by t.recency_days)
                else crm_jobs.rfm_threshold_score(t.recency_days, s.recency_breaks::numeric[], false) end as r,
           case when s.mode = 'quintiles' then max(t.f_tile) over (partition by t.order_count)
                else crm_jobs.rfm_threshold_score(t.order_count, s.frequency_breaks::numeric[], true) end as f,
           case when s.mode = 'quintiles' then max(t.m_tile) over (partition by t.monetary_value)
                else crm_jobs.rfm_threshold_score(t.monetary_value, s.monetary_breaks::numeric[], true) end as m
      from tiles t
  ), scored as (
    select c.id, c.level_id as level_before, c.level_set_by_hand,
           coalesce(q.r, 1)::smallint as r, coalesce(q.f, 1)::smallint as f, coalesce(q.m, 1)::smallint as m,
           q.recency_days, coalesce(q.order_count, 0) as order_count,
           coalesce(q.monetary_value, 0) as monetary_value,
           round((s.recency_weight * coalesce(q.r, 1) + s.frequency_weight * coalesce(q.f, 1) + s.monetary_weight * coalesce(q.m, 1)) / w_sum, 2) as score
      from crm.customers c
      left join q on q.customer_id = c.id
     where c.deleted_at is null
  ), mapped as (
    select x.*,
           case when x.level_set_by_hand then x.level_before
                else coalesce((select lv.id from lv where lv.minimum_score <= x.score order by lv.rank desc limit 1), x.level_before)
           end as level_after
      from scored x
  ), upd as (
    update crm.customers c
       set rfm_recency_score = m.r, rfm_frequency_score = m.f, rfm_monetary_score = m.m, rfm_score = m.score,
           rfm_recency_days = m.recency_days, rfm_order_count = m.order_count, rfm_monetary_value = m.monetary_value,
           rfm_scored_at = t_now, level_id = m.level_after
      from mapped m
     where c.id = m.id
    returning (m.level_after is distinct from m.level_before) as level_changed
  ), logged as (
    insert into crm.rfm_scores (run_id, customer_id, recency_score, frequency_score, monetary_score, score, recency_days,
                                order_count, monetary_value, level_before_id, level_after_id, scored_at)
    select run, m.id, m.r, m.f, m.m, m.score, m.recency_days, m.order_count, m.monetary_value, m.level_before, m.level_after, t_now
      from mapped m
  )
  select count(*), count(*) filter (where level_changed) into n_scored, n_changed from upd;

  perform set_config('cairn.level_change_source', '', true), set_config('cairn.level_change_reason', '', true),
          set_config('cairn.rfm_scoring', '', true);

  update crm.rfm_runs r
     set status = 'completed', finished_at = clock_timestamp(), customers_scored = n_scored, levels_changed = n_changed,
         mode = s.mode, job_run_id = nullif(payload->>'jobRunId', '')::uuid,
         settings = jsonb_build_object('mode', s.mode, 'recencyBreaks', s.recency_breaks, 'frequencyBreaks', s.frequency_breaks,
           'monetaryBreaks', s.monetary_breaks, 'weights', jsonb_build_array(s.recency_weight, s.frequency_weight, s.monetary_weight),
           'lookbackDays', s.lookback_days, 'countedStatuses', s.counted_statuses)
   where r.id = run;

  -- Retention: runs (and their scores) scored longer ago than the organization keeps them.
  delete from crm.rfm_runs r
   where r.status = 'completed' and r.as_of < t_now - make_interval(days => s.scores_retention_days);

  return n_scored;
end
$$;
grant execute on function crm_jobs.rfm_threshold_score(numeric, numeric[], boolean), crm_jobs.score_rfm(jsonb) to crm_user;

-- API ----------------------------------------------------------------------------------------------------------
-- recalculateRfm: queue a run now (settings:manage). A run already queued is returned instead of a
-- second one; the job key keeps one job per organization either way.
create or replace function crm.recalculate_rfm() returns crm.rfm_runs
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  r crm.rfm_runs;
begin
  perform crm_private.require_permission('settings:manage');
  select * into r from crm.rfm_runs x where x.organization_id = org and x.status = 'queued' order by x.requested_at desc limit 1;
  if r.id is null then
    insert into crm.rfm_runs (organization_id, reason, status, requested_by)
    values (org, 'manual', 'queued', crm.current_user_id())
    returning * into r;
  end if;
  perform crm_private.enqueue_tenant_job('rfm:score', org, jsonb_build_object('rfmRunId', r.id, 'reason', 'manual'));
  return r;
end
$$;
comment on function crm.recalculate_rfm() is 'Score every customer of the organization now (settings:manage): queues the rfm:score job and returns its run (status queued; completed with its counts once the job has run, usually within seconds).';
grant execute on function crm.recalculate_rfm() to crm_user;

-- rfmDistribution: customers per R×F cell and per level, under the caller's visibility.
drop type if exists crm.rfm_distribution cascade;
drop type if exists crm.rfm_cell cascade;
drop type if exists crm.rfm_level_count cascade;
create type crm.rfm_cell as (recency_score smallint, frequency_score smallint, customers bigint, average_score numeric, average_monetary_value numeric);
create type crm.rfm_level_count as (level_id uuid, name text, rank int, minimum_score numeric, customers bigint);
create type crm.rfm_distribution as (
  scored_customers bigint,
  unscored_customers bigint,
  last_scored_at timestamptz,
  cells crm.rfm_cell[],
  levels crm.rfm_level_count[]
);
comment on type crm.rfm_distribution is 'Customers by RFM score: every R×F cell (25, empty ones with 0) and every level.';
comment on column crm.rfm_distribution.cells is E'@notNull\nThe 25 R×F cells, R then F ascending.';
comment on column crm.rfm_distribution.levels is E'@notNull\nCustomers per level, lowest rank first (levelId null: customers without a level).';

create or replace function crm.rfm_distribution() returns crm.rfm_distribution
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with c as materialized (
    select x.rfm_recency_score as r, x.rfm_frequency_score as f, x.rfm_score, x.rfm_monetary_value, x.level_id, x.rfm_scored_at
      from crm.customers x where x.deleted_at is null
  )
  select
    (select count(*) from c where c.rfm_scored_at is not null),
    (select count(*) from c where c.rfm_scored_at is null),
    (select max(c.rfm_scored_at) from c),
    (select array_agg(row(g.r, g.f, coalesce(n.customers, 0), n.avg_score, n.avg_monetary)::crm.rfm_cell order by g.r, g.f)
       from generate_series(1, 5) gr (r) cross join generate_series(1, 5) gf (f)
       cross join lateral (select gr.r::smallint as r, gf.f::smallint as f) g
       left join (select c.r, c.f, count(*) as customers, round(avg(c.rfm_score), 2) as avg_score,
                         round(avg(c.rfm_monetary_value), 2) as avg_monetary
                    from c where c.r is not null group by c.r, c.f) n on n.r = g.r and n.f = g.f),
    (select coalesce(array_agg(row(l.id, l.name::text, l.rank, l.minimum_score, coalesce(n.customers, 0))::crm.rfm_level_count
                               order by l.rank nulls last), '{}')
       from (select id, name, rank, minimum_score from crm.customer_levels
             union all select null, null, null, null where exists (select 1 from c where c.level_id is null)) l
       left join (select c.level_id, count(*) as customers from c group by c.level_id) n on n.level_id is not distinct from l.id)
$$;
comment on function crm.rfm_distribution() is 'How the customers you can see are spread over the RFM scores: per R×F cell and per level (docs/rfm.md).';
grant execute on function crm.rfm_distribution() to crm_user;

--! split: 530-loyalty-expire-tenant-job.sql
-- loyalty:expire moves onto the tenant job framework (worker/tenant/registry.ts): one run per
-- organization at its local hour, as its system principal, recorded in crm.job_runs. The work is
-- the same statement as before (crm_private.expire_loyalty_points, which appends to the append-only
-- ledger under the organization's loyalty lock); the job reaches it through a SECURITY DEFINER
-- entry point that only the organization's system principal may call, for its own organization.
create or replace function crm.expire_loyalty_points_as_job(at timestamptz default now()) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
begin
  if org is null or crm.current_user_id() is distinct from crm.system_principal_id(org) then
    raise exception 'Points are expired by the organization''s loyalty:expire job.' using errcode = 'CRFBD';
  end if;
  return crm_private.expire_loyalty_points(org, coalesce(at, now()));
end
$$;
comment on function crm.expire_loyalty_points_as_job(timestamptz) is E'@behavior -*\nThe loyalty:expire tenant job''s entry point (its system principal only).';
revoke all on function crm.expire_loyalty_points_as_job(timestamptz) from public;
grant execute on function crm.expire_loyalty_points_as_job(timestamptz) to crm_user;

-- The tenant job: payload {"asOf"?: the instant to expire up to (tests)}; returns the customers whose
-- points expired (rowsAffected).
create or replace function crm_jobs.expire_points(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.expire_loyalty_points_as_job(coalesce((payload->>'asOf')::timestamptz, now()))::bigint
$$;
grant execute on function crm_jobs.expire_points(jsonb) to crm_user;

--! split: 990-client-guards.sql
-- Tables added since the client guard loop last ran get their restrictive `<table>_client_guard`
-- policy (see crm_private.apply_client_guards()).
select crm_private.apply_client_guards();
