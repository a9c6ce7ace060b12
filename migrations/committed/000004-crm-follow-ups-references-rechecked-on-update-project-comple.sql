--! Previous: sha1:fcd2c4a77cdde265b8a8a3358c779e5995edff94
--! Hash: sha1:3e980c3031dc618149cdf577fdf4e86803bc8fa3
--! Message: crm follow-ups: references rechecked on update, project completion, audit keys, reports per currency

-- Policies that write a reference must see what it points at: a row moved onto a customer, deal,
-- project or task the caller cannot see is refused (on insert and on update).
drop policy if exists deals_update on crm.deals;
create policy deals_update on crm.deals for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('deals:update_all')) or owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[])))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('deals:update_all')) or owner_id = any ((select crm.visible_owner_ids('deals', 'update'))::uuid[]))
         and exists (select 1 from crm.customers c where c.id = deals.customer_id));

drop policy if exists projects_insert on crm.projects;
create policy projects_insert on crm.projects for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('projects:create'))
              and exists (select 1 from crm.customers c where c.id = projects.customer_id)
              and (deal_id is null or exists (select 1 from crm.deals d where d.id = projects.deal_id)));
drop policy if exists projects_update on crm.projects;
create policy projects_update on crm.projects for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and ((select crm.has_permission('projects:update')) or manager_id = (select crm.current_user_id())))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('projects:update')) or manager_id = (select crm.current_user_id()))
         and exists (select 1 from crm.customers c where c.id = projects.customer_id)
         and (deal_id is null or exists (select 1 from crm.deals d where d.id = projects.deal_id)));

drop policy if exists tasks_insert on crm.tasks;
create policy tasks_insert on crm.tasks for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('tasks:create'))
              and (assignee_id = (select crm.current_user_id()) or assignee_id is null or (select crm.has_permission('tasks:assign')))
              and (customer_id is null or exists (select 1 from crm.customers c where c.id = tasks.customer_id))
              and (contact_id is null or exists (select 1 from crm.contacts c where c.id = tasks.contact_id))
              and (deal_id is null or exists (select 1 from crm.deals d where d.id = tasks.deal_id))
              and (project_id is null or exists (select 1 from crm.projects p where p.id = tasks.project_id)));
drop policy if exists tasks_update on crm.tasks;
create policy tasks_update on crm.tasks for update
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or assignee_id = any ((select crm.visible_owner_ids('tasks', 'update'))::uuid[])))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or assignee_id = any ((select crm.visible_owner_ids('tasks', 'update'))::uuid[]))
         and (customer_id is null or exists (select 1 from crm.customers c where c.id = tasks.customer_id))
         and (contact_id is null or exists (select 1 from crm.contacts c where c.id = tasks.contact_id))
         and (deal_id is null or exists (select 1 from crm.deals d where d.id = tasks.deal_id))
         and (project_id is null or exists (select 1 from crm.projects p where p.id = tasks.project_id)));

drop policy if exists work_logs_insert on crm.work_logs;
create policy work_logs_insert on crm.work_logs for insert
  with check (organization_id = (select crm.current_org_id()) and user_id = (select crm.current_user_id())
              and (select crm.has_permission('worklogs:create'))
              and exists (select 1 from crm.customers c where c.id = work_logs.customer_id)
              and (task_id is null or exists (select 1 from crm.tasks t where t.id = work_logs.task_id))
              and (project_id is null or exists (select 1 from crm.projects p where p.id = work_logs.project_id)));
drop policy if exists work_logs_update on crm.work_logs;
create policy work_logs_update on crm.work_logs for update
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('worklogs:update')) or user_id = (select crm.current_user_id())))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('worklogs:update')) or user_id = (select crm.current_user_id()))
         and exists (select 1 from crm.customers c where c.id = work_logs.customer_id)
         and (task_id is null or exists (select 1 from crm.tasks t where t.id = work_logs.task_id))
         and (project_id is null or exists (select 1 from crm.projects p where p.id = work_logs.project_id)));

drop policy if exists notes_update on crm.notes;
create policy notes_update on crm.notes for update
  using (organization_id = (select crm.current_org_id()) and deleted_at is null
         and (author_id = (select crm.current_user_id()) or (select crm.has_permission('notes:delete'))))
  with check (organization_id = (select crm.current_org_id())
         and (customer_id is null or exists (select 1 from crm.customers c where c.id = notes.customer_id))
         and (contact_id is null or exists (select 1 from crm.contacts c where c.id = notes.contact_id))
         and (deal_id is null or exists (select 1 from crm.deals d where d.id = notes.deal_id))
         and (project_id is null or exists (select 1 from crm.projects p where p.id = notes.project_id)));

-- Projects: completedAt is stamped when the status becomes completed.
create or replace function crm_private.tg_project_completed() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if new.status = 'completed' and (tg_op = 'INSERT' or old.status is distinct from 'completed') then
    new.completed_at := now();
  elsif new.status <> 'completed' then
    new.completed_at := null;
  end if;
  return new;
end
$$;
drop trigger if exists _120_completed on crm.projects;
create trigger _120_completed before insert or update of status on crm.projects
  for each row execute function crm_private.tg_project_completed();

-- Audit entries of rows without an `id` (links such as tag assignments) are keyed by their
-- reference columns, e.g. "customer_id=…:tag_id=…".
create or replace function crm_private.tg_audit() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  old_row jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
  new_row jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
  row_data jsonb := coalesce(new_row, old_row);
  diff jsonb := '{}'::jsonb;
  k text;
  org uuid;
  rec text;
begin
  org := coalesce((row_data->>'organization_id')::uuid, case when tg_table_name = 'organizations' then (row_data->>'id')::uuid end);
  if org is null then
    return null;
  end if;
  rec := coalesce(row_data->>'id', (
    select string_agg(key || '=' || value, ':' order by key) from jsonb_each_text(row_data)
     where (key like '%\_id' or key in ('permission_code')) and key <> 'organization_id' and value is not null));
  for k in select jsonb_object_keys(row_data) loop
    continue when k = any (tg_argv) or k in ('updated_at', 'created_at');
    if tg_op = 'INSERT' then
      continue when new_row->k = 'null'::jsonb;
      diff := diff || jsonb_build_object(k, jsonb_build_object('new', new_row->k));
    elsif tg_op = 'DELETE' then
      diff := diff || jsonb_build_object(k, jsonb_build_object('old', old_row->k));
    elsif old_row->k is distinct from new_row->k then
      diff := diff || jsonb_build_object(k, jsonb_build_object('old', old_row->k, 'new', new_row->k));
    end if;
  end loop;
  if tg_op = 'UPDATE' and diff = '{}'::jsonb then
    return null;
  end if;
  insert into crm.audit_log (organization_id, actor_id, table_name, record_id, operation, changes, request_id)
  values (org, crm.current_user_id(), tg_table_name, coalesce(rec, ''), tg_op, diff, crm_private.request_id());
  return null;
end
$$;

-- makePrimaryContact without the leftover setting.
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
  update crm.contacts x set is_primary = false where x.organization_id = c.organization_id and x.customer_id = c.customer_id and x.is_primary and x.id <> c.id;
  update crm.contacts x set is_primary = true where x.id = c.id returning * into c;
  if c.id is null then
    raise exception 'You may not change this customer''s contacts.' using errcode = 'CRFBD', column = 'contactId';
  end if;
  return c;
end
$$;

-- Restoring respects the owner scope as well as the permission.
create or replace function crm_private.restore(tbl text, rid uuid, perm text) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
  resource text := case tbl when 'customers' then 'customers' when 'deals' then 'deals' end;
begin
  perform crm_private.require_permission(perm);
  execute format(
    'update crm.%I set deleted_at = null where id = $1 and organization_id = $2 and deleted_at is not null %s', tbl,
    case when resource is not null
      then format('and (crm.has_permission(%L) or owner_id = any (crm.visible_owner_ids(%L, %L)))', resource || ':update_all', resource, 'update')
      else '' end)
    using rid, crm.current_org_id();
  get diagnostics n = row_count;
  if n = 0 then
    raise exception 'Nothing deleted with that id.' using errcode = 'CRNFD', column = 'id';
  end if;
end
$$;

-- Money is reported per currency: amounts in different currencies are never added together.
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
                                          'count', coalesce((select sum(x.n) from (
                                             select count(*) as n from crm.deals d where d.organization_id = org and d.stage_id = s.id and d.deleted_at is null) x), 0),
                                          'amounts', coalesce((select jsonb_agg(jsonb_build_object('currency', d.currency, 'amount', d.amount) order by d.currency)
                                             from (select currency, sum(amount) as amount from crm.deals
                                                    where organization_id = org and stage_id = s.id and deleted_at is null group by currency) d), '[]'))
                       order by p.name, s.position)
        from crm.pipeline_stages s join crm.pipelines p on p.id = s.pipeline_id
       where s.organization_id = org), '[]'),
    'wonRevenue', coalesce((
      select jsonb_agg(jsonb_build_object('currency', currency, 'count', n, 'amount', amount) order by currency)
        from (select d.currency, count(*) as n, sum(d.amount) as amount
                from crm.deals d join crm.pipeline_stages s on s.id = d.stage_id
               where d.organization_id = org and d.deleted_at is null and s.is_won and d.actual_close_date between f and t
               group by d.currency) x), '[]'),
    'openPipeline', coalesce((
      select jsonb_agg(jsonb_build_object('currency', currency, 'count', n, 'amount', amount, 'weightedForecast', weighted) order by currency)
        from (select d.currency, count(*) as n, sum(d.amount) as amount,
                     round(sum(d.amount * coalesce(d.probability, s.probability) / 100.0), 2) as weighted
                from crm.deals d join crm.pipeline_stages s on s.id = d.stage_id
               where d.organization_id = org and d.deleted_at is null and not s.is_won and not s.is_lost
               group by d.currency) x), '[]'),
    'overdueTasksByAssignee', coalesce((
      select jsonb_agg(jsonb_build_object('assigneeId', x.assignee_id, 'name', u.full_name, 'username', u.username, 'count', x.n) order by x.n desc)
        from (select assignee_id, count(*) as n from crm.tasks
               where organization_id = org and due_at < now() and status not in ('completed', 'cancelled')
               group by assignee_id) x
        left join crm.users u on u.id = x.assignee_id), '[]')
  );
end
$$;
comment on function crm.reports_overview(date, date) is 'Customers by status, deals by stage (amounts per currency), won revenue in the period (default: this month) and the open pipeline with its probability-weighted forecast, per currency, and overdue tasks per assignee. Needs reports:read_all.';
