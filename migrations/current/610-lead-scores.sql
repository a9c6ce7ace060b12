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
