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
