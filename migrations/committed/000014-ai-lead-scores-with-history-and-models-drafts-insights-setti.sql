--! Previous: sha1:0b223f54361ebc4513cbc7e9833f16f5cba582e4
--! Hash: sha1:0ed6c76d54c2a09b0e9a139378c51b5908773443
--! Message: ai: lead scores with history and models, drafts, insights, settings and usage

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 600-ai-settings.sql
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

--! split: 610-lead-scores.sql
-- Lead scores on customers and contacts, their history, and the organization's trained models.
--
-- lead_score is written by the ai:score-leads job (the organization's system principal). A person may
-- still set it by hand (the API and CSV imports keep the field): the trigger below then marks it
-- `manual` — pinned: the job leaves a pinned score alone until scoreLeads is asked for that record.
-- lead_score_reasons, lead_score_model and lead_scored_at are the job's alone.
alter table crm.customers
  add column if not exists lead_score_reasons text[] not null default '{}'
    constraint customers_lead_score_reasons_length check (cardinality(lead_score_reasons) <= 5),
  add column if not exists lead_score_model text
    constraint customers_lead_score_model_length check (length(lead_score_model) <= 200),
  add column if not exists lead_scored_at timestamptz;

alter table crm.contacts
  add column if not exists lead_source text constraint contacts_lead_source_length check (length(lead_source) <= 100),
  add column if not exists lead_score int not null default 0 constraint contacts_lead_score_range check (lead_score between 0 and 100),
  add column if not exists lead_score_reasons text[] not null default '{}'
    constraint contacts_lead_score_reasons_length check (cardinality(lead_score_reasons) <= 5),
  add column if not exists lead_score_model text
    constraint contacts_lead_score_model_length check (length(lead_score_model) <= 200),
  add column if not exists lead_scored_at timestamptz;

create index if not exists customers_organization_id_lead_scored_at_idx on crm.customers (organization_id, lead_scored_at);
create index if not exists contacts_organization_id_lead_score_idx on crm.contacts (organization_id, lead_score);
create index if not exists contacts_organization_id_lead_scored_at_idx on crm.contacts (organization_id, lead_scored_at);
create index if not exists contacts_organization_id_lead_source_idx on crm.contacts (organization_id, lead_source);

comment on column crm.customers.lead_score is 'Lead score 0–100: how likely this account is to convert (become a customer or win a deal), from the organization''s model (docs/ai.md). Set by hand, it is pinned (leadScoreModel "manual") until scoreLeads rescores the record.';
comment on column crm.customers.lead_score_reasons is E'@behavior -insert -update\nThe score''s main reasons in plain words (at most three from the model).';
comment on column crm.customers.lead_score_model is E'@behavior -insert -update\nWhat gave the score: local-logistic-v<n> (the organization''s trained model), local-prior-v1 (the prior model), bedrock:<model id>, or manual (set by hand).';
comment on column crm.customers.lead_scored_at is E'@behavior -insert -update\nWhen the score was last written.';
comment on column crm.contacts.lead_source is 'Where the contact came from (web, referral, event …).';
comment on column crm.contacts.lead_score is 'Lead score 0–100, scored with its customer''s model on the contact''s own profile (docs/ai.md). Set by hand, it is pinned like a customer''s.';
comment on column crm.contacts.lead_score_reasons is E'@behavior -insert -update\nThe score''s main reasons in plain words.';
comment on column crm.contacts.lead_score_model is E'@behavior -insert -update\nWhat gave the score (as for customers).';
comment on column crm.contacts.lead_scored_at is E'@behavior -insert -update\nWhen the score was last written.';

grant insert (lead_source, lead_score), update (lead_source, lead_score) on crm.contacts to crm_user;
-- The scoring job runs as crm_user (under the organization's RLS); the trigger refuses these columns
-- to everyone else, and the API does not offer them.
grant update (lead_score_reasons, lead_score_model, lead_scored_at) on crm.customers to crm_user;
grant update (lead_score_reasons, lead_score_model, lead_scored_at) on crm.contacts to crm_user;

-- History of every score written (by the job, or by hand).
create table if not exists crm.lead_score_history (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid,
  contact_id uuid,
  score int not null constraint lead_score_history_score_range check (score between 0 and 100),
  previous_score int constraint lead_score_history_previous_score_range check (previous_score between 0 and 100),
  reasons text[] not null default '{}',
  model text not null constraint lead_score_history_model_length check (length(model) <= 200),
  provider text not null constraint lead_score_history_provider_check check (provider in ('local', 'bedrock', 'manual')),
  fallback_reason text constraint lead_score_history_fallback_reason_length check (length(fallback_reason) <= 1000),
  features jsonb,
  scored_at timestamptz not null default now(),
  constraint lead_score_history_subject_check check (num_nonnulls(customer_id, contact_id) = 1),
  constraint lead_score_history_organization_id_id_key unique (organization_id, id),
  constraint lead_score_history_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade,
  constraint lead_score_history_contact_fkey foreign key (organization_id, contact_id)
    references crm.contacts (organization_id, id) on delete cascade
);
create index if not exists lead_score_history_customer_idx on crm.lead_score_history (organization_id, customer_id, scored_at);
create index if not exists lead_score_history_contact_idx on crm.lead_score_history (organization_id, contact_id, scored_at);
create index if not exists lead_score_history_organization_id_scored_at_idx on crm.lead_score_history (organization_id, scored_at);
comment on table crm.lead_score_history is E'@behavior -insert -update -delete\nEvery lead score written to a customer or contact: the score, its reasons, the model, the provider (local, bedrock, manual), why a cloud answer was replaced by the local score (fallbackReason), and the features scored.';
comment on column crm.lead_score_history.organization_id is E'@behavior -insert -update';
comment on column crm.lead_score_history.fallback_reason is 'Set when the cloud model was configured but the local score was used: the budget was spent, or the cloud model failed after its retries.';
comment on column crm.lead_score_history.features is 'The feature vector that was scored (docs/ai.md, Features).';
comment on constraint lead_score_history_customer_fkey on crm.lead_score_history is E'@foreignFieldName leadScoreHistories';
comment on constraint lead_score_history_contact_fkey on crm.lead_score_history is E'@foreignFieldName leadScoreHistories';

-- The organization's lead score models: one row per training run (ai:train); the newest is in use.
create table if not exists crm.lead_score_models (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  version int not null constraint lead_score_models_version_range check (version >= 1),
  kind text not null constraint lead_score_models_kind_check check (kind in ('logistic', 'prior')),
  name text not null constraint lead_score_models_name_length check (length(name) <= 200),
  coefficients jsonb not null constraint lead_score_models_coefficients_object check (jsonb_typeof(coefficients) = 'object'),
  threshold float8 not null default 0.5 constraint lead_score_models_threshold_range check (threshold between 0 and 1),
  training_size int not null default 0 constraint lead_score_models_training_size_range check (training_size >= 0),
  positives int not null default 0,
  negatives int not null default 0,
  metrics jsonb not null default '{}'::jsonb constraint lead_score_models_metrics_object check (jsonb_typeof(metrics) = 'object'),
  trained_at timestamptz not null default now(),
  constraint lead_score_models_version_unique unique (organization_id, version),
  constraint lead_score_models_organization_id_id_key unique (organization_id, id)
);
create index if not exists lead_score_models_organization_id_trained_at_idx on crm.lead_score_models (organization_id, trained_at);
comment on table crm.lead_score_models is E'@behavior -insert -update -delete\nThe organization''s lead score models, one per weekly training (ai:train); the highest version is in use. kind logistic: trained on the organization''s own history; prior: the documented prior model (too little history). metrics: held-out AUC, accuracy, Brier score of the time-based split.';
comment on column crm.lead_score_models.organization_id is E'@behavior -insert -update';
comment on column crm.lead_score_models.coefficients is 'intercept, and per feature: weight, mean and scale (standardised inputs).';

alter table crm.lead_score_history enable row level security;
alter table crm.lead_score_models enable row level security;

-- History follows the record it belongs to; only the organization's system principal (the scoring
-- job) writes it directly (manual scores are recorded by the trigger below).
drop policy if exists lead_score_history_select on crm.lead_score_history;
create policy lead_score_history_select on crm.lead_score_history for select
  using (organization_id = (select crm.current_org_id())
         and ((customer_id is not null and exists (select 1 from crm.customers c where c.id = lead_score_history.customer_id))
              or (contact_id is not null and exists (select 1 from crm.contacts ct where ct.id = lead_score_history.contact_id))));
drop policy if exists lead_score_history_insert on crm.lead_score_history;
create policy lead_score_history_insert on crm.lead_score_history for insert
  with check (organization_id = (select crm.current_org_id())
              and (select crm.current_user_id()) = crm.system_principal_id(organization_id));

drop policy if exists lead_score_models_select on crm.lead_score_models;
create policy lead_score_models_select on crm.lead_score_models for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('ai:use')) or (select crm.has_permission('ai:manage'))));
drop policy if exists lead_score_models_insert on crm.lead_score_models;
create policy lead_score_models_insert on crm.lead_score_models for insert
  with check (organization_id = (select crm.current_org_id())
              and (select crm.current_user_id()) = crm.system_principal_id(organization_id));

grant select on crm.lead_score_history, crm.lead_score_models to crm_user;
grant insert (customer_id, contact_id, score, previous_score, reasons, model, provider, fallback_reason, features, scored_at)
  on crm.lead_score_history to crm_user;
grant insert (version, kind, name, coefficients, threshold, training_size, positives, negatives, metrics)
  on crm.lead_score_models to crm_user;

select crm_private.guard_references('crm.lead_score_history');

-- Who may write what: people set lead_score (pinning it), only the job sets the rest.
create or replace function crm_private.tg_lead_score_guard() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if current_user <> 'crm_user' or crm.current_user_id() = crm.system_principal_id(new.organization_id) then
    return new;
  end if;
  if tg_op = 'UPDATE' then
    if new.lead_score_reasons is distinct from old.lead_score_reasons or new.lead_score_model is distinct from old.lead_score_model
       or new.lead_scored_at is distinct from old.lead_scored_at then
      raise exception 'Lead score reasons, model and time are written by the scoring job.' using errcode = 'CRFBD', column = 'lead_score_model';
    end if;
    if new.lead_score is distinct from old.lead_score then
      new.lead_score_model := 'manual';
      new.lead_score_reasons := array['Set by hand'];
      new.lead_scored_at := now();
    end if;
  else
    if new.lead_score_model is not null or new.lead_scored_at is not null or cardinality(new.lead_score_reasons) > 0 then
      raise exception 'Lead score reasons, model and time are written by the scoring job.' using errcode = 'CRFBD', column = 'lead_score_model';
    end if;
    -- 0 is the column's default: a new record given 0 is left to the model.
    if new.lead_score <> 0 then
      new.lead_score_model := 'manual';
      new.lead_score_reasons := array['Set by hand'];
      new.lead_scored_at := now();
    end if;
  end if;
  return new;
end
$$;
drop trigger if exists _170_lead_score on crm.customers;
create trigger _170_lead_score before insert or update on crm.customers
  for each row execute function crm_private.tg_lead_score_guard();
drop trigger if exists _170_lead_score on crm.contacts;
create trigger _170_lead_score before insert or update on crm.contacts
  for each row execute function crm_private.tg_lead_score_guard();

--! split: 620-lead-features.sql
-- Lead scoring features and labels, set-based. docs/ai.md ("Features") documents every column.
--
-- crm_jobs functions run as crm_user under the organization's row-level security (the scoring and
-- training jobs run them as the organization's system principal), so they only ever read the
-- organization's own rows, whatever they are asked.

-- Labelled history for training and evaluation: a customer is a positive when it became a customer
-- or won a deal (labelled at the first of these), a negative when it never did and churned or lost a
-- deal (labelled at the last of these). A customer that converted and churned later counts as a
-- conversion: the score says whether a lead converts, not whether an account stays.
drop function if exists crm_jobs.lead_labels();
create or replace function crm_jobs.lead_labels()
  returns table (customer_id uuid, label int, labelled_at timestamptz)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with status_events as (
    select h.customer_id,
           min(h.changed_at) filter (where h.to_status = 'customer') as converted_at,
           max(h.changed_at) filter (where h.to_status = 'churned') as churned_at
      from crm.customer_status_history h group by h.customer_id
  ), deal_events as (
    select d.customer_id,
           min(h.changed_at) filter (where st.is_won) as won_at,
           max(h.changed_at) filter (where st.is_lost) as lost_at
      from crm.deals d
      join crm.deal_stage_history h on h.organization_id = d.organization_id and h.deal_id = d.id
      join crm.pipeline_stages st on st.organization_id = h.organization_id and st.id = h.to_stage_id
     where st.is_won or st.is_lost
     group by d.customer_id
  ), events as (
    select c.id, se.converted_at, se.churned_at, de.won_at, de.lost_at, c.status
      from crm.customers c
      left join status_events se on se.customer_id = c.id
      left join deal_events de on de.customer_id = c.id
  )
  select e.id,
         case when least(e.converted_at, e.won_at) is not null then 1 else 0 end,
         case when least(e.converted_at, e.won_at) is not null then least(e.converted_at, e.won_at)
              else greatest(case when e.status = 'churned' then e.churned_at end, e.lost_at) end
    from events e
   where least(e.converted_at, e.won_at) is not null
      or (e.status = 'churned' and e.churned_at is not null) or e.lost_at is not null
$$;
comment on function crm_jobs.lead_labels() is 'Labelled customers for training: 1 converted (became a customer or won a deal), 0 churned or lost without converting; labelled_at is when the outcome became known.';
grant execute on function crm_jobs.lead_labels() to crm_user;

-- The feature vector of customers as of a cutoff: every customer visible to the caller with cutoff
-- now (customer_ids null), or the given customers each at its own cutoff (training: the moment its
-- outcome became known, so nothing that happened afterwards leaks into its features).
--
-- Campaign engagement is a gap: campaigns are not in the schema yet, so campaign_engagement_90d is 0
-- for everyone (a zero feature gets a zero weight and no reason) until they land.
drop function if exists crm_jobs.lead_features(uuid[], timestamptz[]);
create or replace function crm_jobs.lead_features(customer_ids uuid[] default null, cutoffs timestamptz[] default null)
  returns table (
    customer_id uuid, cutoff timestamptz,
    -- context (shown to the cloud model, not used by the local model)
    kind text, industry text, company_size text, country text, lead_source text, status text, rfm_score float8,
    -- firmographics
    is_company int, size_rank int, log_employees float8, log_revenue float8, has_industry int, referred int,
    has_lead_source int, is_prospect int, industry_conversion float8, source_conversion float8,
    -- engagement
    tasks_30d int, tasks_90d int, tasks_done_90d int, notes_30d int, notes_90d int, work_hours_90d float8,
    days_since_touch int, campaign_engagement_90d int,
    -- pipeline
    open_deals int, log_open_amount float8, max_stage_probability int,
    -- commerce
    orders_total int, orders_365d int, log_monetary_365d float8, days_since_order int,
    -- profile completeness
    has_email int, has_phone int, has_website int, has_primary_contact int, profile_completeness float8)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with subjects as (
    select c.*, coalesce(x.cutoff, now()) as at
      from crm.customers c
      left join unnest(customer_ids, cutoffs) as x (id, cutoff) on x.id = c.id
     where customer_ids is null or c.id = any (customer_ids)
  ), labels as (
    select l.labelled_at, l.label, lower(btrim(c.industry)) as industry, lower(btrim(c.lead_source)) as source
      from crm_jobs.lead_labels() l join crm.customers c on c.id = l.customer_id
  ), rate_events as (
    -- The organization's conversion rate per industry and per lead source among the outcomes known
    -- before each cutoff (strictly: a probe sorts before an outcome at the same instant).
    select s.id as probe, s.at as t, 0 as ord, lower(btrim(s.industry)) as industry, lower(btrim(s.lead_source)) as source, null::int as label
      from subjects s
    union all
    select null, l.labelled_at, 1, l.industry, l.source, l.label from labels l
  ), rates as (
    select probe,
           sum(label) over everything as conv, count(label) over everything as n,
           case when industry is not null then sum(label) over by_industry end as industry_conv,
           case when industry is not null then count(label) over by_industry end as industry_n,
           case when source is not null then sum(label) over by_source end as source_conv,
           case when source is not null then count(label) over by_source end as source_n,
           ord
      from rate_events
    window everything as (order by t, ord rows between unbounded preceding and current row),
           by_industry as (partition by industry order by t, ord rows between unbounded preceding and current row),
           by_source as (partition by source order by t, ord rows between unbounded preceding and current row)
  ), subject_rates as (
    -- Smoothed towards the overall rate with 10 pseudo-outcomes: (conversions + 10·overall) / (outcomes + 10).
    select probe as id, o.overall,
           (coalesce(industry_conv, 0) + 10 * o.overall) / (coalesce(industry_n, 0) + 10) as industry_rate,
           (coalesce(source_conv, 0) + 10 * o.overall) / (coalesce(source_n, 0) + 10) as source_rate
      from rates cross join lateral (select (coalesce(conv, 0) + 1.0) / (n + 2) as overall) o
     where ord = 0
  ), tasks as (
    select s.id,
           count(*) filter (where t.created_at >= s.at - interval '30 days') as n30,
           count(*) filter (where t.created_at >= s.at - interval '90 days') as n90,
           count(*) filter (where t.created_at >= s.at - interval '90 days' and t.completed_at < s.at) as done90,
           max(greatest(t.created_at, case when t.completed_at < s.at then t.completed_at end)) as last_at
      from subjects s join crm.tasks t on t.organization_id = s.organization_id and t.customer_id = s.id and t.created_at < s.at
     group by s.id
  ), notes as (
    select s.id,
           count(*) filter (where n.created_at >= s.at - interval '30 days') as n30,
           count(*) filter (where n.created_at >= s.at - interval '90 days') as n90,
           max(n.created_at) as last_at
      from subjects s join crm.notes n on n.organization_id = s.organization_id and n.customer_id = s.id and n.created_at < s.at
     group by s.id
  ), work as (
    select s.id,
           sum(w.minutes) filter (where w.logged_at >= s.at - interval '90 days') / 60.0 as hours90,
           max(w.logged_at) as last_at
      from subjects s join crm.work_logs w on w.organization_id = s.organization_id and w.customer_id = s.id and w.logged_at < s.at
     group by s.id
  ), deal_states as (
    -- Each deal as it stood at the cutoff: its last stage before it, and the highest open stage it reached.
    select s.id, d.id as deal_id, d.amount,
           (array_agg(st.is_won or st.is_lost order by h.changed_at desc, h.id desc))[1] as closed,
           max(st.probability) filter (where not st.is_won and not st.is_lost) as reached,
           max(h.changed_at) as last_at
      from subjects s
      join crm.deals d on d.organization_id = s.organization_id and d.customer_id = s.id and d.created_at < s.at
      join crm.deal_stage_history h on h.organization_id = d.organization_id and h.deal_id = d.id and h.changed_at < s.at
      join crm.pipeline_stages st on st.organization_id = h.organization_id and st.id = h.to_stage_id
     group by s.id, d.id, d.amount
  ), deals as (
    select id, count(*) filter (where not closed) as open_n, sum(amount) filter (where not closed) as open_amount,
           max(reached) as reached, max(last_at) as last_at
      from deal_states group by id
  ), orders as (
    select s.id, count(*) as n,
           count(*) filter (where o.ordered_at >= s.at - interval '365 days') as n365,
           sum(o.final_amount - o.refunded_amount) filter (where o.ordered_at >= s.at - interval '365 days') as m365,
           max(o.ordered_at) as last_at
      from subjects s
      join crm.orders o on o.organization_id = s.organization_id and o.customer_id = s.id and o.ordered_at < s.at and o.status <> 'cancelled'
     group by s.id
  ), primary_contacts as (
    select distinct s.id
      from subjects s join crm.contacts ct on ct.organization_id = s.organization_id and ct.customer_id = s.id
     where ct.is_primary and ct.created_at < s.at
  )
  select s.id, s.at,
         s.kind, s.industry, s.company_size, coalesce(s.billing_address->>'country', s.shipping_address->>'country'), s.lead_source,
         st.status, s.rfm_score::float8,
         (s.kind = 'company')::int,
         coalesce(array_position(array['1-10', '11-50', '51-200', '201-500', '501-1000', '1001-5000', '5000+'], s.company_size), 0),
         ln(1 + coalesce(s.employee_count, 0))::float8,
         ln(1 + coalesce(s.annual_revenue, 0) / 1000.0)::float8,
         (nullif(btrim(s.industry), '') is not null)::int,
         (s.referred_by_id is not null or coalesce(s.lead_source, '') ~* '(referr|partner)')::int,
         (nullif(btrim(s.lead_source), '') is not null)::int,
         (st.status = 'prospect')::int,
         round(coalesce(sr.industry_rate, 0.5), 4)::float8, round(coalesce(sr.source_rate, 0.5), 4)::float8,
         coalesce(t.n30, 0)::int, coalesce(t.n90, 0)::int, coalesce(t.done90, 0)::int,
         coalesce(n.n30, 0)::int, coalesce(n.n90, 0)::int,
         round(coalesce(w.hours90, 0), 2)::float8,
         least(365, greatest(0, extract(day from s.at - greatest(t.last_at, n.last_at, w.last_at, d.last_at, o.last_at, least(s.created_at, s.at)))::int)),
         0,
         coalesce(d.open_n, 0)::int,
         ln(1 + coalesce(d.open_amount, 0) / 1000.0)::float8,
         coalesce(d.reached, 0)::int,
         coalesce(o.n, 0)::int, coalesce(o.n365, 0)::int,
         ln(1 + greatest(coalesce(o.m365, 0), 0) / 1000.0)::float8,
         least(730, coalesce(extract(day from s.at - o.last_at)::int, 730)),
         (s.email is not null)::int, (nullif(btrim(s.phone), '') is not null)::int, (s.website is not null)::int,
         (pc.id is not null)::int,
         ((s.email is not null)::int + (nullif(btrim(s.phone), '') is not null)::int + (s.website is not null)::int
          + (nullif(btrim(s.industry), '') is not null)::int + (pc.id is not null)::int) / 5.0
    from subjects s
    cross join lateral (
      select case when cutoffs is null then s.status
                  else coalesce((select h.to_status from crm.customer_status_history h
                                  where h.organization_id = s.organization_id and h.customer_id = s.id and h.changed_at < s.at
                                  order by h.changed_at desc, h.id desc limit 1), 'lead') end as status
    ) st
    left join tasks t on t.id = s.id
    left join notes n on n.id = s.id
    left join work w on w.id = s.id
    left join deals d on d.id = s.id
    left join orders o on o.id = s.id
    left join primary_contacts pc on pc.id = s.id
    left join subject_rates sr on sr.id = s.id
$$;
comment on function crm_jobs.lead_features(uuid[], timestamptz[]) is 'Lead scoring features of customers as of a cutoff (docs/ai.md, Features).';
grant execute on function crm_jobs.lead_features(uuid[], timestamptz[]) to crm_user;

-- Contacts are scored with their customer's model on a contact-level view of the same vector: the
-- customer's firmographics, engagement, pipeline and commerce, with the profile taken from the
-- contact (its e-mail, phone, whether it is the primary contact) and its own lead source when set.
drop function if exists crm_jobs.contact_lead_features(uuid[]);
create or replace function crm_jobs.contact_lead_features(contact_ids uuid[] default null)
  returns table (contact_id uuid, customer_id uuid, features jsonb)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with contacts as (
    select ct.* from crm.contacts ct where contact_ids is null or ct.id = any (contact_ids)
  ), customer_features as (
    select f.* from crm_jobs.lead_features(
      case when contact_ids is null then null else array(select distinct customer_id from contacts) end) f
  )
  select ct.id, ct.customer_id,
         to_jsonb(f) || jsonb_build_object(
           'lead_source', coalesce(nullif(btrim(ct.lead_source), ''), f.lead_source),
           'referred', greatest(f.referred, (coalesce(ct.lead_source, '') ~* '(referr|partner)')::int),
           'has_lead_source', greatest(f.has_lead_source, (nullif(btrim(ct.lead_source), '') is not null)::int),
           'has_email', (ct.email is not null)::int,
           'has_phone', (coalesce(nullif(btrim(ct.phone), ''), nullif(btrim(ct.mobile), '')) is not null)::int,
           'has_primary_contact', ct.is_primary::int,
           'profile_completeness', ((ct.email is not null)::int
                                    + (coalesce(nullif(btrim(ct.phone), ''), nullif(btrim(ct.mobile), '')) is not null)::int
                                    + (nullif(btrim(ct.title), '') is not null)::int + ct.is_primary::int
                                    + (ct.status = 'active')::int) / 5.0,
           'contact_status', ct.status, 'title', ct.title)
    from contacts ct join customer_features f on f.customer_id = ct.customer_id
$$;
comment on function crm_jobs.contact_lead_features(uuid[]) is 'Lead scoring features of contacts: their customer''s vector with the contact''s own profile (docs/ai.md).';
grant execute on function crm_jobs.contact_lead_features(uuid[]) to crm_user;

-- The training set: each labelled customer's features as of its label time.
drop function if exists crm_jobs.lead_training_set();
create or replace function crm_jobs.lead_training_set()
  returns table (customer_id uuid, label int, labelled_at timestamptz, features jsonb)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with labels as (select * from crm_jobs.lead_labels())
  select l.customer_id, l.label, l.labelled_at, to_jsonb(f)
    from labels l
    join crm_jobs.lead_features(array(select customer_id from labels order by customer_id),
                                array(select labelled_at from labels order by customer_id)) f on f.customer_id = l.customer_id
   order by l.labelled_at, l.customer_id
$$;
comment on function crm_jobs.lead_training_set() is 'Labelled customers with their features as of their label time, oldest first.';
grant execute on function crm_jobs.lead_training_set() to crm_user;

--! split: 630-lead-scoring.sql
-- Lead scoring: when it runs, scoreLeads, and how the job writes scores. docs/ai.md.
--
-- ai:score-leads is a tenant job (worker/tenant/registry.ts): nightly, and one minute after something
-- that feeds the features changes. A change enqueues it in the same transaction, with the tenant job
-- key and graphile-worker's preserve_run_at mode: the first change of a burst sets the run for a
-- minute later and the next ones only join it, so a burst of edits is scored once.

-- Enqueues a scoring run for each organization, `delay` from now unless one is already waiting (which
-- keeps its time).
create or replace function crm_private.enqueue_lead_scoring(orgs uuid[], delay interval default interval '1 minute') returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select graphile_worker.add_job(
           'ai:score-leads',
           json_build_object('organizationId', o, 'reason', 'change'),
           job_key := 'tenant:ai:score-leads:' || o::text,
           run_at := now() + delay,
           max_attempts := 5,
           job_key_mode := 'preserve_run_at')
    from (select distinct o from unnest(orgs) o where o is not null) x
$$;

-- Statement-level: one enqueue per organization and statement, whatever the number of rows. Changes
-- made by an organization's system principal (jobs, the scoring itself) or without a principal (data
-- loaded as the owner: seeds, migrations) do not enqueue: the nightly run picks them up.
create or replace function crm_private.tg_lead_inputs_changed() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  orgs uuid[];
begin
  select array_agg(distinct r.organization_id) into orgs from new_rows r
   where crm.current_user_id() is not null and crm.current_user_id() is distinct from crm.system_principal_id(r.organization_id);
  if orgs is not null then
    perform crm_private.enqueue_lead_scoring(orgs);
  end if;
  return null;
end
$$;

-- Customers and contacts: also record scores set by hand in the history.
create or replace function crm_private.tg_lead_subject_changed() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  kind text := tg_argv[0];
begin
  if tg_op = 'INSERT' then
    execute format($q$
      insert into crm.lead_score_history (organization_id, %1$I, score, reasons, model, provider, scored_at)
      select n.organization_id, n.id, n.lead_score, n.lead_score_reasons, 'manual', 'manual', n.lead_scored_at
        from new_rows n where n.lead_score_model = 'manual'$q$, kind || '_id');
  else
    execute format($q$
      insert into crm.lead_score_history (organization_id, %1$I, score, previous_score, reasons, model, provider, scored_at)
      select n.organization_id, n.id, n.lead_score, o.lead_score, n.lead_score_reasons, 'manual', 'manual', n.lead_scored_at
        from new_rows n join old_rows o on o.id = n.id
       where n.lead_score_model = 'manual' and n.lead_score is distinct from o.lead_score$q$, kind || '_id');
  end if;
  perform crm_private.enqueue_lead_scoring(array_agg(distinct r.organization_id))
     from new_rows r
    where crm.current_user_id() is not null and crm.current_user_id() is distinct from crm.system_principal_id(r.organization_id)
   having count(*) > 0;
  return null;
end
$$;

do $$
declare
  t text;
begin
  foreach t in array array['customers', 'contacts'] loop
    execute format('drop trigger if exists _600_lead_scoring_insert on crm.%I', t);
    execute format('create trigger _600_lead_scoring_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_lead_subject_changed(%L)', t, rtrim(t, 's'));
    execute format('drop trigger if exists _600_lead_scoring_update on crm.%I', t);
    execute format('create trigger _600_lead_scoring_update after update on crm.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function crm_private.tg_lead_subject_changed(%L)', t, rtrim(t, 's'));
  end loop;
  foreach t in array array['tasks', 'notes', 'work_logs', 'deals', 'orders'] loop
    execute format('drop trigger if exists _600_lead_scoring_insert on crm.%I', t);
    execute format('create trigger _600_lead_scoring_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_lead_inputs_changed()', t);
    execute format('drop trigger if exists _600_lead_scoring_update on crm.%I', t);
    execute format('create trigger _600_lead_scoring_update after update on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_lead_inputs_changed()', t);
  end loop;
end
$$;

-- A new model rescored everything at once.
create or replace function crm_private.tg_lead_model_trained() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  -- Trained by the job (models loaded as the owner wait for the nightly run).
  if crm.current_user_id() = crm.system_principal_id(new.organization_id) then
    perform crm_private.enqueue_tenant_job('ai:score-leads', new.organization_id, '{"reason": "model"}'::jsonb);
  end if;
  return null;
end
$$;
drop trigger if exists _600_rescore on crm.lead_score_models;
create trigger _600_rescore after insert on crm.lead_score_models
  for each row execute function crm_private.tg_lead_model_trained();

-- scoreLeads: rescore the given customers and contacts now with the configured provider (a score set
-- by hand is unpinned), or, without ids, everything that needs it. The scores are written by the
-- ai:score-leads job, which this enqueues to run at once; returns the number of records asked for.
create or replace function crm.score_leads(customer_ids uuid[] default null, contact_ids uuid[] default null) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  missing int;
  n int := 0;
begin
  perform crm_private.require_permission('ai:use');
  if cardinality(customer_ids) > 10000 or cardinality(contact_ids) > 10000 then
    raise exception 'Ask for at most 10,000 records at a time (or none, for everything).' using errcode = 'CRVAL', column = 'customerIds';
  end if;
  -- The customers' visibility rule (customers_select), checked here because this function runs as the owner.
  select min(i) into missing from unnest(customer_ids) with ordinality x (id, i)
   where not exists (select 1 from crm.customers c
                      where c.id = x.id and c.organization_id = org and c.deleted_at is null
                        and (crm.has_permission('customers:read_all') or c.owner_id = any (crm.visible_owner_ids('customers'))));
  if missing is not null then
    raise exception 'No such customer.' using errcode = 'CRNFD', column = format('customerIds[%s]', missing - 1);
  end if;
  select min(i) into missing from unnest(contact_ids) with ordinality x (id, i)
   where not exists (select 1 from crm.contacts ct join crm.customers c on c.id = ct.customer_id
                      where ct.id = x.id and ct.organization_id = org and ct.deleted_at is null and c.deleted_at is null
                        and (crm.has_permission('customers:read_all') or c.owner_id = any (crm.visible_owner_ids('customers'))));
  if missing is not null then
    raise exception 'No such contact.' using errcode = 'CRNFD', column = format('contactIds[%s]', missing - 1);
  end if;
  if customer_ids is null and contact_ids is null then
    select (select count(*) from crm.customers c where c.organization_id = org and c.deleted_at is null and c.lead_score_model is distinct from 'manual')
         + (select count(*) from crm.contacts ct where ct.organization_id = org and ct.deleted_at is null and ct.lead_score_model is distinct from 'manual')
      into n;
  else
    -- No model: the job scores these with the configured provider, even when nothing changed.
    update crm.customers c set lead_score_model = null where c.organization_id = org and c.id = any (customer_ids) and c.lead_score_model is not null;
    update crm.contacts ct set lead_score_model = null where ct.organization_id = org and ct.id = any (contact_ids) and ct.lead_score_model is not null;
    n := coalesce(cardinality(customer_ids), 0) + coalesce(cardinality(contact_ids), 0);
  end if;
  perform crm_private.enqueue_tenant_job('ai:score-leads', org, jsonb_build_object('reason', 'requested'));
  return n;
end
$$;
comment on function crm.score_leads(uuid[], uuid[]) is 'Rescore these customers and contacts now (ai:use), with the configured provider; a score set by hand is unpinned. Without ids: score everything that needs it. Returns the number of records asked for; the scores arrive when the ai:score-leads job has run (seconds).';
grant execute on function crm.score_leads(uuid[], uuid[]) to crm_user;

-- The scoring job's write: one statement for every score. `scores` is a JSON array of
-- {kind: customer|contact, id, score, reasons, model, provider, fallback_reason, features, record}.
-- A record's columns change only when its score, reasons or model changed; the history gets a row
-- then, or whenever `record` is true (every cloud call and every fallback is recorded). Scores set
-- by hand are left alone unless the record was unpinned by scoreLeads. Returns the records changed.
create or replace function crm_jobs.write_lead_scores(scores jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  with input as (
    select x.kind, x.id, least(100, greatest(0, x.score)) as score, x.reasons, x.model, x.provider, x.fallback_reason, x.features,
           coalesce(x.record, false) as record
      from jsonb_to_recordset(scores) as x (kind text, id uuid, score int, reasons text[], model text, provider text,
                                           fallback_reason text, features jsonb, record boolean)
  ), current_scores as (
    select i.*, c.lead_score as previous,
           (c.lead_score, c.lead_score_reasons, c.lead_score_model) is distinct from (i.score, i.reasons, i.model) as changed
      from input i join crm.customers c on i.kind = 'customer' and c.id = i.id
     where c.lead_score_model is distinct from 'manual'
    union all
    select i.*, c.lead_score,
           (c.lead_score, c.lead_score_reasons, c.lead_score_model) is distinct from (i.score, i.reasons, i.model)
      from input i join crm.contacts c on i.kind = 'contact' and c.id = i.id
     where c.lead_score_model is distinct from 'manual'
  ), customers_written as (
    update crm.customers c set lead_score = i.score, lead_score_reasons = i.reasons, lead_score_model = i.model, lead_scored_at = now()
      from current_scores i where i.kind = 'customer' and i.changed and c.id = i.id
    returning c.id
  ), contacts_written as (
    update crm.contacts c set lead_score = i.score, lead_score_reasons = i.reasons, lead_score_model = i.model, lead_scored_at = now()
      from current_scores i where i.kind = 'contact' and i.changed and c.id = i.id
    returning c.id
  ), history as (
    insert into crm.lead_score_history (customer_id, contact_id, score, previous_score, reasons, model, provider, fallback_reason, features)
    select case when i.kind = 'customer' then i.id end, case when i.kind = 'contact' then i.id end,
           i.score, i.previous, i.reasons, i.model, i.provider, i.fallback_reason, i.features
      from current_scores i
     where i.changed or i.record
    returning 1
  )
  select (select count(*) from customers_written) + (select count(*) from contacts_written)
$$;
comment on function crm_jobs.write_lead_scores(jsonb) is 'Writes the scoring job''s scores to customers, contacts and the history, set-based.';
grant execute on function crm_jobs.write_lead_scores(jsonb) to crm_user;

--! split: 640-ai-drafts.sql
-- E-mail drafts: draftEmail builds the context in SQL, as the requester (so it holds only what they
-- can see, of their own organization), and stores a pending draft; the ai:draft job asks the provider
-- and writes the draft (pending → ready, or failed). docs/ai.md.
create table if not exists crm.ai_drafts (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  requested_by uuid not null default crm.current_user_id() references crm.users (id) on delete cascade,
  customer_id uuid,
  contact_id uuid,
  deal_id uuid,
  purpose text not null constraint ai_drafts_purpose_length check (length(btrim(purpose)) between 1 and 500),
  tone text not null default 'friendly' constraint ai_drafts_tone_check check (tone in ('friendly', 'formal', 'concise')),
  status text not null default 'pending' constraint ai_drafts_status_check check (status in ('pending', 'ready', 'failed')),
  context jsonb not null constraint ai_drafts_context_object check (jsonb_typeof(context) = 'object'),
  subject text constraint ai_drafts_subject_length check (length(subject) <= 300),
  body text constraint ai_drafts_body_length check (length(body) <= 20000),
  provider text constraint ai_drafts_provider_check check (provider in ('local', 'bedrock')),
  model text constraint ai_drafts_model_length check (length(model) <= 200),
  fallback_reason text constraint ai_drafts_fallback_reason_length check (length(fallback_reason) <= 1000),
  error text constraint ai_drafts_error_length check (length(error) <= 2000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  completed_at timestamptz,
  constraint ai_drafts_subject_check check (num_nonnulls(customer_id, contact_id, deal_id) = 1),
  constraint ai_drafts_requested_by_valid check (requested_by is distinct from crm.system_principal_id(organization_id)),
  constraint ai_drafts_organization_id_id_key unique (organization_id, id),
  constraint ai_drafts_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint ai_drafts_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete cascade,
  constraint ai_drafts_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete cascade
);
create index if not exists ai_drafts_requested_by_idx on crm.ai_drafts (organization_id, requested_by, created_at);
create index if not exists ai_drafts_requested_by_fkey_idx on crm.ai_drafts (requested_by);
create index if not exists ai_drafts_organization_id_status_idx on crm.ai_drafts (organization_id, status);
create index if not exists ai_drafts_customer_idx on crm.ai_drafts (organization_id, customer_id);
create index if not exists ai_drafts_contact_idx on crm.ai_drafts (organization_id, contact_id);
create index if not exists ai_drafts_deal_idx on crm.ai_drafts (organization_id, deal_id);
comment on table crm.ai_drafts is E'@behavior -insert -update -delete\nAn e-mail draft asked for with draftEmail: pending until the ai:draft job writes its subject and body (ready), or failed. Readable by the member who asked for it.';
comment on column crm.ai_drafts.organization_id is E'@behavior -insert -update';
comment on column crm.ai_drafts.context is 'What the model was given: built from the records the requester could see when asking (recent notes, tasks, the deal''s stage, the last orders).';
comment on column crm.ai_drafts.fallback_reason is 'Set when the cloud model was configured but the local template wrote the draft (budget spent, cloud AI turned off, or the model failed after its retries).';
comment on constraint ai_drafts_requested_by_fkey on crm.ai_drafts is E'@fieldName requester\n@foreignFieldName aiDrafts';

alter table crm.ai_drafts enable row level security;
drop policy if exists ai_drafts_select on crm.ai_drafts;
create policy ai_drafts_select on crm.ai_drafts for select
  using (organization_id = (select crm.current_org_id())
         and (requested_by = (select crm.current_user_id()) or (select crm.current_user_id()) = crm.system_principal_id(organization_id)));
drop policy if exists ai_drafts_insert on crm.ai_drafts;
create policy ai_drafts_insert on crm.ai_drafts for insert
  with check (organization_id = (select crm.current_org_id()) and requested_by = (select crm.current_user_id())
              and (select crm.has_permission('ai:use')));
drop policy if exists ai_drafts_update on crm.ai_drafts;
create policy ai_drafts_update on crm.ai_drafts for update
  using (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id))
  with check (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));

grant select on crm.ai_drafts to crm_user;
grant insert (customer_id, contact_id, deal_id, purpose, tone, context) on crm.ai_drafts to crm_user;
grant update (status, subject, body, provider, model, fallback_reason, error, completed_at) on crm.ai_drafts to crm_user;

select crm_private.guard_references('crm.ai_drafts');

drop trigger if exists _100_updated_at on crm.ai_drafts;
create trigger _100_updated_at before update on crm.ai_drafts for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.ai_drafts;
create trigger _800_audit after insert or update or delete on crm.ai_drafts for each row execute function crm_private.tg_audit('context', 'body');

-- A new draft queues the organization's ai:draft run (which writes every pending draft).
create or replace function crm_private.tg_ai_draft_requested() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  -- Drafts are asked for by people (draftEmail); rows loaded without a principal are not queued.
  perform crm_private.enqueue_tenant_job('ai:draft', o, '{}'::jsonb)
     from (select distinct organization_id as o from new_rows where crm.current_user_id() is not null) x;
  return null;
end
$$;
drop trigger if exists _600_draft on crm.ai_drafts;
create trigger _600_draft after insert on crm.ai_drafts referencing new table as new_rows
  for each statement execute function crm_private.tg_ai_draft_requested();

-- The context of a draft, read as the caller (row-level security applies): the customer, the contact
-- to write to, the deal, the latest notes, open and recent tasks and the last orders. Model output
-- never comes back into SQL: drafts are stored as text.
create or replace function crm.ai_draft_context(customer_id uuid, contact_id uuid, deal_id uuid) returns jsonb
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with subject as (
    select coalesce(d.customer_id, ct.customer_id, ai_draft_context.customer_id) as customer_id,
           coalesce(ai_draft_context.contact_id, d.contact_id) as contact_id, d.id as deal_id
      from (select 1) one
      left join crm.deals d on d.id = ai_draft_context.deal_id
      left join crm.contacts ct on ct.id = ai_draft_context.contact_id
  )
  select jsonb_strip_nulls(jsonb_build_object(
    'organization', (select o.name from crm.organizations o where o.id = crm.current_org_id()),
    'sender', (select u.full_name from crm.users u where u.id = crm.current_user_id()),
    'customer', (select jsonb_build_object('name', c.name, 'kind', c.kind, 'status', c.status, 'industry', c.industry,
                                           'companySize', c.company_size, 'leadScore', c.lead_score)
                   from crm.customers c where c.id = s.customer_id),
    'contact', (select jsonb_build_object('firstName', ct.first_name, 'lastName', ct.last_name, 'title', ct.title)
                  from crm.contacts ct
                 where ct.id = coalesce(s.contact_id,
                                        (select p.id from crm.contacts p where p.customer_id = s.customer_id and p.is_primary limit 1))),
    'deal', (select jsonb_build_object('name', d.name, 'stage', st.name, 'amount', d.amount, 'currency', d.currency,
                                       'expectedCloseDate', d.expected_close_date)
               from crm.deals d join crm.pipeline_stages st on st.id = d.stage_id where d.id = s.deal_id),
    'recentNotes', (select jsonb_agg(jsonb_build_object('at', n.created_at::date, 'text', left(n.content, 500)) order by n.created_at desc)
                      from (select * from crm.notes n where n.customer_id = s.customer_id order by n.created_at desc limit 5) n),
    'openTasks', (select jsonb_agg(jsonb_build_object('title', t.title, 'type', t.type, 'due', t.due_at::date) order by t.due_at nulls last)
                    from (select * from crm.tasks t where t.customer_id = s.customer_id and t.status not in ('completed', 'cancelled')
                           order by t.due_at nulls last limit 5) t),
    'recentlyDone', (select jsonb_agg(jsonb_build_object('title', t.title, 'type', t.type, 'completed', t.completed_at::date) order by t.completed_at desc)
                       from (select * from crm.tasks t where t.customer_id = s.customer_id and t.status = 'completed'
                              order by t.completed_at desc limit 3) t),
    'lastOrders', (select jsonb_agg(jsonb_build_object('number', o.order_number, 'at', o.ordered_at::date, 'amount', o.final_amount,
                                                       'currency', o.currency, 'status', o.status) order by o.ordered_at desc)
                     from (select * from crm.orders o where o.customer_id = s.customer_id order by o.ordered_at desc limit 3) o)))
    from subject s
$$;
comment on function crm.ai_draft_context(uuid, uuid, uuid) is E'@behavior -queryField\nThe context of an e-mail draft, read under the caller''s row-level security.';
grant execute on function crm.ai_draft_context(uuid, uuid, uuid) to crm_user;

-- draftEmail: exactly one of customerId, contactId, dealId; a purpose; a tone (friendly, formal,
-- concise). Returns the pending draft; read it again (aiDraft) once its status is ready.
create or replace function crm.draft_email(purpose text, tone text default 'friendly', customer_id uuid default null,
                                           contact_id uuid default null, deal_id uuid default null) returns crm.ai_drafts
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.ai_drafts;
begin
  if crm.current_user_id() is null then
    raise exception 'Sign in first.' using errcode = 'CRUNA';
  end if;
  if not crm.has_permission('ai:use') then
    raise exception 'You need the ai:use permission to do this.' using errcode = 'CRFBD';
  end if;
  if num_nonnulls(draft_email.customer_id, draft_email.contact_id, draft_email.deal_id) <> 1 then
    raise exception 'Give exactly one of customerId, contactId and dealId.' using errcode = 'CRVAL', column = 'customer_id';
  end if;
  if length(btrim(coalesce(draft_email.purpose, ''))) not between 1 and 500 then
    raise exception 'Say what the e-mail is for (1 to 500 characters).' using errcode = 'CRVAL', column = 'purpose';
  end if;
  if coalesce(draft_email.tone, '') not in ('friendly', 'formal', 'concise') then
    raise exception 'The tone is friendly, formal or concise.' using errcode = 'CRVAL', column = 'tone';
  end if;
  -- Visibility under the caller's row-level security: what they cannot see does not exist for them.
  if draft_email.customer_id is not null and not exists (select 1 from crm.customers c where c.id = draft_email.customer_id) then
    raise exception 'No such customer.' using errcode = 'CRNFD', column = 'customer_id';
  elsif draft_email.contact_id is not null and not exists (select 1 from crm.contacts c where c.id = draft_email.contact_id) then
    raise exception 'No such contact.' using errcode = 'CRNFD', column = 'contact_id';
  elsif draft_email.deal_id is not null and not exists (select 1 from crm.deals x where x.id = draft_email.deal_id) then
    raise exception 'No such deal.' using errcode = 'CRNFD', column = 'deal_id';
  end if;
  insert into crm.ai_drafts (customer_id, contact_id, deal_id, purpose, tone, context)
  values (draft_email.customer_id, draft_email.contact_id, draft_email.deal_id, btrim(draft_email.purpose), draft_email.tone,
          crm.ai_draft_context(draft_email.customer_id, draft_email.contact_id, draft_email.deal_id)
            || jsonb_build_object('purpose', btrim(draft_email.purpose), 'tone', draft_email.tone))
  returning * into d;
  return d;
end
$$;
comment on function crm.draft_email(text, text, uuid, uuid, uuid) is 'Ask for an e-mail draft to a customer, contact or deal (ai:use). Returns the draft, pending until the ai:draft job has written it (seconds).';
grant execute on function crm.draft_email(text, text, uuid, uuid, uuid) to crm_user;

--! split: 645-ai-insights.sql
-- Customer insights: sentiment of the recent notes, a short summary and a next-best-action from
-- documented rules. The local scorer is a lexicon in SQL; with Amazon Bedrock configured (and the
-- organization not opted out), the ai:insights job stores the model's sentiment and summary here and
-- customerInsights shows them while they are current. docs/ai.md.

-- The cloud model's reading of a customer's recent notes (written by the ai:insights job).
create table if not exists crm.ai_insights (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  sentiment float8 not null constraint ai_insights_sentiment_range check (sentiment between -1 and 1),
  summary text not null constraint ai_insights_summary_length check (length(summary) <= 2000),
  model text not null constraint ai_insights_model_length check (length(model) <= 200),
  note_ids uuid[] not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint ai_insights_customer_unique unique (organization_id, customer_id),
  constraint ai_insights_organization_id_id_key unique (organization_id, id),
  constraint ai_insights_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade
);
comment on table crm.ai_insights is E'@behavior -insert -update -delete\nThe cloud model''s sentiment and summary of a customer''s recent notes (noteIds: the notes it read). customerInsights uses them while no newer note exists and the reader can see every note they came from.';
comment on column crm.ai_insights.organization_id is E'@behavior -insert -update';

alter table crm.ai_insights enable row level security;
drop policy if exists ai_insights_select on crm.ai_insights;
create policy ai_insights_select on crm.ai_insights for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.customers c where c.id = ai_insights.customer_id));
drop policy if exists ai_insights_write on crm.ai_insights;
create policy ai_insights_write on crm.ai_insights for all
  using (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id))
  with check (organization_id = (select crm.current_org_id()) and (select crm.current_user_id()) = crm.system_principal_id(organization_id));
grant select on crm.ai_insights to crm_user;
grant insert (customer_id, sentiment, summary, model, note_ids), update (sentiment, summary, model, note_ids) on crm.ai_insights to crm_user;
select crm_private.guard_references('crm.ai_insights');
drop trigger if exists _100_updated_at on crm.ai_insights;
create trigger _100_updated_at before update on crm.ai_insights for each row execute function crm_private.tg_set_updated_at();

-- New or edited notes queue the organization's ai:insights run a minute later (a burst joins it).
create or replace function crm_private.tg_ai_insights_notes() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform graphile_worker.add_job('ai:insights', json_build_object('organizationId', o),
                                  job_key := 'tenant:ai:insights:' || o::text, run_at := now() + interval '1 minute',
                                  max_attempts := 5, job_key_mode := 'preserve_run_at')
     from (select distinct r.organization_id as o from new_rows r
            where r.customer_id is not null and crm.current_user_id() is not null
              and crm.current_user_id() is distinct from crm.system_principal_id(r.organization_id)) x;
  return null;
end
$$;
drop trigger if exists _610_ai_insights_insert on crm.notes;
create trigger _610_ai_insights_insert after insert on crm.notes referencing new table as new_rows
  for each statement execute function crm_private.tg_ai_insights_notes();
drop trigger if exists _610_ai_insights_update on crm.notes;
create trigger _610_ai_insights_update after update on crm.notes referencing new table as new_rows
  for each statement execute function crm_private.tg_ai_insights_notes();

-- Lexicon-based sentiment of a text, from -1 (negative) to 1 (positive): the sum of the polarities
-- (-3…3) of the words found, a negation in the three words before a word turning it (× -0.5),
-- normalised as sum / sqrt(sum² + 15) (as VADER does). Business words; English only.
create or replace function crm.text_sentiment(content text) returns float8
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  with lexicon (word, polarity) as (values
    ('great', 3), ('excellent', 3), ('love', 3), ('loves', 3), ('delighted', 3), ('thrilled', 3), ('perfect', 3), ('fantastic', 3),
    ('signed', 2), ('happy', 2), ('pleased', 2), ('satisfied', 2), ('impressed', 2), ('interested', 2), ('excited', 2),
    ('keen', 2), ('eager', 2), ('enthusiastic', 2), ('approved', 2), ('agreed', 2), ('success', 2), ('successful', 2),
    ('renew', 2), ('renewal', 1), ('expand', 2), ('upgrade', 2), ('recommend', 2), ('recommended', 2), ('win', 2), ('won', 2),
    ('good', 1), ('nice', 1), ('positive', 1), ('promising', 1), ('ready', 1), ('helpful', 1), ('thanks', 1), ('thank', 1),
    ('glad', 1), ('like', 1), ('likes', 1), ('fine', 1), ('resolved', 1), ('budget', 1), ('demo', 1), ('yes', 1),
    ('angry', -3), ('furious', -3), ('terrible', -3), ('awful', -3), ('worst', -3), ('terminate', -3), ('lawsuit', -3),
    ('unhappy', -2), ('frustrated', -2), ('disappointed', -2), ('complaint', -2), ('complained', -2), ('complaints', -2),
    ('cancel', -2), ('cancelled', -2), ('cancellation', -2), ('churn', -2), ('refund', -2), ('broken', -2), ('bad', -2),
    ('poor', -2), ('worse', -2), ('escalate', -2), ('escalated', -2), ('escalation', -2), ('unresponsive', -2), ('lost', -2),
    ('problem', -1), ('problems', -1), ('issue', -1), ('issues', -1), ('bug', -1), ('bugs', -1), ('late', -1), ('delay', -1),
    ('delayed', -1), ('expensive', -1), ('slow', -1), ('concern', -1), ('concerns', -1), ('concerned', -1), ('risk', -1),
    ('competitor', -1), ('ignored', -1), ('unclear', -1), ('confused', -1), ('difficult', -1), ('no', -1)
  ), words as (
    select w.word, w.pos from regexp_split_to_table(lower(coalesce(content, '')), '[^a-z'']+') with ordinality as w (word, pos)
     where w.word <> ''
  ), scored as (
    select l.polarity * case when exists (
             select 1 from words n
              where n.pos between w.pos - 3 and w.pos - 1
                and n.word in ('not', 'no', 'never', 'without', 'hardly', 'barely', 'don''t', 'doesn''t', 'didn''t', 'isn''t',
                               'wasn''t', 'aren''t', 'won''t', 'can''t', 'cannot', 'nothing'))
           then -0.5 else 1 end as p
      from words w join lexicon l on l.word = w.word
  )
  select coalesce((select sum(p) / sqrt(sum(p) ^ 2 + 15) from scored), 0)::float8
$$;
comment on function crm.text_sentiment(text) is E'@behavior -queryField\nLexicon-based sentiment of a text, -1 to 1 (docs/ai.md).';
grant execute on function crm.text_sentiment(text) to crm_user;

drop type if exists crm.customer_insight cascade;
create type crm.customer_insight as (
  customer_id uuid,
  sentiment float8,
  sentiment_label text,
  notes_considered int,
  summary text,
  next_best_action text,
  action_reason text,
  provider text,
  model text,
  generated_at timestamptz
);
comment on type crm.customer_insight is 'What the recent notes say (sentiment -1…1 and its label: positive, neutral, negative), a short summary, and a suggested next step (actionReason: overdue_task, stalled_deal, negative_sentiment, inactive, hot_lead or follow_up). provider: local (lexicon, rules) or bedrock (the model''s sentiment and summary).';

-- customerInsights: read under the caller's row-level security, computed on the spot. Notes
-- considered: the latest 10 of the last 90 days attached to the customer.
create or replace function crm.customer_insights(customer_id uuid) returns crm.customer_insight
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.customers;
  r crm.customer_insight;
  note_ids uuid[];
  latest_note text;
  overdue record;
  stalled record;
  open_deal record;
  open_tasks int;
  last_touch timestamptz;
  idle_days int;
  model crm.ai_insights;
begin
  if not crm.has_permission('ai:use') then
    raise exception 'You need the ai:use permission to do this.' using errcode = 'CRFBD';
  end if;
  select * into c from crm.customers x where x.id = customer_insights.customer_id;
  if c.id is null then
    raise exception 'No such customer.' using errcode = 'CRNFD', column = 'customer_id';
  end if;
  r.customer_id := c.id;
  r.generated_at := now();
  select array_agg(n.id order by n.created_at desc), avg(crm.text_sentiment(n.content)), count(*),
         (array_agg(left(n.content, 160) order by n.created_at desc))[1]
    into note_ids, r.sentiment, r.notes_considered, latest_note
    from (select * from crm.notes n where n.customer_id = c.id and n.created_at > now() - interval '90 days'
           order by n.created_at desc limit 10) n;
  r.sentiment := round(coalesce(r.sentiment, 0)::numeric, 3)::float8;
  r.provider := 'local';
  r.model := 'lexicon-v1';
  -- The cloud model's reading, when it read exactly these notes and the caller may see all of them.
  select * into model from crm.ai_insights i where i.customer_id = c.id;
  if model.id is not null and model.note_ids = coalesce(note_ids, '{}')
     and (select s.cloud_enabled from crm.ai_settings s where s.organization_id = c.organization_id) then
    r.sentiment := model.sentiment;
    r.provider := 'bedrock';
    r.model := model.model;
    r.summary := model.summary;
  end if;
  r.sentiment_label := case when r.notes_considered = 0 then 'none' when r.sentiment >= 0.2 then 'positive'
                            when r.sentiment <= -0.2 then 'negative' else 'neutral' end;

  select t.title, t.due_at into overdue from crm.tasks t
   where t.customer_id = c.id and t.status not in ('completed', 'cancelled') and t.due_at < now() order by t.due_at limit 1;
  select d.name, extract(day from now() - d.stage_changed_at)::int as idle, st.name as stage into stalled
    from crm.deals d join crm.pipeline_stages st on st.id = d.stage_id
   where d.customer_id = c.id and not st.is_won and not st.is_lost and d.stage_changed_at < now() - interval '30 days'
   order by d.stage_changed_at limit 1;
  select d.name, d.amount, d.currency, st.name as stage into open_deal
    from crm.deals d join crm.pipeline_stages st on st.id = d.stage_id
   where d.customer_id = c.id and not st.is_won and not st.is_lost order by d.amount desc limit 1;
  select count(*) into open_tasks from crm.tasks t where t.customer_id = c.id and t.status not in ('completed', 'cancelled');
  select greatest((select max(t.created_at) from crm.tasks t where t.customer_id = c.id),
                  (select max(n.created_at) from crm.notes n where n.customer_id = c.id),
                  (select max(w.logged_at) from crm.work_logs w where w.customer_id = c.id),
                  (select max(o.ordered_at) from crm.orders o where o.customer_id = c.id),
                  (select max(d.stage_changed_at) from crm.deals d where d.customer_id = c.id))
    into last_touch;
  idle_days := extract(day from now() - coalesce(last_touch, c.created_at))::int;

  if r.summary is null then
    r.summary := concat_ws(' ',
      format('%s %s%s.', initcap(c.status), c.name, coalesce(' (' || nullif(concat_ws(', ', c.industry, c.company_size), '') || ')', '')),
      case when r.notes_considered = 0 then 'No notes in the last 90 days.'
           else format('%s note%s in the last 90 days, %s; the latest: "%s".', r.notes_considered,
                       case when r.notes_considered = 1 then '' else 's' end,
                       case r.sentiment_label when 'positive' then 'mostly positive' when 'negative' then 'mostly negative' else 'neutral' end,
                       latest_note) end,
      case when open_deal.name is not null then format('Open deal "%s" in %s (%s %s).', open_deal.name, open_deal.stage,
                                                       to_char(open_deal.amount, 'FM999,999,999,990.00'), open_deal.currency) end,
      case when open_tasks > 0 then format('%s open task%s.', open_tasks, case when open_tasks = 1 then '' else 's' end) end,
      format('Last activity %s day%s ago.', idle_days, case when idle_days = 1 then '' else 's' end));
  end if;

  -- The next best action: the first rule that holds (docs/ai.md).
  if overdue.title is not null then
    r.next_best_action := format('Do the overdue task "%s" (due %s).', overdue.title, to_char(overdue.due_at, 'YYYY-MM-DD'));
    r.action_reason := 'overdue_task';
  elsif stalled.name is not null then
    r.next_best_action := format('Move the deal "%s" forward: it has been in %s for %s days.', stalled.name, stalled.stage, stalled.idle);
    r.action_reason := 'stalled_deal';
  elsif r.sentiment_label = 'negative' then
    r.next_best_action := format('Call %s: the recent notes are negative.', c.name);
    r.action_reason := 'negative_sentiment';
  elsif idle_days >= 30 then
    r.next_best_action := format('Get back in touch: no activity for %s days.', idle_days);
    r.action_reason := 'inactive';
  elsif c.status in ('lead', 'prospect') and open_deal.name is null and c.lead_score >= 60 then
    r.next_best_action := format('Open a deal: the lead score is %s.', c.lead_score);
    r.action_reason := 'hot_lead';
  else
    r.next_best_action := 'Plan the next step: schedule a follow-up.';
    r.action_reason := 'follow_up';
  end if;
  return r;
end
$$;
comment on function crm.customer_insights(uuid) is 'Sentiment of a customer''s recent notes, a short summary and a suggested next step (ai:use), from what you can see.';
grant execute on function crm.customer_insights(uuid) to crm_user;
