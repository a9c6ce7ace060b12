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
