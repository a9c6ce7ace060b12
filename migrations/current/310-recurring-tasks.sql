-- Recurring tasks (tasks:recur): a task with is_recurring is a template; every recurrence_interval
-- the daily tenant job creates its next occurrence.
--
-- The rule (docs/jobs.md, "Recurring tasks"), all in the organization's time zone:
--   * Occurrence n of a template is due to be created on the local date of
--     created_at + n × recurrence_interval; its due date is the template's due_at + n × interval.
--     Multiples of the interval are always added to the template's own dates, never to the previous
--     occurrence, so month ends stay month ends: Jan 31 + 1 month = Feb 28 (29), + 2 months = Mar 31.
--   * A run creates, for each template, the latest occurrence whose date has come (if it is newer than
--     the last one created): missed periods are not back-filled one by one.
--   * Copied: type, title, description, priority, estimated hours, customer, contact, deal, project,
--     and the assignee while their membership is active (unassigned otherwise). The occurrence
--     points at its template (recurrence_template_id) and has its number (occurrence_number).
--   * A template linked to a record that is deleted (hidden) does not recur until it is restored or
--     the link removed.
--   * Idempotent: the template's recurrence_count records the last occurrence created, and
--     (template, occurrence_number) is unique, so running twice creates nothing the second time.
--   * Ending a recurrence is an update (isRecurring: false); occurrences already created stay.
-- Intervals are whole days (weeks are 7 days) or whole months (years are 12 months), not mixed.

-- Columns --------------------------------------------------------------------------------------
alter table crm.tasks add column if not exists recurrence_template_id uuid;
alter table crm.tasks add column if not exists occurrence_number int;
alter table crm.tasks add column if not exists recurrence_count int not null default 0;

do $$
begin
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_template_fkey') then
    alter table crm.tasks add constraint tasks_recurrence_template_fkey foreign key (organization_id, recurrence_template_id)
      references crm.tasks (organization_id, id) on delete set null (recurrence_template_id);
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_occurrence_number_range') then
    alter table crm.tasks add constraint tasks_occurrence_number_range check (occurrence_number >= 1);
  end if;
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_count_range') then
    alter table crm.tasks add constraint tasks_recurrence_count_range check (recurrence_count >= 0);
  end if;
  -- Whole days or whole months, at least one day; no hours, no mix of months and days. Tasks saved
  -- before this rule with another interval (hours were allowed) keep it until they are edited: the
  -- constraint is then left NOT VALID rather than failing the migration.
  if not exists (select 1 from pg_constraint where conrelid = 'crm.tasks'::regclass and conname = 'tasks_recurrence_interval_valid') then
    alter table crm.tasks add constraint tasks_recurrence_interval_valid check (
      recurrence_interval is null
      or (date_trunc('day', recurrence_interval) = recurrence_interval
          and recurrence_interval >= interval '1 day'
          and (extract(day from recurrence_interval) = 0
               or extract(year from recurrence_interval) * 12 + extract(month from recurrence_interval) = 0))) not valid;
    begin
      alter table crm.tasks validate constraint tasks_recurrence_interval_valid;
    exception when check_violation then
      raise notice 'crm.tasks has recurring tasks with intervals in hours or mixed units; tasks_recurrence_interval_valid is left NOT VALID';
    end;
  end if;
end
$$;
create unique index if not exists tasks_recurrence_occurrence_key on crm.tasks (organization_id, recurrence_template_id, occurrence_number);

comment on column crm.tasks.recurrence_interval is 'How often a recurring task repeats: whole days or weeks (e.g. 7 days) or whole months (e.g. 1 month); not mixed.';
-- Filterable: the partial index tasks_recurring_idx (… where is_recurring) serves `isRecurring: true`.
comment on column crm.tasks.is_recurring is E'@isIndexed\nA recurring task is a template: every interval, its next occurrence is created (set false to end the recurrence).';
comment on column crm.tasks.last_triggered_at is E'@behavior -insert -update\nWhen the last occurrence was created from this template.';
comment on column crm.tasks.recurrence_template_id is E'@behavior -insert -update\nThe recurring task this occurrence was created from.';
comment on column crm.tasks.occurrence_number is E'@behavior -insert -update\nWhich occurrence of its template this is (1, 2, …).';
comment on column crm.tasks.recurrence_count is E'@behavior -insert -update\nOn a template: the number of the last occurrence created.';
comment on constraint tasks_recurrence_template_fkey on crm.tasks is E'@fieldName recurrenceTemplate\n@foreignFieldName occurrences';

-- The job writes these as crm_user (under RLS); the API hides them (behaviors above).
grant insert (recurrence_template_id, occurrence_number) on crm.tasks to crm_user;
grant update (last_triggered_at, recurrence_count) on crm.tasks to crm_user;

-- The schedule ---------------------------------------------------------------------------------------
create or replace function crm_jobs.interval_months(step interval) returns int
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select (extract(year from step) * 12 + extract(month from step))::int
$$;

-- How many whole intervals have passed from `anchor` (a local date and time) to the local date
-- `on_date`: the largest n with (anchor + n × step)::date <= on_date (0 before the first). An interval
-- saved before the whole-days-or-months rule counts as its months, else its days, at least one day.
create or replace function crm_jobs.recurrence_periods_elapsed(anchor timestamp, step interval, on_date date) returns int
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case
    when step is null or anchor is null or on_date <= anchor::date then 0
    when crm_jobs.interval_months(step) = 0 then (on_date - anchor::date) / greatest(extract(day from step)::int, 1)
    else (select case when (anchor + m * step)::date > on_date then m - 1 else m end
            from (select ((extract(year from on_date) - extract(year from anchor)) * 12
                          + extract(month from on_date) - extract(month from anchor))::int / crm_jobs.interval_months(step) as m) x)
  end
$$;

-- The job ----------------------------------------------------------------------------------------
-- One statement for the whole organization, run by the tenant job runner as the system principal:
-- RLS limits every table it touches to the organization. Returns the number of occurrences created.
-- payload.asOf (an instant) replaces now() — for tests and for re-running a missed day by hand.
create or replace function crm_jobs.recur_tasks(payload jsonb default '{}'::jsonb) returns bigint
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text := crm_jobs.organization_time_zone();
  as_of timestamptz := coalesce((payload->>'asOf')::timestamptz, now());
  today date := (as_of at time zone tz)::date;
  created bigint;
begin
  with due as (
    select t.*, p.n
      from crm.tasks t
      cross join lateral (
        select crm_jobs.recurrence_periods_elapsed(t.created_at at time zone tz, t.recurrence_interval, today) as n) p
     where t.is_recurring
       and p.n > t.recurrence_count
       and (t.customer_id is null or exists (select 1 from crm.customers c where c.id = t.customer_id))
       and (t.contact_id is null or exists (select 1 from crm.contacts c where c.id = t.contact_id))
       and (t.deal_id is null or exists (select 1 from crm.deals d where d.id = t.deal_id))
       and (t.project_id is null or exists (select 1 from crm.projects x where x.id = t.project_id))
  ), created_rows as (
    insert into crm.tasks (type, title, description, priority, due_at, assignee_id, customer_id, contact_id, deal_id, project_id,
                           estimated_hours, recurrence_template_id, occurrence_number)
    select d.type, d.title, d.description, d.priority,
           ((d.due_at at time zone tz) + d.n * d.recurrence_interval) at time zone tz,
           case when exists (select 1 from crm.organization_memberships m
                              where m.organization_id = d.organization_id and m.user_id = d.assignee_id and m.is_active)
                then d.assignee_id end,
           d.customer_id, d.contact_id, d.deal_id, d.project_id, d.estimated_hours, d.id, d.n
      from due d
    on conflict (organization_id, recurrence_template_id, occurrence_number) do nothing
    returning 1
  ), advanced as (
    update crm.tasks t set recurrence_count = d.n, last_triggered_at = as_of
      from due d
     where t.id = d.id
    returning 1
  )
  select count(*) into created from created_rows;
  return created;
end
$$;
grant execute on function crm_jobs.interval_months(interval), crm_jobs.recurrence_periods_elapsed(timestamp, interval, date),
  crm_jobs.recur_tasks(jsonb) to crm_user;
