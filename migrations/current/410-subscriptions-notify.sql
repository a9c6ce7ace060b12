-- Change events for GraphQL subscriptions (dealChanged, taskChanged, customerChanged) over
-- LISTEN/NOTIFY, and the signals that end subscriptions when a session ends.
--
-- Payloads carry ids and the owner columns only; the server re-reads each row under the subscriber's
-- row-level security before sending anything, so the channel itself reveals nothing to a client.
-- Channels are per organization: cairn:<resource>:<organization id> (at most 63 bytes).

-- One statement-level trigger per table and operation (transition tables, so an import of 100,000
-- rows is one pass, not 100,000 trigger calls). A statement that changes more than 100 rows sends
-- BULK events instead: the distinct owners of the changed rows, in chunks, so a subscriber is told
-- only when rows it may see changed.
--
-- TG_ARGV[0]: the resource (customers, deals, tasks); the owner column is owner_id, or assignee_id
-- for tasks (whose creator also sees them).
create or replace function crm_private.tg_realtime_changes() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  res text := tg_argv[0];
  owner_col text := case tg_argv[0] when 'tasks' then 'assignee_id' else 'owner_id' end;
  changes jsonb[];
  chunk record;
  touched int;
  src text := case tg_op when 'INSERT' then 'new_rows' when 'DELETE' then 'old_rows'
                         else '(select * from new_rows union all select * from old_rows)' end;
begin
  execute format('select count(*) from %s r', case tg_op when 'DELETE' then 'old_rows' else 'new_rows' end) into touched;
  if touched > 100 then
    -- Many rows (an import, a bulk update): per organization, the distinct owners (before and after)
    -- and creators of the rows, 100 a message; rows without any of them reach *_all holders only.
    for chunk in execute format($q$
      with touched as (
        select j->>'organization_id' as org, j->>%L as owner, j->>'created_by' as creator, j->>'pipeline_id' as pipeline
          from (select to_jsonb(r) as j from %s r) x
      ), owners as (
        select distinct org, o as owner from touched cross join lateral unnest(array[owner, creator]) o where o is not null
      ), numbered as (
        select org, owner, (row_number() over (partition by org order by owner) - 1) / 100 as part from owners
      )
      select org, array_agg(owner) as owners, false as unowned,
             (select jsonb_agg(distinct t.pipeline) from touched t where t.org = numbered.org and t.pipeline is not null) as pipelines
        from numbered group by org, part
      union all
      select distinct org, '{}'::text[], true, null::jsonb from touched where owner is null and creator is null$q$, owner_col, src)
    loop
      perform pg_notify('cairn:' || res || ':' || chunk.org,
                        jsonb_strip_nulls(jsonb_build_object('op', 'BULK', 'owners', to_jsonb(chunk.owners), 'pipelines', chunk.pipelines,
                                                             'unowned', case when chunk.unowned then true end))::text);
    end loop;
    return null;
  end if;
  -- One row per change: {op, id, org, owner (now), was (owner before), creator, pipeline}.
  if tg_op = 'INSERT' then
    select array_agg(jsonb_build_object('op', 'CREATED', 'id', j->>'id', 'org', j->>'organization_id', 'owner', j->>owner_col,
                                        'creator', j->>'created_by', 'pipeline', j->>'pipeline_id'))
      into changes
      from (select to_jsonb(n) as j from new_rows n) x
     where j->>'deleted_at' is null;
  elsif tg_op = 'UPDATE' then
    select array_agg(jsonb_build_object(
             'op', case when o->>'deleted_at' is null and n->>'deleted_at' is not null then 'DELETED' else 'UPDATED' end,
             'id', n->>'id', 'org', n->>'organization_id', 'owner', n->>owner_col, 'was', o->>owner_col,
             'creator', n->>'created_by', 'pipeline', n->>'pipeline_id'))
      into changes
      from (select to_jsonb(nr) as n, to_jsonb(orow) as o
              from new_rows nr join old_rows orow on orow.id = nr.id) x
     where not (o->>'deleted_at' is not null and n->>'deleted_at' is not null)
       and (o - 'updated_at' - 'search_vector') is distinct from (n - 'updated_at' - 'search_vector');
  else
    select array_agg(jsonb_build_object('op', 'DELETED', 'id', j->>'id', 'org', j->>'organization_id', 'was', j->>owner_col,
                                        'creator', j->>'created_by', 'pipeline', j->>'pipeline_id'))
      into changes
      from (select to_jsonb(o) as j from old_rows o) x
     where j->>'deleted_at' is null;
  end if;
  if changes is null then
    return null;
  end if;
  perform pg_notify('cairn:' || res || ':' || (c->>'org'), jsonb_strip_nulls(c - 'org')::text)
     from unnest(changes) c;
  return null;
end
$$;

do $$
declare
  t text;
begin
  foreach t in array array['customers', 'deals', 'tasks'] loop
    execute format('drop trigger if exists _700_realtime_insert on crm.%I', t);
    execute format('create trigger _700_realtime_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_realtime_changes(%L)', t, t);
    execute format('drop trigger if exists _700_realtime_update on crm.%I', t);
    execute format('create trigger _700_realtime_update after update on crm.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function crm_private.tg_realtime_changes(%L)', t, t);
    execute format('drop trigger if exists _700_realtime_delete on crm.%I', t);
    execute format('create trigger _700_realtime_delete after delete on crm.%I referencing old table as old_rows
                    for each statement execute function crm_private.tg_realtime_changes(%L)', t, t);
  end loop;
end
$$;

-- Ending subscriptions -------------------------------------------------------------------------------
-- A session that ends (logout, password change or reset, deactivation, refresh-token reuse) tells the
-- server, which closes that session's subscriptions at once.
create or replace function crm_private.tg_session_ended() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform pg_notify('cairn:session:' || new.id, coalesce(new.revoked_reason, 'revoked'));
  return null;
end
$$;
drop trigger if exists _700_session_ended on crm_private.sessions;
create trigger _700_session_ended after update of revoked_at on crm_private.sessions
  for each row when (old.revoked_at is null and new.revoked_at is not null)
  execute function crm_private.tg_session_ended();

-- A membership deactivated or removed ends that member's sessions in the organization too (their
-- tokens stop working at the next request; their subscriptions stop now).
create or replace function crm_private.tg_membership_ended() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform pg_notify('cairn:session:' || s.id, 'membership')
     from crm_private.sessions s
    where s.user_id = old.user_id and s.organization_id = old.organization_id and s.revoked_at is null;
  return null;
end
$$;
drop trigger if exists _700_membership_ended on crm.organization_memberships;
create trigger _700_membership_ended after update of is_active on crm.organization_memberships
  for each row when (old.is_active and not new.is_active) execute function crm_private.tg_membership_ended();
drop trigger if exists _700_membership_removed on crm.organization_memberships;
create trigger _700_membership_removed after delete on crm.organization_memberships
  for each row execute function crm_private.tg_membership_ended();
