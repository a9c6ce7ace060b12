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
