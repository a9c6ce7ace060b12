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
