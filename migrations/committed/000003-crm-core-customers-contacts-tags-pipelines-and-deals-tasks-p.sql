--! Previous: sha1:27e4e107338b4bcba07a441e63d24c92554d7a6d
--! Hash: sha1:fcd2c4a77cdde265b8a8a3358c779e5995edff94
--! Message: crm core: customers, contacts, tags, pipelines and deals, tasks, projects, work logs, notes, custom fields, soft delete, search, timeline, reports

-- Permissions of this module ----------------------------------------------------------------------
do $$
declare
  am text[] := array['Administrator', 'Sales Manager'];
  amr text[] := array['Administrator', 'Sales Manager', 'Sales Representative'];
begin
  perform crm_private.register_permission('customers:purge', 'Permanently remove deleted customers', '{}');
  perform crm_private.register_permission('deals:create', 'Create deals', amr);
  perform crm_private.register_permission('deals:read_own', 'View deals you own', amr);
  perform crm_private.register_permission('deals:read_team', 'View deals owned by your teams', '{}');
  perform crm_private.register_permission('deals:read_all', 'View all deals', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('deals:update_own', 'Update and move deals you own', amr);
  perform crm_private.register_permission('deals:update_team', 'Update and move deals owned by your teams', '{}');
  perform crm_private.register_permission('deals:update_all', 'Update and move any deal', am);
  perform crm_private.register_permission('deals:reopen', 'Reopen closed deals', am);
  perform crm_private.register_permission('deals:delete', 'Delete deals', am);
  perform crm_private.register_permission('deals:purge', 'Permanently remove deleted deals', '{}');
  perform crm_private.register_permission('projects:purge', 'Permanently remove deleted projects', '{}');
  perform crm_private.register_permission('notes:create', 'Add notes to records you can see', amr);
  perform crm_private.register_permission('notes:delete', 'Delete anyone''s notes (authors may always delete their own)', am);
  perform crm_private.register_permission('notes:purge', 'Permanently remove deleted notes', '{}');
  perform crm_private.register_permission('tags:manage', 'Create, rename and delete tags', am);
  perform crm_private.register_permission('pipelines:manage', 'Edit pipelines, stages and allowed stage transitions', am);
  perform crm_private.register_permission('custom_fields:manage', 'Define custom fields', array['Administrator']);
end
$$;

-- Owner, assignee and manager columns reference memberships (organization_id, user_id): an owner is
-- always a member of the organization, and removing the member clears the column.
-- ================================================================================================
-- Customers
-- ================================================================================================
create table if not exists crm.customers (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  kind text not null default 'company' constraint customers_kind_check check (kind in ('person', 'company')),
  name text not null constraint customers_name_length check (length(btrim(name)) between 1 and 300),
  email citext constraint customers_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' and length(email) <= 320),
  phone text constraint customers_phone_length check (length(phone) <= 50),
  status text not null default 'lead' constraint customers_status_check check (status in ('lead', 'prospect', 'customer', 'churned')),
  owner_id uuid default crm.current_user_id(),
  industry text constraint customers_industry_length check (length(industry) <= 100),
  company_size text constraint customers_company_size_check check (company_size in ('1-10', '11-50', '51-200', '201-500', '501-1000', '1001-5000', '5000+')),
  website text constraint customers_website_format check (website ~* '^https?://' and length(website) <= 2000),
  billing_address jsonb constraint customers_billing_address_object check (jsonb_typeof(billing_address) = 'object'),
  shipping_address jsonb constraint customers_shipping_address_object check (jsonb_typeof(shipping_address) = 'object'),
  annual_revenue numeric(16, 2) constraint customers_annual_revenue_range check (annual_revenue >= 0),
  employee_count int constraint customers_employee_count_range check (employee_count >= 0),
  lead_source text constraint customers_lead_source_length check (length(lead_source) <= 100),
  lead_score int not null default 0 constraint customers_lead_score_range check (lead_score between 0 and 100),
  birth_date date constraint customers_birth_date_range check (birth_date between '1900-01-01' and '2100-01-01'),
  referred_by_id uuid,
  contacted boolean not null default false,
  next_follow_up_at timestamptz,
  custom_fields jsonb not null default '{}'::jsonb constraint customers_custom_fields_object check (jsonb_typeof(custom_fields) = 'object'),
  search_vector tsvector,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint customers_organization_id_id_key unique (organization_id, id),
  constraint customers_owner_fkey foreign key (organization_id, owner_id)
    references crm.organization_memberships (organization_id, user_id) on delete set null (owner_id),
  constraint customers_referred_by_fkey foreign key (organization_id, referred_by_id)
    references crm.customers (organization_id, id) on delete set null (referred_by_id),
  constraint customers_referred_by_not_self check (referred_by_id is distinct from id)
);
create unique index if not exists customers_email_unique on crm.customers (organization_id, email)
  where deleted_at is null and email is not null;
create index if not exists customers_organization_id_owner_id_idx on crm.customers (organization_id, owner_id);
create index if not exists customers_organization_id_status_idx on crm.customers (organization_id, status);
create index if not exists customers_organization_id_created_at_idx on crm.customers (organization_id, created_at);
create index if not exists customers_organization_id_name_idx on crm.customers (organization_id, name);
create index if not exists customers_organization_id_next_follow_up_at_idx on crm.customers (organization_id, next_follow_up_at);
create index if not exists customers_organization_id_lead_score_idx on crm.customers (organization_id, lead_score);
create index if not exists customers_organization_id_referred_by_id_idx on crm.customers (organization_id, referred_by_id);
create index if not exists customers_created_by_idx on crm.customers (created_by);
create index if not exists customers_custom_fields_idx on crm.customers using gin (custom_fields jsonb_path_ops);
create index if not exists customers_search_idx on crm.customers using gin (search_vector);
create index if not exists customers_name_trgm_idx on crm.customers using gin (name gin_trgm_ops);
create index if not exists customers_email_trgm_idx on crm.customers using gin ((email::text) gin_trgm_ops);
comment on table crm.customers is E'@behavior +aggregates -delete\nAn account: a company or a person the organization sells to.';
comment on column crm.customers.organization_id is E'@behavior -insert -update';
comment on column crm.customers.search_vector is E'@behavior -*';
comment on column crm.customers.deleted_at is E'@behavior -insert -update\nSet by delete (soft delete); restoreCustomer brings the record back.';
comment on column crm.customers.created_by is E'@behavior -insert -update';

create table if not exists crm.customer_status_history (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  customer_id uuid not null,
  from_status text,
  to_status text not null,
  changed_by uuid references crm.users (id) on delete set null,
  changed_at timestamptz not null default now(),
  constraint customer_status_history_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade
);
create index if not exists customer_status_history_customer_idx on crm.customer_status_history (organization_id, customer_id, changed_at);
create index if not exists customer_status_history_changed_by_idx on crm.customer_status_history (changed_by);
comment on table crm.customer_status_history is E'@behavior -insert -update -delete\nEvery status change of a customer (lead → prospect → customer → churned …).';

-- ================================================================================================
-- Contacts
-- ================================================================================================
create table if not exists crm.contacts (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  first_name text not null constraint contacts_first_name_length check (length(btrim(first_name)) between 1 and 100),
  last_name text not null default '' constraint contacts_last_name_length check (length(last_name) <= 100),
  email citext constraint contacts_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' and length(email) <= 320),
  phone text constraint contacts_phone_length check (length(phone) <= 50),
  mobile text constraint contacts_mobile_length check (length(mobile) <= 50),
  title text constraint contacts_title_length check (length(title) <= 200),
  department text constraint contacts_department_length check (length(department) <= 200),
  status text not null default 'active' constraint contacts_status_check check (status in ('active', 'inactive', 'bounced')),
  is_primary boolean not null default false,
  social_profiles jsonb not null default '{}'::jsonb constraint contacts_social_profiles_object check (jsonb_typeof(social_profiles) = 'object'),
  communication_preferences jsonb not null default '{}'::jsonb
    constraint contacts_communication_preferences_object check (jsonb_typeof(communication_preferences) = 'object'),
  custom_fields jsonb not null default '{}'::jsonb constraint contacts_custom_fields_object check (jsonb_typeof(custom_fields) = 'object'),
  search_vector tsvector,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint contacts_organization_id_id_key unique (organization_id, id),
  constraint contacts_customer_fkey foreign key (organization_id, customer_id)
    references crm.customers (organization_id, id) on delete cascade
);
-- At most one primary contact per customer (among live contacts).
create unique index if not exists contacts_one_primary on crm.contacts (organization_id, customer_id)
  where is_primary and deleted_at is null;
create index if not exists contacts_organization_id_customer_id_idx on crm.contacts (organization_id, customer_id);
create index if not exists contacts_organization_id_email_idx on crm.contacts (organization_id, email);
create index if not exists contacts_organization_id_last_name_idx on crm.contacts (organization_id, last_name, first_name);
create index if not exists contacts_organization_id_status_idx on crm.contacts (organization_id, status);
create index if not exists contacts_custom_fields_idx on crm.contacts using gin (custom_fields jsonb_path_ops);
create index if not exists contacts_search_idx on crm.contacts using gin (search_vector);
create index if not exists contacts_name_trgm_idx on crm.contacts using gin ((first_name || ' ' || last_name) gin_trgm_ops);
create index if not exists contacts_email_trgm_idx on crm.contacts using gin ((email::text) gin_trgm_ops);
comment on table crm.contacts is E'@behavior -delete\nA person at a customer.';
comment on column crm.contacts.organization_id is E'@behavior -insert -update';
comment on column crm.contacts.search_vector is E'@behavior -*';
comment on column crm.contacts.deleted_at is E'@behavior -insert -update';
comment on column crm.contacts.is_primary is E'@behavior -update\nThe customer''s primary contact (at most one; move it with makePrimaryContact).';

-- ================================================================================================
-- Tags
-- ================================================================================================
create table if not exists crm.tags (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint tags_name_length check (length(btrim(name::text)) between 1 and 60),
  color text not null default '#6b7280' constraint tags_color_format check (color ~ '^#[0-9a-fA-F]{6}$'),
  created_at timestamptz not null default now(),
  constraint tags_name_unique unique (organization_id, name),
  constraint tags_organization_id_id_key unique (organization_id, id)
);
comment on column crm.tags.organization_id is E'@behavior -insert -update';

create table if not exists crm.customer_tags (
  organization_id uuid not null default crm.current_org_id(),
  customer_id uuid not null,
  tag_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (customer_id, tag_id),
  constraint customer_tags_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint customer_tags_tag_fkey foreign key (organization_id, tag_id) references crm.tags (organization_id, id) on delete cascade
);
create index if not exists customer_tags_organization_id_customer_id_idx on crm.customer_tags (organization_id, customer_id);
create index if not exists customer_tags_organization_id_tag_id_idx on crm.customer_tags (organization_id, tag_id);
comment on column crm.customer_tags.organization_id is E'@behavior -insert -update';

create table if not exists crm.contact_tags (
  organization_id uuid not null default crm.current_org_id(),
  contact_id uuid not null,
  tag_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (contact_id, tag_id),
  constraint contact_tags_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete cascade,
  constraint contact_tags_tag_fkey foreign key (organization_id, tag_id) references crm.tags (organization_id, id) on delete cascade
);
create index if not exists contact_tags_organization_id_contact_id_idx on crm.contact_tags (organization_id, contact_id);
create index if not exists contact_tags_organization_id_tag_id_idx on crm.contact_tags (organization_id, tag_id);
comment on column crm.contact_tags.organization_id is E'@behavior -insert -update';

-- ================================================================================================
-- Pipelines, stages, deals
-- ================================================================================================
create table if not exists crm.pipelines (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint pipelines_name_length check (length(btrim(name)) between 1 and 100),
  is_default boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pipelines_name_unique unique (organization_id, name),
  constraint pipelines_organization_id_id_key unique (organization_id, id)
);
create unique index if not exists pipelines_one_default on crm.pipelines (organization_id) where is_default;
comment on column crm.pipelines.organization_id is E'@behavior -insert -update';

create table if not exists crm.pipeline_stages (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id(),
  pipeline_id uuid not null,
  name text not null constraint pipeline_stages_name_length check (length(btrim(name)) between 1 and 100),
  position int not null constraint pipeline_stages_position_range check (position >= 0),
  probability int not null default 0 constraint pipeline_stages_probability_range check (probability between 0 and 100),
  is_won boolean not null default false,
  is_lost boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pipeline_stages_won_or_lost check (not (is_won and is_lost)),
  constraint pipeline_stages_name_unique unique (organization_id, pipeline_id, name),
  constraint pipeline_stages_organization_id_id_key unique (organization_id, id),
  constraint pipeline_stages_pipeline_stage_key unique (organization_id, pipeline_id, id),
  constraint pipeline_stages_pipeline_fkey foreign key (organization_id, pipeline_id)
    references crm.pipelines (organization_id, id) on delete cascade
);
create index if not exists pipeline_stages_organization_id_pipeline_id_position_idx on crm.pipeline_stages (organization_id, pipeline_id, position);
comment on column crm.pipeline_stages.organization_id is E'@behavior -insert -update';
comment on table crm.pipeline_stages is 'A stage of a pipeline, in order (position). A stage in use cannot be deleted until its deals move.';

-- Allowed moves between stages of a pipeline. A pipeline without rows here allows any move.
create table if not exists crm.pipeline_stage_transitions (
  organization_id uuid not null default crm.current_org_id(),
  pipeline_id uuid not null,
  from_stage_id uuid not null,
  to_stage_id uuid not null,
  primary key (from_stage_id, to_stage_id),
  constraint pipeline_stage_transitions_pipeline_fkey foreign key (organization_id, pipeline_id)
    references crm.pipelines (organization_id, id) on delete cascade,
  constraint pipeline_stage_transitions_from_fkey foreign key (organization_id, pipeline_id, from_stage_id)
    references crm.pipeline_stages (organization_id, pipeline_id, id) on delete cascade,
  constraint pipeline_stage_transitions_to_fkey foreign key (organization_id, pipeline_id, to_stage_id)
    references crm.pipeline_stages (organization_id, pipeline_id, id) on delete cascade
);
create index if not exists pipeline_stage_transitions_organization_id_pipeline_id_idx on crm.pipeline_stage_transitions (organization_id, pipeline_id);
create index if not exists pipeline_stage_transitions_from_idx on crm.pipeline_stage_transitions (organization_id, pipeline_id, from_stage_id);
create index if not exists pipeline_stage_transitions_to_idx on crm.pipeline_stage_transitions (organization_id, pipeline_id, to_stage_id);
comment on column crm.pipeline_stage_transitions.organization_id is E'@behavior -insert -update';
comment on table crm.pipeline_stage_transitions is 'Allowed stage moves of a pipeline; without rows, any move is allowed (reopening a closed deal still needs deals:reopen).';

create table if not exists crm.deals (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  contact_id uuid,
  name text not null constraint deals_name_length check (length(btrim(name)) between 1 and 300),
  amount numeric(16, 2) not null default 0 constraint deals_amount_range check (amount >= 0),
  currency text constraint deals_currency_format check (currency ~ '^[A-Z]{3}$'),
  pipeline_id uuid not null,
  stage_id uuid not null,
  probability int constraint deals_probability_range check (probability between 0 and 100),
  expected_close_date date,
  actual_close_date date,
  lost_reason text constraint deals_lost_reason_length check (length(lost_reason) <= 1000),
  source text constraint deals_source_length check (length(source) <= 100),
  owner_id uuid default crm.current_user_id(),
  custom_fields jsonb not null default '{}'::jsonb constraint deals_custom_fields_object check (jsonb_typeof(custom_fields) = 'object'),
  search_vector tsvector,
  stage_changed_at timestamptz not null default now(),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint deals_organization_id_id_key unique (organization_id, id),
  constraint deals_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint deals_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete set null (contact_id),
  constraint deals_pipeline_fkey foreign key (organization_id, pipeline_id) references crm.pipelines (organization_id, id) on delete restrict,
  constraint deals_stage_fkey foreign key (organization_id, pipeline_id, stage_id)
    references crm.pipeline_stages (organization_id, pipeline_id, id) on delete restrict,
  constraint deals_owner_fkey foreign key (organization_id, owner_id)
    references crm.organization_memberships (organization_id, user_id) on delete set null (owner_id)
);
create index if not exists deals_organization_id_customer_id_idx on crm.deals (organization_id, customer_id);
create index if not exists deals_organization_id_contact_id_idx on crm.deals (organization_id, contact_id);
create index if not exists deals_organization_id_pipeline_id_stage_id_idx on crm.deals (organization_id, pipeline_id, stage_id);
create index if not exists deals_organization_id_stage_id_idx on crm.deals (organization_id, stage_id);
create index if not exists deals_organization_id_owner_id_idx on crm.deals (organization_id, owner_id);
create index if not exists deals_organization_id_expected_close_date_idx on crm.deals (organization_id, expected_close_date);
create index if not exists deals_organization_id_actual_close_date_idx on crm.deals (organization_id, actual_close_date);
create index if not exists deals_organization_id_amount_idx on crm.deals (organization_id, amount);
create index if not exists deals_organization_id_created_at_idx on crm.deals (organization_id, created_at);
create index if not exists deals_created_by_idx on crm.deals (created_by);
create index if not exists deals_custom_fields_idx on crm.deals using gin (custom_fields jsonb_path_ops);
create index if not exists deals_search_idx on crm.deals using gin (search_vector);
create index if not exists deals_name_trgm_idx on crm.deals using gin (name gin_trgm_ops);
comment on table crm.deals is E'@behavior +aggregates +groupedAggregates -delete\nA sales opportunity. Its stage changes only through moveDealStage.';
comment on column crm.deals.organization_id is E'@behavior -insert -update';
comment on column crm.deals.search_vector is E'@behavior -*';
comment on column crm.deals.deleted_at is E'@behavior -insert -update';
comment on column crm.deals.created_by is E'@behavior -insert -update';
comment on column crm.deals.stage_changed_at is E'@behavior -insert -update';
comment on column crm.deals.actual_close_date is E'@behavior -insert -update\nStamped when the deal reaches a won or lost stage.';
comment on column crm.deals.stage_id is E'@behavior -update\n@hasDefault\nThe stage (defaults to the first open stage of the pipeline); change it with moveDealStage.';
comment on column crm.deals.pipeline_id is E'@behavior -update\n@hasDefault\nThe pipeline (defaults to the organization''s default pipeline).';

create table if not exists crm.deal_stage_history (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  deal_id uuid not null,
  from_stage_id uuid,
  to_stage_id uuid not null,
  changed_by uuid references crm.users (id) on delete set null,
  changed_at timestamptz not null default now(),
  constraint deal_stage_history_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete cascade,
  constraint deal_stage_history_from_fkey foreign key (organization_id, from_stage_id) references crm.pipeline_stages (organization_id, id) on delete set null (from_stage_id),
  constraint deal_stage_history_to_fkey foreign key (organization_id, to_stage_id) references crm.pipeline_stages (organization_id, id) on delete cascade
);
create index if not exists deal_stage_history_deal_idx on crm.deal_stage_history (organization_id, deal_id, changed_at);
create index if not exists deal_stage_history_from_idx on crm.deal_stage_history (organization_id, from_stage_id);
create index if not exists deal_stage_history_to_idx on crm.deal_stage_history (organization_id, to_stage_id);
create index if not exists deal_stage_history_changed_by_idx on crm.deal_stage_history (changed_by);
comment on table crm.deal_stage_history is E'@behavior -insert -update -delete +aggregates +groupedAggregates\nEvery stage move of a deal, for velocity and win/loss analysis.';

create table if not exists crm.deal_tags (
  organization_id uuid not null default crm.current_org_id(),
  deal_id uuid not null,
  tag_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (deal_id, tag_id),
  constraint deal_tags_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete cascade,
  constraint deal_tags_tag_fkey foreign key (organization_id, tag_id) references crm.tags (organization_id, id) on delete cascade
);
create index if not exists deal_tags_organization_id_deal_id_idx on crm.deal_tags (organization_id, deal_id);
create index if not exists deal_tags_organization_id_tag_id_idx on crm.deal_tags (organization_id, tag_id);
comment on column crm.deal_tags.organization_id is E'@behavior -insert -update';

-- ================================================================================================
-- Projects, tasks, work logs, notes
-- ================================================================================================
create table if not exists crm.projects (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  customer_id uuid not null,
  deal_id uuid,
  name text not null constraint projects_name_length check (length(btrim(name)) between 1 and 300),
  description text not null default '' constraint projects_description_length check (length(description) <= 20000),
  status text not null default 'planned' constraint projects_status_check check (status in ('planned', 'active', 'on_hold', 'completed', 'cancelled')),
  priority text not null default 'medium' constraint projects_priority_check check (priority in ('low', 'medium', 'high', 'urgent')),
  start_date date,
  due_date date,
  completed_at timestamptz,
  estimated_hours numeric(10, 2) constraint projects_estimated_hours_range check (estimated_hours >= 0),
  actual_hours numeric(10, 2) not null default 0,
  manager_id uuid default crm.current_user_id(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint projects_dates_order check (due_date is null or start_date is null or due_date >= start_date),
  constraint projects_organization_id_id_key unique (organization_id, id),
  constraint projects_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint projects_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete set null (deal_id),
  constraint projects_manager_fkey foreign key (organization_id, manager_id)
    references crm.organization_memberships (organization_id, user_id) on delete set null (manager_id)
);
create index if not exists projects_organization_id_customer_id_idx on crm.projects (organization_id, customer_id);
create index if not exists projects_organization_id_deal_id_idx on crm.projects (organization_id, deal_id);
create index if not exists projects_organization_id_manager_id_idx on crm.projects (organization_id, manager_id);
create index if not exists projects_organization_id_status_idx on crm.projects (organization_id, status);
create index if not exists projects_organization_id_due_date_idx on crm.projects (organization_id, due_date);
comment on table crm.projects is E'@behavior -delete\nWork delivered for a customer.';
comment on column crm.projects.organization_id is E'@behavior -insert -update';
comment on column crm.projects.actual_hours is E'@behavior -insert -update\nSum of the work logged on the project.';
comment on column crm.projects.deleted_at is E'@behavior -insert -update';

create table if not exists crm.tasks (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  type text not null default 'todo' constraint tasks_type_check check (type in ('call', 'email', 'meeting', 'todo', 'follow_up', 'demo')),
  title text not null constraint tasks_title_length check (length(btrim(title)) between 1 and 300),
  description text not null default '' constraint tasks_description_length check (length(description) <= 20000),
  status text not null default 'not_started'
    constraint tasks_status_check check (status in ('not_started', 'in_progress', 'under_review', 'completed', 'cancelled')),
  priority text not null default 'medium' constraint tasks_priority_check check (priority in ('low', 'medium', 'high', 'urgent')),
  due_at timestamptz,
  completed_at timestamptz,
  assignee_id uuid default crm.current_user_id(),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  customer_id uuid,
  contact_id uuid,
  deal_id uuid,
  project_id uuid,
  estimated_hours numeric(10, 2) constraint tasks_estimated_hours_range check (estimated_hours >= 0),
  is_recurring boolean not null default false,
  recurrence_interval interval constraint tasks_recurrence_interval_range check (recurrence_interval >= interval '1 hour'),
  last_triggered_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint tasks_recurrence_complete check (not is_recurring or recurrence_interval is not null),
  constraint tasks_organization_id_id_key unique (organization_id, id),
  constraint tasks_assignee_fkey foreign key (organization_id, assignee_id)
    references crm.organization_memberships (organization_id, user_id) on delete set null (assignee_id),
  constraint tasks_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint tasks_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete set null (contact_id),
  constraint tasks_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete set null (deal_id),
  constraint tasks_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete set null (project_id)
);
create index if not exists tasks_organization_id_assignee_id_status_due_at_idx on crm.tasks (organization_id, assignee_id, status, due_at);
create index if not exists tasks_organization_id_status_idx on crm.tasks (organization_id, status);
create index if not exists tasks_organization_id_due_at_idx on crm.tasks (organization_id, due_at);
create index if not exists tasks_organization_id_priority_idx on crm.tasks (organization_id, priority);
create index if not exists tasks_organization_id_customer_id_idx on crm.tasks (organization_id, customer_id);
create index if not exists tasks_organization_id_contact_id_idx on crm.tasks (organization_id, contact_id);
create index if not exists tasks_organization_id_deal_id_idx on crm.tasks (organization_id, deal_id);
create index if not exists tasks_organization_id_project_id_idx on crm.tasks (organization_id, project_id);
create index if not exists tasks_organization_id_created_by_idx on crm.tasks (organization_id, created_by);
create index if not exists tasks_created_by_idx on crm.tasks (created_by);
create index if not exists tasks_recurring_idx on crm.tasks (organization_id, last_triggered_at) where is_recurring;
comment on table crm.tasks is E'@behavior +aggregates +groupedAggregates\nActivities and to-dos (calls, emails, meetings, follow-ups, demos).';
comment on column crm.tasks.organization_id is E'@behavior -insert -update';
comment on column crm.tasks.created_by is E'@behavior -insert -update';
comment on column crm.tasks.completed_at is E'@behavior -insert -update\nStamped when the task is completed.';
comment on column crm.tasks.assignee_id is E'@behavior -update\nWho works on it; reassign with assignTask (tasks:assign).';
comment on column crm.tasks.status is E'@behavior -update\nWorkflow: not_started → in_progress → under_review → completed, or cancelled; change it with updateTaskStatus.';

create table if not exists crm.task_dependencies (
  organization_id uuid not null default crm.current_org_id(),
  task_id uuid not null,
  depends_on_task_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (task_id, depends_on_task_id),
  constraint task_dependencies_not_self check (task_id <> depends_on_task_id),
  constraint task_dependencies_task_fkey foreign key (organization_id, task_id) references crm.tasks (organization_id, id) on delete cascade,
  constraint task_dependencies_depends_on_fkey foreign key (organization_id, depends_on_task_id) references crm.tasks (organization_id, id) on delete cascade
);
create index if not exists task_dependencies_organization_id_task_id_idx on crm.task_dependencies (organization_id, task_id);
create index if not exists task_dependencies_organization_id_depends_on_idx on crm.task_dependencies (organization_id, depends_on_task_id);
comment on column crm.task_dependencies.organization_id is E'@behavior -insert -update';
comment on table crm.task_dependencies is 'Task A depends on task B (finish-to-start), for Gantt views. Cycles are refused.';

create table if not exists crm.work_logs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  user_id uuid not null default crm.current_user_id(),
  customer_id uuid not null,
  task_id uuid,
  project_id uuid,
  minutes int not null constraint work_logs_minutes_range check (minutes between 1 and 1440),
  description text not null default '' constraint work_logs_description_length check (length(description) <= 5000),
  logged_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint work_logs_organization_id_id_key unique (organization_id, id),
  constraint work_logs_user_fkey foreign key (organization_id, user_id)
    references crm.organization_memberships (organization_id, user_id) on delete cascade,
  constraint work_logs_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint work_logs_task_fkey foreign key (organization_id, task_id) references crm.tasks (organization_id, id) on delete set null (task_id),
  constraint work_logs_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete set null (project_id)
);
create index if not exists work_logs_organization_id_user_id_logged_at_idx on crm.work_logs (organization_id, user_id, logged_at);
create index if not exists work_logs_organization_id_logged_at_idx on crm.work_logs (organization_id, logged_at);
create index if not exists work_logs_organization_id_customer_id_idx on crm.work_logs (organization_id, customer_id);
create index if not exists work_logs_organization_id_task_id_idx on crm.work_logs (organization_id, task_id);
create index if not exists work_logs_organization_id_project_id_idx on crm.work_logs (organization_id, project_id);
comment on table crm.work_logs is E'@behavior +aggregates +groupedAggregates\nTime spent by a member on a customer (optionally on a task or project).';
comment on column crm.work_logs.organization_id is E'@behavior -insert -update';
comment on column crm.work_logs.user_id is E'@behavior -insert -update';

create table if not exists crm.notes (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  content text not null constraint notes_content_length check (length(btrim(content)) between 1 and 50000),
  is_pinned boolean not null default false,
  author_id uuid default crm.current_user_id() references crm.users (id) on delete set null,
  customer_id uuid,
  contact_id uuid,
  deal_id uuid,
  project_id uuid,
  search_vector tsvector,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint notes_attached check (num_nonnulls(customer_id, contact_id, deal_id, project_id) >= 1),
  constraint notes_organization_id_id_key unique (organization_id, id),
  constraint notes_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint notes_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete cascade,
  constraint notes_deal_fkey foreign key (organization_id, deal_id) references crm.deals (organization_id, id) on delete cascade,
  constraint notes_project_fkey foreign key (organization_id, project_id) references crm.projects (organization_id, id) on delete cascade
);
create index if not exists notes_organization_id_customer_id_idx on crm.notes (organization_id, customer_id, is_pinned, created_at);
create index if not exists notes_organization_id_contact_id_idx on crm.notes (organization_id, contact_id);
create index if not exists notes_organization_id_deal_id_idx on crm.notes (organization_id, deal_id);
create index if not exists notes_organization_id_project_id_idx on crm.notes (organization_id, project_id);
create index if not exists notes_author_id_idx on crm.notes (author_id);
create index if not exists notes_search_idx on crm.notes using gin (search_vector);
comment on column crm.notes.organization_id is E'@behavior -insert -update';
comment on column crm.notes.author_id is E'@behavior -insert -update';
comment on column crm.notes.search_vector is E'@behavior -*';
comment on column crm.notes.deleted_at is E'@behavior -insert -update';
comment on table crm.notes is E'@behavior -delete\nA note on a customer, contact, deal or project (at least one). Editable by its author.';

-- ================================================================================================
-- Custom fields
-- ================================================================================================
create table if not exists crm.custom_field_definitions (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  entity text not null constraint custom_field_definitions_entity_check check (entity in ('customer', 'contact', 'deal')),
  key text not null constraint custom_field_definitions_key_format check (key ~ '^[a-z][a-z0-9_]{0,62}$'),
  label text not null constraint custom_field_definitions_label_length check (length(btrim(label)) between 1 and 100),
  field_type text not null constraint custom_field_definitions_field_type_check
    check (field_type in ('text', 'number', 'date', 'boolean', 'select', 'multiselect')),
  is_required boolean not null default false,
  options jsonb not null default '[]'::jsonb constraint custom_field_definitions_options_array check (jsonb_typeof(options) = 'array'),
  position int not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint custom_field_definitions_options_needed check (field_type not in ('select', 'multiselect') or jsonb_array_length(options) > 0),
  constraint custom_field_definitions_key_unique unique (organization_id, entity, key)
);
comment on column crm.custom_field_definitions.organization_id is E'@behavior -insert -update';
comment on table crm.custom_field_definitions is 'The custom fields of customers, contacts and deals; their `customFields` values are checked against these.';

-- ================================================================================================
-- Behaviour: timestamps, custom fields, search vectors, workflows, soft delete, audit
-- ================================================================================================
do $$
declare
  t text;
begin
  foreach t in array array['customers', 'contacts', 'pipelines', 'pipeline_stages', 'deals', 'projects', 'tasks',
                           'work_logs', 'notes', 'custom_field_definitions'] loop
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
  end loop;
end
$$;

-- The text search configuration of the organization (settings.search_language, default 'simple').
create or replace function crm_private.search_config(org uuid) returns regconfig
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(
    (select c.oid::regconfig from crm.organizations o join pg_ts_config c on c.cfgname = o.settings->>'search_language'
      where o.id = org),
    'simple'::regconfig)
$$;

-- pg_input_is_valid exists from PostgreSQL 16 only; this works on 15 too.
create or replace function crm_private.is_date(v text) returns boolean
  language plpgsql immutable
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform v::date;
  return true;
exception when others then
  return false;
end
$$;

-- Custom field values must match their definitions: no unknown keys, right types, required present.
create or replace function crm_private.tg_validate_custom_fields() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  ent text := tg_argv[0];
  d crm.custom_field_definitions;
  k text;
  v jsonb;
  ok boolean;
begin
  for k in select jsonb_object_keys(new.custom_fields) loop
    if not exists (select 1 from crm.custom_field_definitions x where x.organization_id = new.organization_id and x.entity = ent and x.key = k) then
      raise exception 'Unknown custom field "%".', k using errcode = 'CRVAL', column = 'customFields.' || k;
    end if;
  end loop;
  for d in select * from crm.custom_field_definitions x where x.organization_id = new.organization_id and x.entity = ent loop
    v := new.custom_fields->d.key;
    if v is null or v = 'null'::jsonb then
      if d.is_required then
        raise exception 'The custom field "%" is required.', d.label using errcode = 'CRVAL', column = 'customFields.' || d.key;
      end if;
      continue;
    end if;
    ok := case d.field_type
      when 'text' then jsonb_typeof(v) = 'string'
      when 'number' then jsonb_typeof(v) = 'number'
      when 'boolean' then jsonb_typeof(v) = 'boolean'
      when 'date' then jsonb_typeof(v) = 'string' and (v #>> '{}') ~ '^\d{4}-\d{2}-\d{2}$' and crm_private.is_date(v #>> '{}')
      when 'select' then jsonb_typeof(v) = 'string' and d.options @> jsonb_build_array(v)
      when 'multiselect' then jsonb_typeof(v) = 'array' and d.options @> v
        and not exists (select 1 from jsonb_array_elements(v) e where jsonb_typeof(e) <> 'string')
    end;
    if not ok then
      raise exception 'The custom field "%" must be a % value%.', d.label, d.field_type,
        case when d.field_type in ('select', 'multiselect') then ' from ' || d.options::text else '' end
        using errcode = 'CRVAL', column = 'customFields.' || d.key;
    end if;
  end loop;
  return new;
end
$$;
drop trigger if exists _150_custom_fields on crm.customers;
create trigger _150_custom_fields before insert or update of custom_fields on crm.customers
  for each row execute function crm_private.tg_validate_custom_fields('customer');
drop trigger if exists _150_custom_fields on crm.contacts;
create trigger _150_custom_fields before insert or update of custom_fields on crm.contacts
  for each row execute function crm_private.tg_validate_custom_fields('contact');
drop trigger if exists _150_custom_fields on crm.deals;
create trigger _150_custom_fields before insert or update of custom_fields on crm.deals
  for each row execute function crm_private.tg_validate_custom_fields('deal');

-- Search vectors (names weigh most; language from the organization's settings).
create or replace function crm_private.tg_search_vector() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  cfg regconfig := crm_private.search_config(new.organization_id);
begin
  case tg_table_name
    when 'customers' then
      new.search_vector := setweight(to_tsvector(cfg, coalesce(new.name, '')), 'A')
        || setweight(to_tsvector('simple', coalesce(new.email::text, '') || ' ' || coalesce(new.phone, '')), 'B')
        || setweight(to_tsvector(cfg, coalesce(new.industry, '') || ' ' || coalesce(new.website, '')), 'C');
    when 'contacts' then
      new.search_vector := setweight(to_tsvector(cfg, new.first_name || ' ' || new.last_name), 'A')
        || setweight(to_tsvector('simple', coalesce(new.email::text, '') || ' ' || coalesce(new.phone, '') || ' ' || coalesce(new.mobile, '')), 'B')
        || setweight(to_tsvector(cfg, coalesce(new.title, '') || ' ' || coalesce(new.department, '')), 'C');
    when 'deals' then
      new.search_vector := setweight(to_tsvector(cfg, new.name), 'A') || setweight(to_tsvector(cfg, coalesce(new.source, '')), 'C');
    when 'notes' then
      new.search_vector := to_tsvector(cfg, new.content);
  end case;
  return new;
end
$$;
drop trigger if exists _160_search on crm.customers;
create trigger _160_search before insert or update of name, email, phone, industry, website on crm.customers
  for each row execute function crm_private.tg_search_vector();
drop trigger if exists _160_search on crm.contacts;
create trigger _160_search before insert or update of first_name, last_name, email, phone, mobile, title, department on crm.contacts
  for each row execute function crm_private.tg_search_vector();
drop trigger if exists _160_search on crm.deals;
create trigger _160_search before insert or update of name, source on crm.deals
  for each row execute function crm_private.tg_search_vector();
drop trigger if exists _160_search on crm.notes;
create trigger _160_search before insert or update of content on crm.notes
  for each row execute function crm_private.tg_search_vector();

-- Customer status transitions are recorded.
create or replace function crm_private.tg_customer_status_history() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' or new.status is distinct from old.status then
    insert into crm.customer_status_history (organization_id, customer_id, from_status, to_status, changed_by)
    values (new.organization_id, new.id, case when tg_op = 'UPDATE' then old.status end, new.status, crm.current_user_id());
  end if;
  return null;
end
$$;
drop trigger if exists _300_status_history on crm.customers;
create trigger _300_status_history after insert or update of status on crm.customers
  for each row execute function crm_private.tg_customer_status_history();

-- Deals: pipeline and stage defaults, probability from the stage, currency from the organization.
create or replace function crm_private.tg_deal_defaults() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  st crm.pipeline_stages;
begin
  if new.pipeline_id is null then
    select id into new.pipeline_id from crm.pipelines where organization_id = new.organization_id and is_default;
  end if;
  if new.stage_id is null then
    select id into new.stage_id from crm.pipeline_stages
     where organization_id = new.organization_id and pipeline_id = new.pipeline_id and not is_won and not is_lost
     order by position limit 1;
  end if;
  select * into st from crm.pipeline_stages where organization_id = new.organization_id and id = new.stage_id;
  if st.id is not null and (st.is_won or st.is_lost) then
    raise exception 'New deals start in an open stage; move them with moveDealStage.' using errcode = 'CRSTA', column = 'stage_id';
  end if;
  new.probability := coalesce(new.probability, st.probability);
  new.currency := coalesce(new.currency, (select settings->>'currency' from crm.organizations where id = new.organization_id), 'USD');
  return new;
end
$$;
drop trigger if exists _120_defaults on crm.deals;
create trigger _120_defaults before insert on crm.deals
  for each row execute function crm_private.tg_deal_defaults();

create or replace function crm_private.tg_deal_created_history() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.deal_stage_history (organization_id, deal_id, from_stage_id, to_stage_id, changed_by)
  values (new.organization_id, new.id, null, new.stage_id, crm.current_user_id());
  return null;
end
$$;
drop trigger if exists _300_stage_history on crm.deals;
create trigger _300_stage_history after insert on crm.deals
  for each row execute function crm_private.tg_deal_created_history();

-- A contact or the customer of a deal must belong together.
create or replace function crm_private.tg_deal_contact_matches() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if new.contact_id is not null and not exists (
    select 1 from crm.contacts c where c.organization_id = new.organization_id and c.id = new.contact_id and c.customer_id = new.customer_id
  ) then
    raise exception 'The contact belongs to another customer.' using errcode = 'CRVAL', column = 'contact_id';
  end if;
  return new;
end
$$;
drop trigger if exists _130_contact on crm.deals;
create trigger _130_contact before insert or update of contact_id, customer_id on crm.deals
  for each row execute function crm_private.tg_deal_contact_matches();

-- A stage that has deals cannot be deleted until they move.
create or replace function crm_private.tg_stage_in_use() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from crm.deals d where d.organization_id = old.organization_id and d.stage_id = old.id) then
    raise exception 'This stage still has deals; move them to another stage first.' using errcode = 'CRSTA', column = 'id';
  end if;
  return old;
end
$$;
drop trigger if exists _200_in_use on crm.pipeline_stages;
create trigger _200_in_use before delete on crm.pipeline_stages
  for each row execute function crm_private.tg_stage_in_use();

-- Tasks: status workflow, completion stamp.
create or replace function crm_private.task_transition_allowed(from_status text, to_status text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select from_status = to_status or (from_status, to_status) in (
    ('not_started', 'in_progress'), ('not_started', 'cancelled'),
    ('in_progress', 'under_review'), ('in_progress', 'completed'), ('in_progress', 'cancelled'), ('in_progress', 'not_started'),
    ('under_review', 'completed'), ('under_review', 'in_progress'), ('under_review', 'cancelled'),
    ('completed', 'in_progress'),
    ('cancelled', 'not_started'))
$$;

create or replace function crm_private.tg_task_workflow() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'UPDATE' and not crm_private.task_transition_allowed(old.status, new.status) then
    raise exception 'A task cannot go from % to %.', old.status, new.status using errcode = 'CRSTA', column = 'status';
  end if;
  if tg_op = 'INSERT' and new.status not in ('not_started', 'in_progress') then
    raise exception 'New tasks start as not_started or in_progress.' using errcode = 'CRSTA', column = 'status';
  end if;
  if new.status = 'completed' and (tg_op = 'INSERT' or old.status <> 'completed') then
    new.completed_at := now();
  elsif new.status <> 'completed' then
    new.completed_at := null;
  end if;
  return new;
end
$$;
drop trigger if exists _120_workflow on crm.tasks;
create trigger _120_workflow before insert or update of status on crm.tasks
  for each row execute function crm_private.tg_task_workflow();

-- Task dependencies: no cycles.
create or replace function crm_private.tg_task_dependency_acyclic() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (
    with recursive reach(id) as (
      select new.depends_on_task_id
      union
      select d.depends_on_task_id from crm.task_dependencies d join reach r on d.task_id = r.id
       where d.organization_id = new.organization_id
    )
    select 1 from reach where id = new.task_id
  ) then
    raise exception 'This dependency would make a cycle.' using errcode = 'CRSTA', column = 'depends_on_task_id';
  end if;
  return new;
end
$$;
drop trigger if exists _200_acyclic on crm.task_dependencies;
create trigger _200_acyclic before insert or update on crm.task_dependencies
  for each row execute function crm_private.tg_task_dependency_acyclic();

-- Projects: actual hours roll up from work logs.
create or replace function crm_private.tg_project_hours() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  p uuid;
begin
  foreach p in array array_remove(array[case when tg_op <> 'INSERT' then old.project_id end,
                                        case when tg_op <> 'DELETE' then new.project_id end], null) loop
    update crm.projects pr set actual_hours = coalesce((
      select round(sum(w.minutes) / 60.0, 2) from crm.work_logs w where w.organization_id = pr.organization_id and w.project_id = pr.id), 0)
     where pr.id = p;
  end loop;
  return null;
end
$$;
drop trigger if exists _300_project_hours on crm.work_logs;
create trigger _300_project_hours after insert or update of minutes, project_id or delete on crm.work_logs
  for each row execute function crm_private.tg_project_hours();

-- Notes keep their author; only the author edits the content.
create or replace function crm_private.tg_note_author() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm.current_user_id() is not null and old.author_id is distinct from crm.current_user_id()
     and (new.content is distinct from old.content or new.customer_id is distinct from old.customer_id
          or new.contact_id is distinct from old.contact_id or new.deal_id is distinct from old.deal_id
          or new.project_id is distinct from old.project_id) then
    raise exception 'Only the author can edit a note.' using errcode = 'CRFBD', column = 'content';
  end if;
  return new;
end
$$;
drop trigger if exists _120_author on crm.notes;
create trigger _120_author before update on crm.notes
  for each row execute function crm_private.tg_note_author();

-- Soft delete: deleteCustomer & co. set deleted_at (row-level security then hides the row); the
-- children deleted with a parent carry the same timestamp, so restoring the parent brings back
-- exactly what went with it. purgeCustomer & co. delete for real.
create or replace function crm_private.tg_soft_delete_cascade() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  stamp timestamptz := coalesce(new.deleted_at, old.deleted_at);
  deleting boolean := new.deleted_at is not null;
  child record;
begin
  for child in
    select * from (values
      ('customers', 'contacts', 'customer_id'), ('customers', 'deals', 'customer_id'), ('customers', 'projects', 'customer_id'),
      ('customers', 'notes', 'customer_id'), ('contacts', 'notes', 'contact_id'), ('deals', 'notes', 'deal_id'),
      ('projects', 'notes', 'project_id')) v (parent, tbl, col)
    where parent = tg_table_name
  loop
    if deleting then
      execute format('update crm.%I set deleted_at = $1 where organization_id = $2 and %I = $3 and deleted_at is null', child.tbl, child.col)
        using stamp, new.organization_id, new.id;
    else
      execute format('update crm.%I set deleted_at = null where organization_id = $1 and %I = $2 and deleted_at = $3', child.tbl, child.col)
        using new.organization_id, new.id, stamp;
    end if;
  end loop;
  return null;
end
$$;
do $$
declare
  t text;
begin
  foreach t in array array['customers', 'contacts', 'deals', 'projects', 'notes'] loop
    execute format('drop trigger if exists _050_soft_delete on crm.%I', t);
    execute format('drop trigger if exists _400_soft_delete_cascade on crm.%I', t);
    execute format('create trigger _400_soft_delete_cascade after update of deleted_at on crm.%I for each row
                    when (old.deleted_at is distinct from new.deleted_at) execute function crm_private.tg_soft_delete_cascade()', t);
  end loop;
end
$$;
drop function if exists crm_private.tg_soft_delete();

-- Audit every business table (search vectors are left out of the diff).
do $$
declare
  t text;
begin
  foreach t in array array['customers', 'contacts', 'tags', 'customer_tags', 'contact_tags', 'deal_tags', 'pipelines',
                           'pipeline_stages', 'pipeline_stage_transitions', 'deals', 'projects', 'tasks', 'task_dependencies',
                           'work_logs', 'notes', 'custom_field_definitions'] loop
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit(%L)', t, 'search_vector');
  end loop;
end
$$;

-- ================================================================================================
-- Row-level security
-- ================================================================================================
alter table crm.customers enable row level security;
alter table crm.customer_status_history enable row level security;
alter table crm.contacts enable row level security;
alter table crm.tags enable row level security;
alter table crm.customer_tags enable row level security;
alter table crm.contact_tags enable row level security;
alter table crm.deal_tags enable row level security;
alter table crm.pipelines enable row level security;
alter table crm.pipeline_stages enable row level security;
alter table crm.pipeline_stage_transitions enable row level security;
alter table crm.deals enable row level security;
alter table crm.deal_stage_history enable row level security;
alter table crm.projects enable row level security;
alter table crm.tasks enable row level security;
alter table crm.task_dependencies enable row level security;
alter table crm.work_logs enable row level security;
alter table crm.notes enable row level security;
alter table crm.custom_field_definitions enable row level security;

-- Customers: _all, or the owner is me (_own) or in my teams (_team). Deleted rows are hidden.
drop policy if exists customers_select on crm.customers;
create policy customers_select on crm.customers for select
  using (
    organization_id = (select crm.current_org_id()) and deleted_at is null
    and ((select crm.has_permission('customers:read_all')) or owner_id = any ((select crm.visible_owner_ids('customers'))::uuid[]))
  );
drop policy if exists customers_insert on crm.customers;
create policy customers_insert on crm.customers for insert
  with check (
    organization_id = (select crm.current_org_id()) and (select crm.has_permission('customers:create'))
    and (owner_id = (select crm.current_user_id()) or (select crm.has_permission('customers:update_all')))
  );
drop policy if exists customers_update on crm.customers;
create policy customers_update on crm.customers for update
  using (
    organization_id = (select crm.current_org_id()) and deleted_at is null
    and ((select crm.has_permission('customers:update_all')) or owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))
  )
  with check (
    organization_id = (select crm.current_org_id())
    and ((select crm.has_permission('customers:update_all')) or owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))
  );
drop policy if exists customers_delete on crm.customers;

drop policy if exists customer_status_history_select on crm.customer_status_history;
create policy customer_status_history_select on crm.customer_status_history for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = customer_status_history.customer_id));

-- Contacts follow their customer: visible with it, changed by whoever may change it.
drop policy if exists contacts_select on crm.contacts;
create policy contacts_select on crm.contacts for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and exists (select 1 from crm.customers c where c.id = contacts.customer_id));
drop policy if exists contacts_write on crm.contacts;
drop policy if exists contacts_insert on crm.contacts;
create policy contacts_insert on crm.contacts for insert
  with check (organization_id = (select crm.current_org_id())
              and exists (select 1 from crm.customers c where c.id = contacts.customer_id
                            and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))));
drop policy if exists contacts_update on crm.contacts;
create policy contacts_update on crm.contacts for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and exists (select 1 from crm.customers c where c.id = contacts.customer_id
                       and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))));
drop policy if exists contacts_delete on crm.contacts;

-- Tags: everyone in the organization sees them; tags:manage edits them. Assigning a tag is editing
-- the record it goes on.
drop policy if exists tags_select on crm.tags;
create policy tags_select on crm.tags for select using (organization_id = (select crm.current_org_id()));
drop policy if exists tags_write on crm.tags;
create policy tags_write on crm.tags for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('tags:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('tags:manage')));

drop policy if exists customer_tags_select on crm.customer_tags;
create policy customer_tags_select on crm.customer_tags for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.customers c where c.id = customer_tags.customer_id));
drop policy if exists customer_tags_write on crm.customer_tags;
create policy customer_tags_write on crm.customer_tags for all
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = customer_tags.customer_id
                       and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))))
  with check (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.customers c where c.id = customer_tags.customer_id
                       and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))));

drop policy if exists contact_tags_select on crm.contact_tags;
create policy contact_tags_select on crm.contact_tags for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.contacts c where c.id = contact_tags.contact_id));
drop policy if exists contact_tags_write on crm.contact_tags;
create policy contact_tags_write on crm.contact_tags for all
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.contacts ct join crm.customers c on c.id = ct.customer_id where ct.id = contact_tags.contact_id
                       and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))))
  with check (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.contacts ct join crm.customers c on c.id = ct.customer_id where ct.id = contact_tags.contact_id
                       and ((select crm.has_permission('customers:update_all')) or c.owner_id = any ((select crm.visible_owner_ids('customers', 'update'))::uuid[]))));

drop policy if exists deal_tags_select on crm.deal_tags;
create policy deal_tags_select on crm.deal_tags for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.deals d where d.id = deal_tags.deal_id));
drop policy if exists deal_tags_write on crm.deal_tags;
create policy deal_tags_write on crm.deal_tags for all
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.deals d where d.id = deal_tags.deal_id
                       and ((select crm.has_permission('deals:update_all')) or d.owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[]))))
  with check (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.deals d where d.id = deal_tags.deal_id
                       and ((select crm.has_permission('deals:update_all')) or d.owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[]))));

-- Pipelines: everyone reads; pipelines:manage edits.
do $$
declare
  t text;
begin
  foreach t in array array['pipelines', 'pipeline_stages', 'pipeline_stage_transitions'] loop
    execute format('drop policy if exists %I on crm.%I', t || '_select', t);
    execute format('create policy %I on crm.%I for select using (organization_id = (select crm.current_org_id()))', t || '_select', t);
    execute format('drop policy if exists %I on crm.%I', t || '_write', t);
    execute format($p$create policy %I on crm.%I for all
      using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('pipelines:manage')))
      with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('pipelines:manage')))$p$, t || '_write', t);
  end loop;
end
$$;

-- Deals: like customers, with the deals:* codes; the customer must be visible to create one.
drop policy if exists deals_select on crm.deals;
create policy deals_select on crm.deals for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('deals:read_all')) or owner_id = any ((select crm.visible_owner_ids('deals'))::uuid[])));
drop policy if exists deals_insert on crm.deals;
create policy deals_insert on crm.deals for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('deals:create'))
              and (owner_id = (select crm.current_user_id()) or (select crm.has_permission('deals:update_all')))
              and exists (select 1 from crm.customers c where c.id = deals.customer_id));
drop policy if exists deals_update on crm.deals;
create policy deals_update on crm.deals for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('deals:update_all')) or owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[])))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('deals:update_all')) or owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[])));
drop policy if exists deals_delete on crm.deals;

drop policy if exists deal_stage_history_select on crm.deal_stage_history;
create policy deal_stage_history_select on crm.deal_stage_history for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.deals d where d.id = deal_stage_history.deal_id));

-- Projects: _all, or I manage it, or (projects:read_own) it is for a customer I can see.
drop policy if exists projects_select on crm.projects;
create policy projects_select on crm.projects for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('projects:read_all'))
              or manager_id = (select crm.current_user_id())
              or ((select crm.has_permission('projects:read_own')) and exists (select 1 from crm.customers c where c.id = projects.customer_id))));
drop policy if exists projects_insert on crm.projects;
create policy projects_insert on crm.projects for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('projects:create'))
              and exists (select 1 from crm.customers c where c.id = projects.customer_id));
drop policy if exists projects_update on crm.projects;
create policy projects_update on crm.projects for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('projects:update')) or manager_id = (select crm.current_user_id())));
drop policy if exists projects_delete on crm.projects;

-- Tasks: _all, or assigned to me (_own) or my teams (_team), or created by me.
drop policy if exists tasks_select on crm.tasks;
create policy tasks_select on crm.tasks for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:read_all'))
              or assignee_id = any ((select crm.visible_owner_ids('tasks'))::uuid[])
              or created_by = (select crm.current_user_id())));
drop policy if exists tasks_insert on crm.tasks;
create policy tasks_insert on crm.tasks for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('tasks:create'))
              and (assignee_id = (select crm.current_user_id()) or assignee_id is null or (select crm.has_permission('tasks:assign'))));
drop policy if exists tasks_update on crm.tasks;
create policy tasks_update on crm.tasks for update
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or assignee_id = any ((select crm.visible_owner_ids('tasks', 'update'))::uuid[])));
drop policy if exists tasks_delete on crm.tasks;
create policy tasks_delete on crm.tasks for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('tasks:delete')));

drop policy if exists task_dependencies_select on crm.task_dependencies;
create policy task_dependencies_select on crm.task_dependencies for select
  using (organization_id = (select crm.current_org_id()) and exists (select 1 from crm.tasks t where t.id = task_dependencies.task_id));
drop policy if exists task_dependencies_write on crm.task_dependencies;
create policy task_dependencies_write on crm.task_dependencies for all
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or (select crm.has_permission('tasks:create'))))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or (select crm.has_permission('tasks:create'))));

-- Work logs: my own (read_own), or everyone's (read_all); I log only my own time.
drop policy if exists work_logs_select on crm.work_logs;
create policy work_logs_select on crm.work_logs for select
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('worklogs:read_all'))
              or (user_id = (select crm.current_user_id()) and (select crm.has_permission('worklogs:read_own')))));
drop policy if exists work_logs_insert on crm.work_logs;
create policy work_logs_insert on crm.work_logs for insert
  with check (organization_id = (select crm.current_org_id()) and user_id = (select crm.current_user_id())
              and (select crm.has_permission('worklogs:create'))
              and exists (select 1 from crm.customers c where c.id = work_logs.customer_id));
drop policy if exists work_logs_update on crm.work_logs;
create policy work_logs_update on crm.work_logs for update
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('worklogs:update')) or user_id = (select crm.current_user_id())));
drop policy if exists work_logs_delete on crm.work_logs;
create policy work_logs_delete on crm.work_logs for delete
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('worklogs:delete')) or user_id = (select crm.current_user_id())));

-- Notes: visible with the record they are attached to; authors edit; notes:delete (or the author) deletes.
drop policy if exists notes_select on crm.notes;
create policy notes_select on crm.notes for select
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (customer_id is null or exists (select 1 from crm.customers c where c.id = notes.customer_id))
         and (contact_id is null or exists (select 1 from crm.contacts c where c.id = notes.contact_id))
         and (deal_id is null or exists (select 1 from crm.deals d where d.id = notes.deal_id))
         and (project_id is null or exists (select 1 from crm.projects p where p.id = notes.project_id)));
drop policy if exists notes_insert on crm.notes;
create policy notes_insert on crm.notes for insert
  with check (organization_id = (select crm.current_org_id()) and author_id = (select crm.current_user_id())
         and (select crm.has_permission('notes:create'))
         and (customer_id is null or exists (select 1 from crm.customers c where c.id = notes.customer_id))
         and (contact_id is null or exists (select 1 from crm.contacts c where c.id = notes.contact_id))
         and (deal_id is null or exists (select 1 from crm.deals d where d.id = notes.deal_id))
         and (project_id is null or exists (select 1 from crm.projects p where p.id = notes.project_id)));
drop policy if exists notes_update on crm.notes;
create policy notes_update on crm.notes for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (author_id = (select crm.current_user_id()) or (select crm.has_permission('notes:delete'))));
drop policy if exists notes_delete on crm.notes;

drop policy if exists custom_field_definitions_select on crm.custom_field_definitions;
create policy custom_field_definitions_select on crm.custom_field_definitions for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists custom_field_definitions_write on crm.custom_field_definitions;
create policy custom_field_definitions_write on crm.custom_field_definitions for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('custom_fields:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('custom_fields:manage')));

-- Grants (RLS decides the rows; columns the API may set are listed) --------------------------------
grant select on crm.customers, crm.customer_status_history, crm.contacts, crm.tags, crm.customer_tags, crm.contact_tags,
  crm.deal_tags, crm.pipelines, crm.pipeline_stages, crm.pipeline_stage_transitions, crm.deals, crm.deal_stage_history,
  crm.projects, crm.tasks, crm.task_dependencies, crm.work_logs, crm.notes, crm.custom_field_definitions to crm_user;
grant insert (kind, name, email, phone, status, owner_id, industry, company_size, website, billing_address, shipping_address,
              annual_revenue, employee_count, lead_source, lead_score, birth_date, referred_by_id, contacted, next_follow_up_at, custom_fields),
      update (kind, name, email, phone, status, owner_id, industry, company_size, website, billing_address, shipping_address,
              annual_revenue, employee_count, lead_source, lead_score, birth_date, referred_by_id, contacted, next_follow_up_at, custom_fields)
  on crm.customers to crm_user;
grant insert (customer_id, first_name, last_name, email, phone, mobile, title, department, status, social_profiles,
              communication_preferences, custom_fields),
      update (first_name, last_name, email, phone, mobile, title, department, status, social_profiles, communication_preferences, custom_fields)
  on crm.contacts to crm_user;
grant insert (name, color), update (name, color), delete on crm.tags to crm_user;
grant insert (customer_id, tag_id), delete on crm.customer_tags to crm_user;
grant insert (contact_id, tag_id), delete on crm.contact_tags to crm_user;
grant insert (deal_id, tag_id), delete on crm.deal_tags to crm_user;
grant insert (name, is_default), update (name, is_default), delete on crm.pipelines to crm_user;
grant insert (pipeline_id, name, position, probability, is_won, is_lost), update (name, position, probability, is_won, is_lost), delete
  on crm.pipeline_stages to crm_user;
grant insert (pipeline_id, from_stage_id, to_stage_id), delete on crm.pipeline_stage_transitions to crm_user;
grant insert (customer_id, contact_id, name, amount, currency, pipeline_id, stage_id, probability, expected_close_date, lost_reason,
              source, owner_id, custom_fields),
      update (customer_id, contact_id, name, amount, currency, probability, expected_close_date, lost_reason, source, owner_id, custom_fields)
  on crm.deals to crm_user;
grant insert (customer_id, deal_id, name, description, status, priority, start_date, due_date, estimated_hours, manager_id),
      update (deal_id, name, description, status, priority, start_date, due_date, estimated_hours, manager_id)
  on crm.projects to crm_user;
grant insert (type, title, description, status, priority, due_at, assignee_id, customer_id, contact_id, deal_id, project_id,
              estimated_hours, is_recurring, recurrence_interval),
      update (type, title, description, priority, due_at, customer_id, contact_id, deal_id, project_id, estimated_hours,
              is_recurring, recurrence_interval),
      delete on crm.tasks to crm_user;
grant insert (task_id, depends_on_task_id), delete on crm.task_dependencies to crm_user;
grant insert (customer_id, task_id, project_id, minutes, description, logged_at),
      update (customer_id, task_id, project_id, minutes, description, logged_at), delete on crm.work_logs to crm_user;
grant insert (content, is_pinned, customer_id, contact_id, deal_id, project_id),
      update (content, is_pinned, customer_id, contact_id, deal_id, project_id) on crm.notes to crm_user;
grant insert (entity, key, label, field_type, is_required, options, position),
      update (label, is_required, options, position), delete on crm.custom_field_definitions to crm_user;

-- ================================================================================================
-- Default pipeline for every organization
-- ================================================================================================
create or replace function crm_private.seed_default_pipeline(org uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  p uuid;
begin
  if exists (select 1 from crm.pipelines where organization_id = org) then
    return;
  end if;
  insert into crm.pipelines (organization_id, name, is_default) values (org, 'Sales', true) returning id into p;
  insert into crm.pipeline_stages (organization_id, pipeline_id, name, position, probability, is_won, is_lost) values
    (org, p, 'Prospecting', 1, 10, false, false),
    (org, p, 'Qualification', 2, 25, false, false),
    (org, p, 'Proposal', 3, 50, false, false),
    (org, p, 'Negotiation', 4, 75, false, false),
    (org, p, 'Closed won', 5, 100, true, false),
    (org, p, 'Closed lost', 6, 0, false, true);
end
$$;
create or replace function crm_private.tg_seed_pipeline() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_default_pipeline(new.id);
  return null;
end
$$;
drop trigger if exists _510_seed_pipeline on crm.organizations;
create trigger _510_seed_pipeline after insert on crm.organizations
  for each row execute function crm_private.tg_seed_pipeline();
select crm_private.seed_default_pipeline(id) from crm.organizations;

-- ================================================================================================
-- Business functions (GraphQL mutations and queries)
-- ================================================================================================
-- Moves a deal to another stage of its pipeline: checks the allowed transitions and the reopen
-- permission, requires a lost reason for lost stages, stamps the close date, writes the history.
create or replace function crm.move_deal_stage(deal_id uuid, stage_id uuid, lost_reason text default null) returns crm.deals
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.deals;
  cur crm.pipeline_stages;
  nxt crm.pipeline_stages;
begin
  -- The same rule as the deals policies: deals:update_all, or the owner is me (_own) or in my teams (_team).
  select * into d from crm.deals x
   where x.id = move_deal_stage.deal_id and x.organization_id = crm.current_org_id() and x.deleted_at is null
     and (crm.has_permission('deals:read_all') or x.owner_id = any (crm.visible_owner_ids('deals')))
   for update;
  if d.id is null then
    raise exception 'No such deal.' using errcode = 'CRNFD', column = 'dealId';
  end if;
  if not (crm.has_permission('deals:update_all') or d.owner_id = any (crm.visible_owner_ids('deals', 'update'))) then
    raise exception 'You may not move this deal.' using errcode = 'CRFBD', column = 'dealId';
  end if;
  select * into cur from crm.pipeline_stages s where s.organization_id = d.organization_id and s.id = d.stage_id;
  select * into nxt from crm.pipeline_stages s where s.organization_id = d.organization_id and s.id = move_deal_stage.stage_id;
  if nxt.id is null or nxt.pipeline_id <> d.pipeline_id then
    raise exception 'That stage is not in the deal''s pipeline.' using errcode = 'CRVAL', column = 'stageId';
  end if;
  if nxt.id = cur.id then
    raise exception 'The deal is already in that stage.' using errcode = 'CRSTA', column = 'stageId';
  end if;
  if (cur.is_won or cur.is_lost) and not crm.has_permission('deals:reopen') then
    raise exception 'The deal is closed; reopening it needs deals:reopen.' using errcode = 'CRSTA', column = 'stageId';
  end if;
  if exists (select 1 from crm.pipeline_stage_transitions t where t.organization_id = d.organization_id and t.pipeline_id = d.pipeline_id)
     and not exists (select 1 from crm.pipeline_stage_transitions t
                      where t.organization_id = d.organization_id and t.from_stage_id = cur.id and t.to_stage_id = nxt.id) then
    raise exception 'Moving from % to % is not allowed in this pipeline.', cur.name, nxt.name using errcode = 'CRSTA', column = 'stageId';
  end if;
  if nxt.is_lost and nullif(btrim(coalesce(move_deal_stage.lost_reason, d.lost_reason, '')), '') is null then
    raise exception 'A lost deal needs a lost reason.' using errcode = 'CRVAL', column = 'lostReason';
  end if;
  update crm.deals x set
    stage_id = nxt.id,
    probability = nxt.probability,
    stage_changed_at = now(),
    actual_close_date = case when nxt.is_won or nxt.is_lost then current_date end,
    lost_reason = case when nxt.is_lost then coalesce(nullif(btrim(move_deal_stage.lost_reason), ''), x.lost_reason) else null end
   where x.id = d.id
  returning * into d;
  insert into crm.deal_stage_history (organization_id, deal_id, from_stage_id, to_stage_id, changed_by)
  values (d.organization_id, d.id, cur.id, nxt.id, crm.current_user_id());
  return d;
end
$$;
comment on function crm.move_deal_stage(uuid, uuid, text) is 'Move a deal to another stage (validated; recorded in the stage history and the audit log).';

-- A deal stays in its pipeline; its stage changes only through move_deal_stage (crm_user has no
-- update grant on stage_id).
create or replace function crm_private.tg_deal_stage_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if new.pipeline_id is distinct from old.pipeline_id then
    raise exception 'A deal stays in its pipeline.' using errcode = 'CRSTA', column = 'pipeline_id';
  end if;
  return new;
end
$$;
drop trigger if exists _110_stage_guard on crm.deals;
create trigger _110_stage_guard before update on crm.deals
  for each row when (current_user = 'crm_user') execute function crm_private.tg_deal_stage_guard();


create or replace function crm.make_primary_contact(contact_id uuid) returns crm.contacts
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.contacts;
begin
  select * into c from crm.contacts x where x.id = make_primary_contact.contact_id;
  if c.id is null then
    raise exception 'No such contact.' using errcode = 'CRNFD', column = 'contactId';
  end if;
  perform set_config('cairn.moving_primary', c.customer_id::text, true);
  update crm.contacts x set is_primary = false where x.organization_id = c.organization_id and x.customer_id = c.customer_id and x.is_primary and x.id <> c.id;
  update crm.contacts x set is_primary = true where x.id = c.id returning * into c;
  perform set_config('cairn.moving_primary', '', true);
  if c.id is null then
    raise exception 'You may not change this customer''s contacts.' using errcode = 'CRFBD', column = 'contactId';
  end if;
  return c;
end
$$;
comment on function crm.make_primary_contact(uuid) is 'Make a contact its customer''s primary contact (the previous one stops being primary).';
grant update (is_primary) on crm.contacts to crm_user;

create or replace function crm.assign_task(task_id uuid, assignee_id uuid) returns crm.tasks
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  t crm.tasks;
begin
  perform crm_private.require_permission('tasks:assign');
  if assign_task.assignee_id is not null and not exists (
    select 1 from crm.organization_memberships m where m.organization_id = crm.current_org_id() and m.user_id = assign_task.assignee_id and m.is_active
  ) then
    raise exception 'The assignee is not an active member.' using errcode = 'CRVAL', column = 'assigneeId';
  end if;
  update crm.tasks x set assignee_id = assign_task.assignee_id
   where x.id = assign_task.task_id and x.organization_id = crm.current_org_id()
  returning * into t;
  if t.id is null then
    raise exception 'No such task.' using errcode = 'CRNFD', column = 'taskId';
  end if;
  return t;
end
$$;
comment on function crm.assign_task(uuid, uuid) is 'Assign a task to a member (tasks:assign).';

create or replace function crm.update_task_status(task_id uuid, status text) returns crm.tasks
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  t crm.tasks;
begin
  if crm.current_user_id() is null then
    raise exception 'Sign in first.' using errcode = 'CRUNA';
  end if;
  select * into t from crm.tasks x where x.id = update_task_status.task_id and x.organization_id = crm.current_org_id() for update;
  if t.id is null or not (crm.has_permission('tasks:read_all') or t.assignee_id = any (crm.visible_owner_ids('tasks'))
                          or t.created_by = crm.current_user_id()) then
    raise exception 'No such task.' using errcode = 'CRNFD', column = 'taskId';
  end if;
  if not (crm.has_permission('tasks:update_all')
          or t.assignee_id = any (crm.visible_owner_ids('tasks', 'update'))
          or (t.assignee_id = crm.current_user_id() and crm.has_permission('tasks:update_status_own'))) then
    raise exception 'You may not change this task''s status.' using errcode = 'CRFBD', column = 'taskId';
  end if;
  if update_task_status.status not in ('not_started', 'in_progress', 'under_review', 'completed', 'cancelled') then
    raise exception 'Unknown status %.', update_task_status.status using errcode = 'CRVAL', column = 'status';
  end if;
  update crm.tasks x set status = update_task_status.status where x.id = t.id returning * into t;
  return t;
end
$$;
comment on function crm.update_task_status(uuid, text) is 'Move a task through its workflow (the assignee needs tasks:update_status_own).';

create or replace function crm.my_tasks(include_closed boolean default false) returns setof crm.tasks
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select * from crm.tasks t
   where t.organization_id = crm.current_org_id() and t.assignee_id = crm.current_user_id()
     and (include_closed or t.status not in ('completed', 'cancelled'))
   order by (t.status in ('completed', 'cancelled')), t.due_at nulls last, t.created_at
$$;
comment on function crm.my_tasks(boolean) is E'@sortable\nTasks assigned to me: open first, then by due date.';

-- Soft delete: restore and purge ------------------------------------------------------------------
create or replace function crm_private.restore(tbl text, rid uuid, perm text) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  perform crm_private.require_permission(perm);
  -- The cascade trigger brings back the children deleted together with it.
  execute format('update crm.%I set deleted_at = null where id = $1 and organization_id = $2 and deleted_at is not null', tbl)
    using rid, crm.current_org_id();
  get diagnostics n = row_count;
  if n = 0 then
    raise exception 'Nothing deleted with that id.' using errcode = 'CRNFD', column = 'id';
  end if;
end
$$;

create or replace function crm_private.purge(tbl text, rid uuid, perm text) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  perform crm_private.require_permission(perm);
  execute format('delete from crm.%I where id = $1 and organization_id = $2 and deleted_at is not null', tbl) using rid, crm.current_org_id();
  get diagnostics n = row_count;
  if n = 0 then
    raise exception 'Only deleted records can be purged; nothing deleted with that id.' using errcode = 'CRNFD', column = 'id';
  end if;
end
$$;

create or replace function crm.restore_customer(id uuid) returns crm.customers
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.restore('customers', id, 'customers:delete'); return (select c from crm.customers c where c.id = restore_customer.id); end $$;
create or replace function crm.restore_contact(id uuid) returns crm.contacts
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.restore('contacts', id, 'customers:delete'); return (select c from crm.contacts c where c.id = restore_contact.id); end $$;
create or replace function crm.restore_deal(id uuid) returns crm.deals
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.restore('deals', id, 'deals:delete'); return (select d from crm.deals d where d.id = restore_deal.id); end $$;
create or replace function crm.restore_project(id uuid) returns crm.projects
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.restore('projects', id, 'projects:delete'); return (select p from crm.projects p where p.id = restore_project.id); end $$;
create or replace function crm.restore_note(id uuid) returns crm.notes
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.restore('notes', id, 'notes:delete'); return (select n from crm.notes n where n.id = restore_note.id); end $$;

-- Soft delete with the same rules as the update policies plus the delete permission (SECURITY
-- DEFINER because the hidden result would fail the tables' select policies).
create or replace function crm.delete_customer(id uuid) returns crm.customers
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare r crm.customers;
begin
  perform crm_private.require_permission('customers:delete');
  update crm.customers c set deleted_at = now()
   where c.id = delete_customer.id and c.organization_id = crm.current_org_id() and c.deleted_at is null
     and (crm.has_permission('customers:update_all') or c.owner_id = any (crm.visible_owner_ids('customers', 'update')))
  returning * into r;
  if r.id is null then raise exception 'No such customer.' using errcode = 'CRNFD', column = 'id'; end if;
  return r;
end $$;
create or replace function crm.delete_contact(id uuid) returns crm.contacts
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare r crm.contacts;
begin
  perform crm_private.require_permission('customers:delete');
  update crm.contacts ct set deleted_at = now(), is_primary = false
   where ct.id = delete_contact.id and ct.organization_id = crm.current_org_id() and ct.deleted_at is null
     and exists (select 1 from crm.customers c where c.id = ct.customer_id and c.deleted_at is null
                   and (crm.has_permission('customers:update_all') or c.owner_id = any (crm.visible_owner_ids('customers', 'update'))))
  returning * into r;
  if r.id is null then raise exception 'No such contact.' using errcode = 'CRNFD', column = 'id'; end if;
  return r;
end $$;
create or replace function crm.delete_deal(id uuid) returns crm.deals
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare r crm.deals;
begin
  perform crm_private.require_permission('deals:delete');
  update crm.deals d set deleted_at = now()
   where d.id = delete_deal.id and d.organization_id = crm.current_org_id() and d.deleted_at is null
     and (crm.has_permission('deals:update_all') or d.owner_id = any (crm.visible_owner_ids('deals', 'update')))
  returning * into r;
  if r.id is null then raise exception 'No such deal.' using errcode = 'CRNFD', column = 'id'; end if;
  return r;
end $$;
create or replace function crm.delete_project(id uuid) returns crm.projects
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare r crm.projects;
begin
  perform crm_private.require_permission('projects:delete');
  update crm.projects p set deleted_at = now()
   where p.id = delete_project.id and p.organization_id = crm.current_org_id() and p.deleted_at is null
  returning * into r;
  if r.id is null then raise exception 'No such project.' using errcode = 'CRNFD', column = 'id'; end if;
  return r;
end $$;
-- Authors delete their own notes; notes:delete deletes anyone's.
create or replace function crm.delete_note(id uuid) returns crm.notes
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare r crm.notes;
begin
  if crm.current_user_id() is null then raise exception 'Sign in first.' using errcode = 'CRUNA'; end if;
  update crm.notes n set deleted_at = now()
   where n.id = delete_note.id and n.organization_id = crm.current_org_id() and n.deleted_at is null
     and (n.author_id = crm.current_user_id() or crm.has_permission('notes:delete'))
  returning * into r;
  if r.id is null then raise exception 'No such note, or not yours to delete.' using errcode = 'CRNFD', column = 'id'; end if;
  return r;
end $$;
comment on function crm.delete_customer(uuid) is 'Delete (hide) a customer with its contacts, deals, projects and notes; restoreCustomer brings them back.';
comment on function crm.delete_contact(uuid) is 'Delete (hide) a contact and its notes.';
comment on function crm.delete_deal(uuid) is 'Delete (hide) a deal and its notes.';
comment on function crm.delete_project(uuid) is 'Delete (hide) a project and its notes.';
comment on function crm.delete_note(uuid) is 'Delete (hide) a note (its author, or with notes:delete).';

create or replace function crm.purge_customer(id uuid) returns boolean
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.purge('customers', id, 'customers:purge'); return true; end $$;
create or replace function crm.purge_deal(id uuid) returns boolean
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.purge('deals', id, 'deals:purge'); return true; end $$;
create or replace function crm.purge_project(id uuid) returns boolean
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.purge('projects', id, 'projects:purge'); return true; end $$;
create or replace function crm.purge_note(id uuid) returns boolean
  language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$ begin perform crm_private.purge('notes', id, 'notes:purge'); return true; end $$;

-- Deleted records of the organization (the trash), for those who may restore them.
create or replace function crm.deleted_customers() returns setof crm.customers
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select * from crm.customers c
   where c.organization_id = crm.current_org_id() and c.deleted_at is not null and crm.has_permission('customers:delete')
   order by c.deleted_at desc
$$;
comment on function crm.deleted_customers() is 'Deleted customers (customers:delete), newest first; restoreCustomer brings one back.';

-- The first live contact of a customer becomes its primary contact.
create or replace function crm_private.tg_contact_first_primary() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from crm.contacts c where c.organization_id = new.organization_id and c.customer_id = new.customer_id
                   and c.is_primary and c.deleted_at is null) then
    new.is_primary := true;
  end if;
  return new;
end
$$;
drop trigger if exists _140_first_primary on crm.contacts;
create trigger _140_first_primary before insert on crm.contacts
  for each row execute function crm_private.tg_contact_first_primary();

-- ================================================================================================
-- Search, timeline, reports
-- ================================================================================================
create or replace function crm.search_language() returns regconfig
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select c.oid::regconfig from crm.organizations o join pg_ts_config c on c.cfgname = o.settings->>'search_language'
                    where o.id = crm.current_org_id()), 'simple'::regconfig)
$$;
comment on function crm.search_language() is E'@behavior -queryField\nThe text search configuration of the current organization.';

drop type if exists crm.search_result cascade;
create type crm.search_result as (
  entity text,
  record_id uuid,
  title text,
  subtitle text,
  customer_id uuid,
  rank real
);
comment on type crm.search_result is 'A search hit: entity is customer, contact, deal or note.';

-- One search over customers, contacts, deals and notes: full text (the organization's language) plus
-- trigram similarity on names and emails, ranked, under the caller's row-level security.
create or replace function crm.search(query text, types text[] default null) returns setof crm.search_result
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  cfg regconfig := crm.search_language();
  tsq tsquery;
  q text := btrim(coalesce(query, ''));
  n int := 100;
begin
  if length(q) < 2 then
    raise exception 'Search for at least two characters.' using errcode = 'CRVAL', column = 'query';
  end if;
  if types is not null and not (types <@ array['customer', 'contact', 'deal', 'note']) then
    raise exception 'types may contain customer, contact, deal and note.' using errcode = 'CRVAL', column = 'types';
  end if;
  tsq := websearch_to_tsquery(cfg, q);
  return query
  select * from (
    (select 'customer'::text, c.id, c.name, coalesce(c.email::text, c.industry), c.id,
            greatest(ts_rank(c.search_vector, tsq) * 2, similarity(c.name, q), similarity(coalesce(c.email::text, ''), q))::real as rank
       from crm.customers c
      where (types is null or 'customer' = any (types))
        and (c.search_vector @@ tsq or c.name % q or c.email::text % q)
      order by rank desc limit n)
    union all
    (select 'contact', ct.id, ct.first_name || ' ' || ct.last_name, coalesce(ct.email::text, ct.title), ct.customer_id,
            greatest(ts_rank(ct.search_vector, tsq) * 2, similarity(ct.first_name || ' ' || ct.last_name, q),
                     similarity(coalesce(ct.email::text, ''), q))::real
       from crm.contacts ct
      where (types is null or 'contact' = any (types))
        and (ct.search_vector @@ tsq or (ct.first_name || ' ' || ct.last_name) % q or ct.email::text % q)
      order by 6 desc limit n)
    union all
    (select 'deal', d.id, d.name, d.amount::text || ' ' || coalesce(d.currency, ''), d.customer_id,
            greatest(ts_rank(d.search_vector, tsq) * 2, similarity(d.name, q))::real
       from crm.deals d
      where (types is null or 'deal' = any (types)) and (d.search_vector @@ tsq or d.name % q)
      order by 6 desc limit n)
    union all
    (select 'note', nt.id, left(nt.content, 120), null, nt.customer_id, (ts_rank(nt.search_vector, tsq) * 2)::real
       from crm.notes nt
      where (types is null or 'note' = any (types)) and nt.search_vector @@ tsq
      order by 6 desc limit n)
  ) hits
  order by 6 desc, 3
  limit n;
end
$$;
comment on function crm.search(text, text[]) is 'Search customers, contacts, deals and notes you can see, best matches first (up to 100 per kind).';

drop type if exists crm.timeline_entry cascade;
create type crm.timeline_entry as (
  occurred_at timestamptz,
  kind text,
  record_id text,
  title text,
  detail jsonb,
  actor_id uuid
);
comment on type crm.timeline_entry is 'One event of a customer''s history: note, task, stage_change, work_log, status_change or audit.';

-- A customer's history, newest first: notes, tasks, deal stage changes, work logs, status changes
-- and (with audit:read) audit entries — each source under the caller's row-level security.
create or replace function crm.customer_timeline(customer_id uuid) returns setof crm.timeline_entry
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select * from (
    select n.created_at, 'note', n.id::text, left(n.content, 200), jsonb_build_object('pinned', n.is_pinned), n.author_id
      from crm.notes n where n.customer_id = customer_timeline.customer_id
    union all
    select t.created_at, 'task', t.id::text, t.title, jsonb_build_object('type', t.type, 'status', t.status, 'dueAt', t.due_at), t.created_by
      from crm.tasks t where t.customer_id = customer_timeline.customer_id
    union all
    select h.changed_at, 'stage_change', d.id::text, d.name,
           jsonb_build_object('from', fs.name, 'to', ts.name), h.changed_by
      from crm.deal_stage_history h
      join crm.deals d on d.id = h.deal_id
      left join crm.pipeline_stages fs on fs.id = h.from_stage_id
      left join crm.pipeline_stages ts on ts.id = h.to_stage_id
     where d.customer_id = customer_timeline.customer_id
    union all
    select w.logged_at, 'work_log', w.id::text, w.description, jsonb_build_object('minutes', w.minutes), w.user_id
      from crm.work_logs w where w.customer_id = customer_timeline.customer_id
    union all
    select s.changed_at, 'status_change', s.id::text, coalesce(s.from_status, 'new') || ' → ' || s.to_status, '{}'::jsonb, s.changed_by
      from crm.customer_status_history s where s.customer_id = customer_timeline.customer_id
    union all
    select a.created_at, 'audit', a.id::text, a.table_name || ' ' || lower(a.operation), a.changes, a.actor_id
      from crm.audit_log a
     where a.organization_id = crm.current_org_id() and a.table_name = 'customers' and a.record_id = customer_timeline.customer_id::text
  ) e (occurred_at, kind, record_id, title, detail, actor_id)
  where exists (select 1 from crm.customers c where c.id = customer_timeline.customer_id)
  order by occurred_at desc
  limit 500
$$;
comment on function crm.customer_timeline(uuid) is 'A customer''s history, newest first (the latest 500 events).';

-- The overview dashboard (reports:read_all): organization-wide figures.
create or replace function crm.reports_overview(from_date date default null, to_date date default null) returns jsonb
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  f date := coalesce(from_date, date_trunc('month', now())::date);
  t date := coalesce(to_date, current_date);
begin
  perform crm_private.require_permission('reports:read_all');
  if f > t then
    raise exception 'from_date is after to_date.' using errcode = 'CRVAL', column = 'fromDate';
  end if;
  return jsonb_build_object(
    'period', jsonb_build_object('from', f, 'to', t),
    'customersByStatus', coalesce((
      select jsonb_agg(jsonb_build_object('status', status, 'count', n) order by status)
        from (select status, count(*) as n from crm.customers where organization_id = org and deleted_at is null group by status) x), '[]'),
    'dealsByStage', coalesce((
      select jsonb_agg(jsonb_build_object('pipeline', p.name, 'stageId', s.id, 'stage', s.name, 'position', s.position,
                                          'count', coalesce(x.n, 0), 'amount', coalesce(x.amount, 0)) order by p.name, s.position)
        from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id
        left join (select stage_id, count(*) as n, sum(amount) as amount from crm.deals
                    where organization_id = org and deleted_at is null group by stage_id) x on x.stage_id = s.id
       where s.organization_id = org), '[]'),
    'wonRevenue', (
      select jsonb_build_object('count', count(*), 'amount', coalesce(sum(d.amount), 0))
        from crm.deals d join crm.pipeline_stages s on s.id = d.stage_id
       where d.organization_id = org and d.deleted_at is null and s.is_won and d.actual_close_date between f and t),
    'openPipeline', (
      select jsonb_build_object('count', count(*), 'amount', coalesce(sum(d.amount), 0),
                                'weightedForecast', coalesce(round(sum(d.amount * coalesce(d.probability, s.probability) / 100.0), 2), 0))
        from crm.deals d join crm.pipeline_stages s on s.id = d.stage_id
       where d.organization_id = org and d.deleted_at is null and not s.is_won and not s.is_lost),
    'overdueTasksByAssignee', coalesce((
      select jsonb_agg(jsonb_build_object('assigneeId', x.assignee_id, 'name', u.full_name, 'username', u.username, 'count', x.n) order by x.n desc)
        from (select assignee_id, count(*) as n from crm.tasks
               where organization_id = org and due_at < now() and status not in ('completed', 'cancelled')
               group by assignee_id) x
        left join crm.users u on u.id = x.assignee_id), '[]')
  );
end
$$;
comment on function crm.reports_overview(date, date) is 'Customers by status, deals by stage, won revenue in the period (default: this month), open pipeline with weighted forecast, overdue tasks per assignee. Needs reports:read_all.';

grant execute on function crm.delete_customer(uuid), crm.delete_contact(uuid), crm.delete_deal(uuid), crm.delete_project(uuid),
  crm.delete_note(uuid) to crm_user;
grant execute on function crm.move_deal_stage(uuid, uuid, text), crm.make_primary_contact(uuid), crm.assign_task(uuid, uuid),
  crm.update_task_status(uuid, text), crm.my_tasks(boolean), crm.restore_customer(uuid), crm.restore_contact(uuid),
  crm.restore_deal(uuid), crm.restore_project(uuid), crm.restore_note(uuid), crm.purge_customer(uuid), crm.purge_deal(uuid),
  crm.purge_project(uuid), crm.purge_note(uuid), crm.deleted_customers(), crm.search_language(), crm.search(text, text[]),
  crm.customer_timeline(uuid), crm.reports_overview(date, date)
  to crm_user;

-- Relation names in the API for references whose column names do not say what they point at.
comment on constraint customers_owner_fkey on crm.customers is E'@foreignFieldName ownedCustomers';
comment on constraint customers_referred_by_fkey on crm.customers is E'@fieldName referredBy\n@foreignFieldName referrals';
comment on constraint deals_owner_fkey on crm.deals is E'@foreignFieldName ownedDeals';
comment on constraint tasks_assignee_fkey on crm.tasks is E'@foreignFieldName assignedTasks';
comment on constraint projects_manager_fkey on crm.projects is E'@foreignFieldName managedProjects';
comment on constraint work_logs_user_fkey on crm.work_logs is E'@fieldName member\n@foreignFieldName workLogs';
comment on constraint deal_stage_history_from_fkey on crm.deal_stage_history is E'@fieldName fromStage\n@foreignFieldName movesFrom';
comment on constraint deal_stage_history_to_fkey on crm.deal_stage_history is E'@fieldName toStage\n@foreignFieldName movesTo';
comment on constraint pipeline_stage_transitions_from_fkey on crm.pipeline_stage_transitions is E'@fieldName fromStage\n@foreignFieldName transitionsFrom';
comment on constraint pipeline_stage_transitions_to_fkey on crm.pipeline_stage_transitions is E'@fieldName toStage\n@foreignFieldName transitionsTo';
comment on constraint task_dependencies_task_fkey on crm.task_dependencies is E'@fieldName task\n@foreignFieldName dependencies';
comment on constraint task_dependencies_depends_on_fkey on crm.task_dependencies is E'@fieldName dependsOn\n@foreignFieldName dependents';
comment on constraint team_members_member_fkey on crm.team_members is E'@fieldName membership\n@foreignFieldName teamMemberships';
comment on column crm.customers.custom_fields is E'@behavior +filterBy\nValues of the organization''s custom fields for customers (checked against their definitions).';
comment on column crm.contacts.custom_fields is E'@behavior +filterBy\nValues of the organization''s custom fields for contacts.';
comment on column crm.deals.custom_fields is E'@behavior +filterBy\nValues of the organization''s custom fields for deals.';
comment on constraint deals_stage_fkey on crm.deals is E'@fieldName stage\n@foreignFieldName deals';
comment on constraint deals_pipeline_fkey on crm.deals is E'@fieldName pipeline\n@foreignFieldName deals';
comment on constraint customers_created_by_fkey on crm.customers is E'@fieldName creator\n@foreignFieldName createdCustomers';
comment on constraint deals_created_by_fkey on crm.deals is E'@fieldName creator\n@foreignFieldName createdDeals';
comment on constraint tasks_created_by_fkey on crm.tasks is E'@fieldName creator\n@foreignFieldName createdTasks';
comment on constraint notes_author_id_fkey on crm.notes is E'@fieldName author\n@foreignFieldName authoredNotes';
comment on constraint organization_memberships_invited_by_fkey on crm.organization_memberships is E'@fieldName inviter\n@foreignFieldName invitedMemberships';
comment on constraint invitations_invited_by_fkey on crm.invitations is E'@fieldName inviter\n@foreignFieldName sentInvitations';
comment on constraint invitations_accepted_by_fkey on crm.invitations is E'@fieldName acceptor\n@foreignFieldName acceptedInvitations';
comment on constraint role_permissions_granted_by_fkey on crm.role_permissions is E'@fieldName grantor\n@foreignFieldName grantedPermissions';
comment on constraint customer_status_history_changed_by_fkey on crm.customer_status_history is E'@fieldName changer\n@foreignFieldName customerStatusChanges';
comment on constraint deal_stage_history_changed_by_fkey on crm.deal_stage_history is E'@fieldName changer\n@foreignFieldName dealStageChanges';
comment on constraint audit_log_actor_id_fkey on crm.audit_log is E'@fieldName actor\n@foreignFieldName auditEntries';

-- Identity follow-ups -----------------------------------------------------------------------------
-- Role names travel in the access token's `role` claim, where names of database roles are refused.
alter table crm.roles drop constraint if exists roles_name_not_database_role;
alter table crm.roles add constraint roles_name_not_database_role
  check (name::text !~* '^(crm_.*|pg_.*|postgres|root|rds_?superuser|cloudsqlsuperuser|azure_superuser|supabase_admin)$');

-- Teams are read with teams:read (every default role has it).
drop policy if exists teams_select on crm.teams;
create policy teams_select on crm.teams for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:read')));
drop policy if exists team_members_select on crm.team_members;
create policy team_members_select on crm.team_members for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:read')));
