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
