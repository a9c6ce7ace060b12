--! Previous: sha1:b4deafc69c233c9c2c313a8018846c0b58ba6efa
--! Hash: sha1:15845ee275cfbef0bb0f3b8246eadc07aed3605b
--! Message: RFM runs write and log only the customers whose values changed

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 540-rfm-incremental.sql
-- RFM scoring writes only what changed (docs/rfm.md "What a run writes"). A run still scores every
-- customer of the organization in one statement, but writes a customer row, and logs it in
-- crm.rfm_scores, only when the customer's RFM values changed: R, F, M, the score, the order count,
-- the monetary value, the date of the last counted order, or the level. rfm_scored_at is when the
-- customer's values last changed, and rfm_recency_days is counted to that instant, so the last order's
-- date (rfm_scored_at's local date − rfm_recency_days) stays exact without rewriting every buying
-- customer every day. crm.rfm_scores becomes a change log: the state after any run is, per customer,
-- the latest entry at or before the run's as_of; retention keeps the entry in force at the cutoff.

comment on column crm.customers.rfm_recency_days is E'@behavior -insert -update\nDays from the local date of the last counted order to the local date of rfmScoredAt (null: no counted order in the lookback window). Recency today = this + days since rfmScoredAt.';
comment on column crm.customers.rfm_scored_at is E'@behavior -insert -update\nWhen an rfm:score run last changed this customer''s RFM values or level (a run that changes nothing leaves it; the latest run is in rfmRuns).';
comment on column crm.customers.rfm_order_count is E'@behavior -insert -update\nCounted orders in the lookback window, as of the latest rfm:score run (0: none).';
comment on column crm.customers.rfm_monetary_value is E'@behavior -insert -update\nNet amount (paid minus refunded) of the counted orders in the lookback window, as of the latest rfm:score run (0: none).';
comment on table crm.rfm_scores is E'@behavior -insert -update -delete\nThe change log of RFM scoring: one entry per customer per run that changed the customer''s R, F, M, score, raw values or level, with the level before and after. A customer''s state after any run is its latest entry at or before the run''s asOf. Visible with the customer.';
comment on column crm.rfm_runs.customers_scored is 'Customers scored by the run (every live customer of the organization).';
comment on column crm.rfm_runs.levels_changed is 'Customers whose level the run changed.';

-- The rfm:score job. Payload: {"rfmRunId"?: a queued run (recalculateRfm), "asOf"?: the instant to score
-- for (tests), "jobRunId"?: the crm.job_runs row (set by the worker task)}. Returns the customers whose
-- values changed (the rows written; customers_scored on the run has every customer scored).
create or replace function crm_jobs.score_rfm(payload jsonb default '{}'::jsonb) returns bigint
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  tz text := crm_jobs.organization_time_zone();
  t_now timestamptz := coalesce((payload->>'asOf')::timestamptz, now());
  t_day date := (t_now at time zone tz)::date;
  cutoff timestamptz;
  s crm.rfm_settings;
  run uuid;
  n_scored bigint;
  n_written bigint;
  n_changed bigint;
  w_sum numeric;
  r_b int[];
  f_b int[];
  m_b numeric[];
begin
  select * into s from crm.rfm_settings x where x.organization_id = org;
  if s.id is null then
    raise exception 'The organization has no RFM settings.' using errcode = 'CRNFD';
  end if;
  w_sum := s.recency_weight + s.frequency_weight + s.monetary_weight;
  r_b := s.recency_breaks::int[];
  f_b := s.frequency_breaks::int[];
  m_b := s.monetary_breaks::numeric[];

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
  -- (fixed break-points or quintiles), map the score to a level, and write and log only the customers
  -- whose values changed.
  with lv as materialized (
    select l.id, l.rank, l.minimum_score from crm.customer_levels l
  ), agg as (
    select o.customer_id,
           t_day - max(o.ordered_at at time zone tz)::date as recency_days,
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
    -- Thresholds: crm_jobs.rfm_threshold_score's rule, written out here (a function with its own
    -- search_path is not inlined, and 150,000 calls of it cost more than the rest of a quiet run).
    select t.customer_id, t.recency_days, t.order_count, t.monetary_value,
           case when s.mode = 'quintiles' then max(t.r_tile) over (partition by t.recency_days)
                else 1 + (t.recency_days <= r_b[1])::int + (t.recency_days <= r_b[2])::int
                       + (t.recency_days <= r_b[3])::int + (t.recency_days <= r_b[4])::int end as r,
           case when s.mode = 'quintiles' then max(t.f_tile) over (partition by t.order_count)
                else 1 + (t.order_count >= f_b[1])::int + (t.order_count >= f_b[2])::int
                       + (t.order_count >= f_b[3])::int + (t.order_count >= f_b[4])::int end as f,
           case when s.mode = 'quintiles' then max(t.m_tile) over (partition by t.monetary_value)
                else 1 + (t.monetary_value >= m_b[1])::int + (t.monetary_value >= m_b[2])::int
                       + (t.monetary_value >= m_b[3])::int + (t.monetary_value >= m_b[4])::int end as m
      from tiles t
  ), scored as (
    select c.id, c.level_id as level_before, c.level_set_by_hand,
           coalesce(q.r, 1)::smallint as r, coalesce(q.f, 1)::smallint as f, coalesce(q.m, 1)::smallint as m,
           q.recency_days, coalesce(q.order_count, 0) as order_count,
           coalesce(q.monetary_value, 0) as monetary_value,
           round((s.recency_weight * coalesce(q.r, 1) + s.frequency_weight * coalesce(q.f, 1) + s.monetary_weight * coalesce(q.m, 1)) / w_sum, 2) as score,
           -- What the row holds now (the last order's date is derived from the recency as of rfm_scored_at).
           c.rfm_scored_at as old_scored_at,
           (c.rfm_recency_score, c.rfm_frequency_score, c.rfm_monetary_score, c.rfm_score, c.rfm_order_count, c.rfm_monetary_value,
            (c.rfm_scored_at at time zone tz)::date - c.rfm_recency_days) as old_values
      from crm.customers c
      left join q on q.customer_id = c.id
     where c.deleted_at is null
  ), mapped as (
    select x.*,
           case when x.level_set_by_hand then x.level_before
                else coalesce((select lv.id from lv where lv.minimum_score <= x.score order by lv.rank desc limit 1), x.level_before)
           end as level_after
      from scored x
  ), changed as materialized (
    select m.* from mapped m
     where m.old_scored_at is null
        or m.level_after is distinct from m.level_before
        or (m.r, m.f, m.m, m.score, m.order_count, m.monetary_value::numeric(16, 2), t_day - m.recency_days) is distinct from m.old_values
  ), upd as (
    update crm.customers c
       set rfm_recency_score = m.r, rfm_frequency_score = m.f, rfm_monetary_score = m.m, rfm_score = m.score,
           rfm_recency_days = m.recency_days, rfm_order_count = m.order_count, rfm_monetary_value = m.monetary_value,
           rfm_scored_at = t_now, level_id = m.level_after
      from changed m
     where c.id = m.id
    returning (m.level_after is distinct from m.level_before) as level_changed
  ), logged as (
    insert into crm.rfm_scores (run_id, customer_id, recency_score, frequency_score, monetary_score, score, recency_days,
                                order_count, monetary_value, level_before_id, level_after_id, scored_at)
    select run, m.id, m.r, m.f, m.m, m.score, m.recency_days, m.order_count, m.monetary_value, m.level_before, m.level_after, t_now
      from changed m
  )
  select (select count(*) from mapped), count(*), count(*) filter (where level_changed)
    into n_scored, n_written, n_changed from upd;

  perform set_config('cairn.level_change_source', '', true), set_config('cairn.level_change_reason', '', true),
          set_config('cairn.rfm_scoring', '', true);

  update crm.rfm_runs r
     set status = 'completed', finished_at = clock_timestamp(), customers_scored = n_scored, levels_changed = n_changed,
         mode = s.mode, job_run_id = nullif(payload->>'jobRunId', '')::uuid,
         settings = jsonb_build_object('mode', s.mode, 'recencyBreaks', s.recency_breaks, 'frequencyBreaks', s.frequency_breaks,
           'monetaryBreaks', s.monetary_breaks, 'weights', jsonb_build_array(s.recency_weight, s.frequency_weight, s.monetary_weight),
           'lookbackDays', s.lookback_days, 'countedStatuses', s.counted_statuses)
   where r.id = run;

  -- Retention (the change log stays complete from the cutoff on): delete the entries older than the
  -- cutoff that a later entry of the same customer, also not after the cutoff, supersedes — each
  -- customer keeps the entry in force at the cutoff — then the completed runs older than the cutoff
  -- that hold no entry any more.
  cutoff := t_now - make_interval(days => s.scores_retention_days);
  delete from crm.rfm_scores e
   using crm.rfm_runs r
   where r.status = 'completed' and r.as_of < cutoff and e.organization_id = r.organization_id and e.run_id = r.id
     and exists (select 1 from crm.rfm_scores n
                  where n.organization_id = e.organization_id and n.customer_id = e.customer_id
                    and n.scored_at <= cutoff and (n.scored_at, n.id) > (e.scored_at, e.id));
  delete from crm.rfm_runs r
   where r.status = 'completed' and r.as_of < cutoff
     and not exists (select 1 from crm.rfm_scores e where e.organization_id = r.organization_id and e.run_id = r.id);

  return n_written;
end
$$;
grant execute on function crm_jobs.score_rfm(jsonb) to crm_user;

comment on column crm.rfm_distribution.last_scored_at is 'The latest rfmScoredAt among the customers: when a run last changed one of them (the latest run, changed or not, is in rfmRuns).';
