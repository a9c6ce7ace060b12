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
