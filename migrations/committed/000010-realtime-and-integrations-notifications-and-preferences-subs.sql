--! Previous: sha1:870dbe273c5d4811869a6d8ad95d9ffaf17c6eb2
--! Hash: sha1:1625093956a42a345565a27cf3f0b9fec34a7fe7
--! Message: realtime and integrations: notifications and preferences, subscription events, webhook outbox and deliveries, CSV imports, per-statement audit of bulk writes

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 400-notifications.sql
-- Notifications: in-app notifications for members, created in the transaction of their cause, with a
-- typed preference per member and kind (in-app only, in-app + immediate e-mail, in-app + daily
-- digest, or off). Time-based notifications (follow-up reached, task due tomorrow / overdue) and the
-- daily digest are set-based functions run per organization by the worker.

-- Types ------------------------------------------------------------------------------------------
-- Kinds are an enum so that GraphQL clients get a typed list. A later module adds its own with
-- `alter type crm.notification_kind add value if not exists '…'` (plus a row in
-- crm_private.notification_kind_defaults); code that uses the new value must be PL/pgSQL (run after
-- the migration commits), because PostgreSQL refuses a new enum value in the transaction that adds it.
do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                  where n.nspname = 'crm' and t.typname = 'notification_kind') then
    create type crm.notification_kind as enum (
      'task_assigned', 'task_due_soon', 'task_overdue', 'deal_won', 'deal_lost', 'deal_stage_changed',
      'follow_up_due', 'mentioned', 'invitation_accepted', 'webhook_disabled', 'import_finished');
  end if;
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                  where n.nspname = 'crm' and t.typname = 'notification_channel') then
    create type crm.notification_channel as enum ('in_app', 'email', 'digest', 'off');
  end if;
end
$$;
comment on type crm.notification_kind is 'What a notification is about.';
comment on type crm.notification_channel is E'How a member receives a kind of notification: IN_APP (the notification list and the notificationAdded subscription), EMAIL (in-app plus an immediate e-mail), DIGEST (in-app plus the daily digest e-mail) or OFF (nothing).';

-- The default channel of each kind (a member's own preference overrides it). Text, not the enum, so
-- a module can add a kind and its default in one migration.
create table if not exists crm_private.notification_kind_defaults (
  kind text primary key,
  default_channel crm.notification_channel not null,
  description text not null
);
alter table crm_private.notification_kind_defaults enable row level security;
drop policy if exists no_access on crm_private.notification_kind_defaults;
create policy no_access on crm_private.notification_kind_defaults using (false);
insert into crm_private.notification_kind_defaults (kind, default_channel, description) values
  ('task_assigned', 'in_app', 'A task was assigned to you by someone else'),
  ('task_due_soon', 'in_app', 'A task assigned to you is due tomorrow'),
  ('task_overdue', 'in_app', 'A task assigned to you is past its due time'),
  ('deal_won', 'in_app', 'A deal you own was won'),
  ('deal_lost', 'in_app', 'A deal you own was lost'),
  ('deal_stage_changed', 'in_app', 'Someone else moved a deal you own to another stage'),
  ('follow_up_due', 'in_app', 'The follow-up date of a customer you own is reached'),
  ('mentioned', 'email', 'Someone mentioned you (@username) in a note'),
  ('invitation_accepted', 'in_app', 'Someone accepted an invitation you sent'),
  ('webhook_disabled', 'email', 'A webhook endpoint was disabled after repeated failures'),
  ('import_finished', 'in_app', 'A CSV import you started has finished')
on conflict (kind) do update set default_channel = excluded.default_channel, description = excluded.description;

-- Tables -----------------------------------------------------------------------------------------
create table if not exists crm.notifications (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  recipient_id uuid not null,
  kind crm.notification_kind not null,
  title text not null constraint notifications_title_length check (length(title) between 1 and 300),
  body text not null default '' constraint notifications_body_length check (length(body) <= 2000),
  record_type text constraint notifications_record_type_format check (record_type ~ '^[a-z_]{1,50}$'),
  record_id uuid,
  actor_id uuid references crm.users (id) on delete set null,
  data jsonb not null default '{}'::jsonb constraint notifications_data_object check (jsonb_typeof(data) = 'object'),
  channel crm.notification_channel not null default 'in_app'
    constraint notifications_channel_delivered check (channel <> 'off'),
  dedupe_key text,
  emailed_at timestamptz,
  read_at timestamptz,
  created_at timestamptz not null default now(),
  constraint notifications_organization_id_id_key unique (organization_id, id),
  constraint notifications_recipient_fkey foreign key (organization_id, recipient_id)
    references crm.organization_memberships (organization_id, user_id) on delete cascade
);
create index if not exists notifications_recipient_created_idx on crm.notifications (organization_id, recipient_id, created_at desc);
drop index if exists crm.notifications_unread_idx;
create index if not exists notifications_recipient_read_at_idx on crm.notifications (organization_id, recipient_id, read_at);
create index if not exists notifications_recipient_kind_idx on crm.notifications (organization_id, recipient_id, kind);
create unique index if not exists notifications_dedupe_key on crm.notifications (organization_id, recipient_id, dedupe_key)
  where dedupe_key is not null;
create index if not exists notifications_digest_idx on crm.notifications (organization_id, recipient_id, created_at)
  where channel = 'digest' and emailed_at is null;
create index if not exists notifications_actor_id_idx on crm.notifications (actor_id);
create index if not exists notifications_organization_id_created_at_idx on crm.notifications (organization_id, created_at);
comment on table crm.notifications is E'@behavior -insert -update -delete\nA notification for one member (only they see it). Created by the system in the transaction of its cause; mark read with markNotificationsRead.';
comment on column crm.notifications.organization_id is E'@behavior -insert -update';
comment on column crm.notifications.channel is 'How it was delivered: IN_APP, EMAIL (also e-mailed at once) or DIGEST (also in the daily digest).';
comment on column crm.notifications.dedupe_key is E'@behavior -*';
comment on column crm.notifications.record_type is 'What the notification is about: task, deal, customer, note, invitation, webhook_endpoint, import_job …';
comment on column crm.notifications.record_id is 'The id of that record (it is read under your own access rules; it may be hidden from you).';
comment on constraint notifications_recipient_fkey on crm.notifications is E'@fieldName recipient\n@foreignFieldName notifications';
comment on constraint notifications_actor_id_fkey on crm.notifications is E'@fieldName actor\n@foreignFieldName causedNotifications';

create table if not exists crm.notification_preferences (
  organization_id uuid not null default crm.current_org_id(),
  user_id uuid not null default crm.current_user_id(),
  kind crm.notification_kind not null,
  channel crm.notification_channel not null,
  updated_at timestamptz not null default now(),
  primary key (organization_id, user_id, kind),
  constraint notification_preferences_member_fkey foreign key (organization_id, user_id)
    references crm.organization_memberships (organization_id, user_id) on delete cascade
);
comment on table crm.notification_preferences is E'@behavior -insert -update -delete\nA member''s choice of channel for one kind of notification (set with setNotificationPreference; kinds without a row use their default).';
comment on column crm.notification_preferences.organization_id is E'@behavior -insert -update';
comment on constraint notification_preferences_member_fkey on crm.notification_preferences is E'@fieldName member\n@foreignFieldName notificationPreferences';

-- Policies ---------------------------------------------------------------------------------------
alter table crm.notifications enable row level security;
alter table crm.notification_preferences enable row level security;

drop policy if exists notifications_select on crm.notifications;
create policy notifications_select on crm.notifications for select
  using (organization_id = (select crm.current_org_id()) and recipient_id = (select crm.current_user_id()));
drop policy if exists notifications_update on crm.notifications;
create policy notifications_update on crm.notifications for update
  using (organization_id = (select crm.current_org_id()) and recipient_id = (select crm.current_user_id()))
  with check (organization_id = (select crm.current_org_id()) and recipient_id = (select crm.current_user_id()));

drop policy if exists notification_preferences_own on crm.notification_preferences;
create policy notification_preferences_own on crm.notification_preferences for all
  using (organization_id = (select crm.current_org_id()) and user_id = (select crm.current_user_id()))
  with check (organization_id = (select crm.current_org_id()) and user_id = (select crm.current_user_id()));

grant select on crm.notifications, crm.notification_preferences to crm_user;
grant update (read_at) on crm.notifications to crm_user;
grant insert (kind, channel), update (channel, updated_at) on crm.notification_preferences to crm_user;

-- Creating notifications ---------------------------------------------------------------------------
-- The channel a member gets a kind on: their preference, else the kind's default.
create or replace function crm_private.notification_channel_for(org uuid, member uuid, kind text)
  returns crm.notification_channel
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(
    (select p.channel from crm.notification_preferences p
      where p.organization_id = org and p.user_id = member and p.kind::text = notification_channel_for.kind),
    (select d.default_channel from crm_private.notification_kind_defaults d where d.kind = notification_channel_for.kind),
    'in_app'::crm.notification_channel)
$$;

-- Notifies active members (never the actor of the change: nobody is told about what they did
-- themselves; never the organization's system principal, which nobody reads as). Set-based over `recipients`; a repeated dedupe_key for the same member is skipped.
-- Returns the number of notifications created.
create or replace function crm_private.notify(
  org uuid,
  recipients uuid[],
  kind text,
  title text,
  body text default '',
  record_type text default null,
  record_id uuid default null,
  actor uuid default null,
  data jsonb default '{}'::jsonb,
  dedupe_key text default null
) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  n int;
begin
  insert into crm.notifications (organization_id, recipient_id, kind, title, body, record_type, record_id, actor_id, data, channel, dedupe_key)
  select org, m.user_id, notify.kind::crm.notification_kind, left(notify.title, 300), left(coalesce(notify.body, ''), 2000),
         notify.record_type, notify.record_id, notify.actor, coalesce(notify.data, '{}'::jsonb), ch.channel, notify.dedupe_key
    from crm.organization_memberships m
    join crm.users u on u.id = m.user_id and u.is_active and u.deleted_at is null and u.system_organization_id is null
    cross join lateral (select crm_private.notification_channel_for(org, m.user_id, notify.kind) as channel) ch
   where m.organization_id = org and m.is_active
     and m.user_id = any (recipients)
     and m.user_id is distinct from notify.actor
     and ch.channel <> 'off'
  on conflict (organization_id, recipient_id, dedupe_key) where dedupe_key is not null do nothing;
  get diagnostics n = row_count;
  return n;
end
$$;

-- A new notification: announced to the recipient's subscriptions (the payload is only the id; the
-- server re-reads it under the subscriber's row-level security) and, for EMAIL, e-mailed at once.
create or replace function crm_private.tg_notification_created() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform pg_notify('cairn:notifications:' || new.recipient_id, json_build_object('id', new.id)::text);
  if new.channel = 'email' then
    perform crm_private.add_job('notifications:email', jsonb_build_object('notificationId', new.id),
                                'notification-email:' || new.id);
  end if;
  return null;
end
$$;
drop trigger if exists _500_announce on crm.notifications;
create trigger _500_announce after insert on crm.notifications
  for each row execute function crm_private.tg_notification_created();

-- Causes (triggers in the transaction of the change) ------------------------------------------------
-- A task assigned to a member by someone else (on creation or reassignment).
create or replace function crm_private.tg_notify_task_assigned() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.notify(new.organization_id, array[new.assignee_id], 'task_assigned',
    'Task assigned to you: ' || new.title,
    case when new.due_at is not null then 'Due ' || to_char(new.due_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' else '' end,
    'task', new.id, crm.current_user_id(),
    jsonb_build_object('taskId', new.id, 'customerId', new.customer_id, 'dealId', new.deal_id, 'dueAt', new.due_at));
  return null;
end
$$;
drop trigger if exists _600_notify_assigned on crm.tasks;
create trigger _600_notify_assigned after insert on crm.tasks
  for each row when (new.assignee_id is not null) execute function crm_private.tg_notify_task_assigned();
drop trigger if exists _600_notify_reassigned on crm.tasks;
create trigger _600_notify_reassigned after update of assignee_id on crm.tasks
  for each row when (new.assignee_id is not null and new.assignee_id is distinct from old.assignee_id)
  execute function crm_private.tg_notify_task_assigned();

-- A deal's owner hears when it is won or lost, or moved to another stage, by someone else.
create or replace function crm_private.tg_notify_deal_moved() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  st crm.pipeline_stages;
  k text;
begin
  if new.owner_id is null then
    return null;
  end if;
  select * into st from crm.pipeline_stages s where s.organization_id = new.organization_id and s.id = new.stage_id;
  k := case when st.is_won then 'deal_won' when st.is_lost then 'deal_lost' else 'deal_stage_changed' end;
  perform crm_private.notify(new.organization_id, array[new.owner_id], k,
    case k when 'deal_won' then 'Deal won: ' when 'deal_lost' then 'Deal lost: ' else 'Deal moved to ' || st.name || ': ' end || new.name,
    case when k = 'deal_lost' and new.lost_reason is not null then 'Reason: ' || new.lost_reason else '' end,
    'deal', new.id, crm.current_user_id(),
    jsonb_build_object('dealId', new.id, 'fromStageId', old.stage_id, 'toStageId', new.stage_id, 'stage', st.name));
  return null;
end
$$;
drop trigger if exists _600_notify_moved on crm.deals;
create trigger _600_notify_moved after update of stage_id on crm.deals
  for each row when (new.stage_id is distinct from old.stage_id) execute function crm_private.tg_notify_deal_moved();

-- The @usernames a text mentions (an address such as a@b.example is not a mention).
create or replace function crm_private.mentioned_usernames(content text) returns text[]
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(distinct lower(m[1])), '{}')
    from regexp_matches(coalesce(content, ''), '(?:^|[^A-Za-z0-9._@-])@([A-Za-z0-9][A-Za-z0-9._-]{2,63})', 'g') as m
$$;

-- Members mentioned with @username in a note (on an edit, only the newly mentioned ones). The
-- notification carries an excerpt: the author chose to show it to them. The note and its record stay
-- under the member's own access rules.
create or replace function crm_private.tg_notify_mentions() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  names text[] := crm_private.mentioned_usernames(new.content);
  recipients uuid[];
  author text;
begin
  if tg_op = 'UPDATE' then
    names := array(select unnest(names) except select unnest(crm_private.mentioned_usernames(old.content)));
  end if;
  if cardinality(names) = 0 or new.deleted_at is not null then
    return null;
  end if;
  select coalesce(array_agg(m.user_id), '{}') into recipients
    from crm.organization_memberships m
    join crm.users u on u.id = m.user_id
   where m.organization_id = new.organization_id and m.is_active
     and (lower(u.username::text) = any (names) or lower(u.username::text) = any (array(select rtrim(x, '._-') from unnest(names) x)));
  if cardinality(recipients) = 0 then
    return null;
  end if;
  select coalesce(nullif(u.full_name, ''), u.username::text) into author from crm.users u where u.id = coalesce(crm.current_user_id(), new.author_id);
  perform crm_private.notify(new.organization_id, recipients, 'mentioned',
    coalesce(author, 'Someone') || ' mentioned you in a note',
    left(new.content, 280),
    'note', new.id, coalesce(crm.current_user_id(), new.author_id),
    jsonb_strip_nulls(jsonb_build_object('noteId', new.id, 'customerId', new.customer_id, 'contactId', new.contact_id,
                                         'dealId', new.deal_id, 'projectId', new.project_id)));
  return null;
end
$$;
drop trigger if exists _600_notify_mentions on crm.notes;
create trigger _600_notify_mentions after insert or update of content on crm.notes
  for each row execute function crm_private.tg_notify_mentions();

-- Whoever sent an invitation hears when it is accepted.
create or replace function crm_private.tg_notify_invitation_accepted() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  who text;
begin
  if new.invited_by is null then
    return null;
  end if;
  select coalesce(nullif(u.full_name, ''), u.username::text) into who from crm.users u where u.id = new.accepted_by;
  perform crm_private.notify(new.organization_id, array[new.invited_by], 'invitation_accepted',
    coalesce(who, new.email::text) || ' accepted your invitation', new.email::text,
    'invitation', new.id, new.accepted_by,
    jsonb_build_object('invitationId', new.id, 'userId', new.accepted_by));
  return null;
end
$$;
drop trigger if exists _600_notify_accepted on crm.invitations;
create trigger _600_notify_accepted after update of accepted_at on crm.invitations
  for each row when (old.accepted_at is null and new.accepted_at is not null)
  execute function crm_private.tg_notify_invitation_accepted();

-- Time-based notifications: one set-based statement per organization --------------------------------
-- Written to run per organization from the worker today and, unchanged, from the tenant job framework
-- later (they take the organization as an argument and are idempotent through dedupe keys).

-- The organization's time zone (settings.timezone), UTC when unset or unknown.
create or replace function crm_private.org_timezone(org uuid) returns text
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text;
begin
  select settings->>'timezone' into tz from crm.organizations where id = org;
  if tz is null then
    return 'UTC';
  end if;
  perform now() at time zone tz;
  return tz;
exception when others then
  return 'UTC';
end
$$;

-- Customers whose follow-up time is reached: their owner is told once per follow-up time (within a
-- week of it, so an old backlog is not replayed).
create or replace function crm_private.notify_follow_ups(org uuid, at timestamptz default now()) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  with due as (
    select c.id, c.name, c.owner_id, c.next_follow_up_at
      from crm.customers c
     where c.organization_id = org and c.deleted_at is null and c.owner_id is not null
       and c.next_follow_up_at <= at and c.next_follow_up_at > at - interval '7 days'
  )
  insert into crm.notifications (organization_id, recipient_id, kind, title, body, record_type, record_id, data, channel, dedupe_key)
  select org, d.owner_id, 'follow_up_due', left('Follow up with ' || d.name, 300),
         'Follow-up planned for ' || to_char(d.next_follow_up_at at time zone crm_private.org_timezone(org), 'YYYY-MM-DD HH24:MI'),
         'customer', d.id, jsonb_build_object('customerId', d.id, 'followUpAt', d.next_follow_up_at), ch.channel,
         'follow_up:' || d.id || ':' || extract(epoch from d.next_follow_up_at)::bigint
    from due d
    join crm.organization_memberships m on m.organization_id = org and m.user_id = d.owner_id and m.is_active
    cross join lateral (select crm_private.notification_channel_for(org, d.owner_id, 'follow_up_due') as channel) ch
   where ch.channel <> 'off'
  on conflict (organization_id, recipient_id, dedupe_key) where dedupe_key is not null do nothing;
  get diagnostics n = row_count;
  return n;
end
$$;

-- Open tasks due tomorrow (in the organization's time zone) and open tasks past their due time
-- (within the last 30 days): their assignee is told once per task and due time.
create or replace function crm_private.notify_due_tasks(org uuid, at timestamptz default now()) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  tz text := crm_private.org_timezone(org);
  tomorrow date := (at at time zone tz)::date + 1;
  n int;
begin
  with due as (
    select t.id, t.title, t.assignee_id, t.due_at, t.customer_id,
           case when t.due_at < at then 'task_overdue' else 'task_due_soon' end as kind
      from crm.tasks t
     where t.organization_id = org and t.assignee_id is not null
       and t.status not in ('completed', 'cancelled')
       and ((t.due_at < at and t.due_at > at - interval '30 days')
            or (t.due_at >= (tomorrow::timestamp at time zone tz) and t.due_at < ((tomorrow + 1)::timestamp at time zone tz)))
  )
  insert into crm.notifications (organization_id, recipient_id, kind, title, body, record_type, record_id, data, channel, dedupe_key)
  select org, d.assignee_id, d.kind::crm.notification_kind,
         left(case d.kind when 'task_overdue' then 'Overdue: ' else 'Due tomorrow: ' end || d.title, 300),
         'Due ' || to_char(d.due_at at time zone tz, 'YYYY-MM-DD HH24:MI') || ' (' || tz || ')',
         'task', d.id, jsonb_build_object('taskId', d.id, 'customerId', d.customer_id, 'dueAt', d.due_at), ch.channel,
         d.kind || ':' || d.id || ':' || extract(epoch from d.due_at)::bigint
    from due d
    join crm.organization_memberships m on m.organization_id = org and m.user_id = d.assignee_id and m.is_active
    cross join lateral (select crm_private.notification_channel_for(org, d.assignee_id, d.kind) as channel) ch
   where ch.channel <> 'off'
  on conflict (organization_id, recipient_id, dedupe_key) where dedupe_key is not null do nothing;
  get diagnostics n = row_count;
  return n;
end
$$;

-- The daily digest: every DIGEST notification not yet e-mailed is taken; each member with unread ones
-- gets one e-mail listing them (a job per member). Returns the number of e-mails queued.
create or replace function crm_private.send_digests(org uuid) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  with picked as (
    update crm.notifications x set emailed_at = now()
     where x.organization_id = org and x.channel = 'digest' and x.emailed_at is null
    returning x.recipient_id, x.kind, x.title, x.body, x.created_at, x.read_at
  ), per_member as (
    select p.recipient_id,
           jsonb_agg(jsonb_build_object('kind', p.kind, 'title', p.title, 'body', p.body, 'createdAt', p.created_at)
                     order by p.created_at) filter (where p.read_at is null) as items
      from picked p group by p.recipient_id
  )
  select count(crm_private.queue_notification_email(
           jsonb_build_object('digest', true, 'to', u.email, 'username', u.username, 'fullName', u.full_name,
                              'organization', o.name, 'items', pm.items)))
    into n
    from per_member pm
    join crm.users u on u.id = pm.recipient_id and u.is_active and u.deleted_at is null and u.email is not null
    join crm.organizations o on o.id = org
   where pm.items is not null;
  return n;
end
$$;

-- Queues one notification e-mail job; returns 1 (so set-based callers can count).
create or replace function crm_private.queue_notification_email(payload jsonb) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.add_job('notifications:email', payload);
  return 1;
end
$$;

-- The API -------------------------------------------------------------------------------------------
create or replace function crm.mark_notifications_read(ids uuid[] default null, all_unread boolean default false) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  if crm.current_user_id() is null then
    raise exception 'Sign in first.' using errcode = 'CRUNA';
  end if;
  if ids is null and not coalesce(all_unread, false) then
    raise exception 'Name the notifications (ids) or set allUnread.' using errcode = 'CRVAL', column = 'ids';
  end if;
  if cardinality(ids) > 1000 then
    raise exception 'At most 1000 ids at once; use allUnread.' using errcode = 'CRVAL', column = 'ids';
  end if;
  update crm.notifications x set read_at = now()
   where x.read_at is null
     and (coalesce(all_unread, false) or x.id = any (ids));
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.mark_notifications_read(uuid[], boolean) is 'Mark your notifications read: the ones named by ids, or all unread ones (allUnread: true). Returns how many changed.';

create or replace function crm.unread_notification_count() returns int
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select count(*)::int from crm.notifications where read_at is null
$$;
comment on function crm.unread_notification_count() is 'How many of your notifications in this organization are unread.';

create or replace function crm.set_notification_preference(kind crm.notification_kind, channel crm.notification_channel)
  returns crm.notification_preferences
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p crm.notification_preferences;
begin
  if crm.current_user_id() is null or crm.current_org_id() is null then
    raise exception 'Sign in to an organization first.' using errcode = 'CRUNA';
  end if;
  if set_notification_preference.channel in ('email', 'digest') and not exists (
    select 1 from crm.users u where u.id = crm.current_user_id() and u.email is not null
  ) then
    raise exception 'Your account has no e-mail address; choose IN_APP or OFF.' using errcode = 'CRVAL', column = 'channel';
  end if;
  insert into crm.notification_preferences as np (kind, channel) values (set_notification_preference.kind, set_notification_preference.channel)
  on conflict (organization_id, user_id, kind) do update set channel = excluded.channel, updated_at = now()
  returning * into p;
  return p;
end
$$;
comment on function crm.set_notification_preference(crm.notification_kind, crm.notification_channel) is 'Choose how you receive one kind of notification in this organization.';

drop type if exists crm.notification_setting cascade;
create type crm.notification_setting as (
  kind crm.notification_kind,
  channel crm.notification_channel,
  is_default boolean,
  description text
);
comment on type crm.notification_setting is 'The channel you receive a kind of notification on, and whether it is the default.';

create or replace function crm.my_notification_preferences() returns setof crm.notification_setting
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select k.kind, coalesce(p.channel, d.default_channel, 'in_app'), p.channel is null, coalesce(d.description, '')
    from unnest(enum_range(null::crm.notification_kind)) as k(kind)
    left join crm_private.notification_kind_defaults d on d.kind = k.kind::text
    left join crm.notification_preferences p
      on p.organization_id = crm.current_org_id() and p.user_id = crm.current_user_id() and p.kind = k.kind
   where crm.current_user_id() is not null and crm.current_org_id() is not null
   order by k.kind
$$;
comment on function crm.my_notification_preferences() is 'Every kind of notification with the channel you receive it on (your choice, or the default).';

grant execute on function crm.mark_notifications_read(uuid[], boolean), crm.unread_notification_count(),
  crm.set_notification_preference(crm.notification_kind, crm.notification_channel), crm.my_notification_preferences()
  to crm_user;

--! split: 410-subscriptions-notify.sql
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

--! split: 420-webhooks.sql
-- Webhooks: endpoints per organization (webhooks:manage), business events written to an outbox in
-- the transaction of their cause, one delivery per event and matching endpoint, delivered by the
-- webhooks:deliver worker task (signed, retried with backoff for about a day, logged per attempt).

do $$
begin
  perform crm_private.register_permission('webhooks:manage',
    'Manage webhook endpoints, read their delivery log and redeliver events', array['Administrator']);
end
$$;

-- Event types ---------------------------------------------------------------------------------------
-- Later modules add theirs (order.created, invoice.paid …) and attach crm_private.tg_webhook_outbox
-- to their tables.
create table if not exists crm_private.webhook_event_types (
  event_type text primary key constraint webhook_event_types_format check (event_type ~ '^[a-z_]+\.[a-z_]+$'),
  description text not null
);
alter table crm_private.webhook_event_types enable row level security;
drop policy if exists no_access on crm_private.webhook_event_types;
create policy no_access on crm_private.webhook_event_types using (false);
insert into crm_private.webhook_event_types (event_type, description) values
  ('customer.created', 'A customer was created'),
  ('customer.updated', 'A customer was changed (or restored)'),
  ('customer.deleted', 'A customer was deleted'),
  ('contact.created', 'A contact was created'),
  ('contact.updated', 'A contact was changed (or restored)'),
  ('contact.deleted', 'A contact was deleted'),
  ('deal.created', 'A deal was created'),
  ('deal.updated', 'A deal was changed (or restored)'),
  ('deal.deleted', 'A deal was deleted'),
  ('deal.stage_changed', 'A deal moved to another stage (sent as well as deal.updated)'),
  ('task.created', 'A task was created'),
  ('task.updated', 'A task was changed'),
  ('task.deleted', 'A task was deleted')
on conflict (event_type) do update set description = excluded.description;

-- Addresses a webhook may not reach unless the server allows private networks: loopback, private,
-- link-local (cloud metadata), carrier-grade NAT, unique-local, multicast, unspecified. The worker
-- checks the same list after resolving the host name (worker/webhooks/safety.ts); keep them in step.
create or replace function crm_private.is_blocked_address(a inet) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select a <<= any (array[
    '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24',
    '192.168.0.0/16', '198.18.0.0/15', '224.0.0.0/4', '240.0.0.0/4', '255.255.255.255/32',
    '::/128', '::1/128', '::ffff:0:0/96', 'fc00::/7', 'fe80::/10', 'ff00::/8']::inet[])
$$;

-- Endpoints -----------------------------------------------------------------------------------------
create table if not exists crm.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  url text not null constraint webhook_endpoints_url_length check (length(url) between 10 and 2000),
  event_types text[] not null default '{*}'
    constraint webhook_endpoints_event_types_length check (cardinality(event_types) between 1 and 100),
  description text not null default '' constraint webhook_endpoints_description_length check (length(description) <= 500),
  secret text not null default ('whsec_' || encode(public.gen_random_bytes(32), 'hex')),
  is_active boolean not null default true,
  consecutive_failures int not null default 0,
  disabled_at timestamptz,
  disabled_reason text,
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint webhook_endpoints_organization_id_id_key unique (organization_id, id)
);
create index if not exists webhook_endpoints_organization_id_active_idx on crm.webhook_endpoints (organization_id, is_active);
create index if not exists webhook_endpoints_created_by_idx on crm.webhook_endpoints (created_by);
comment on table crm.webhook_endpoints is 'A URL that receives the organization''s events, signed with its secret (webhooks:manage).';
comment on column crm.webhook_endpoints.organization_id is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.event_types is 'Event types to send (see webhookEventTypes), or "*" for all.';
comment on column crm.webhook_endpoints.secret is E'@behavior -insert -update\nThe signing secret (HMAC-SHA256); rotate it with rotateWebhookSecret.';
comment on column crm.webhook_endpoints.consecutive_failures is E'@behavior -insert -update\nFailed delivery attempts in a row; the endpoint is disabled when they reach the server''s limit.';
comment on column crm.webhook_endpoints.disabled_at is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.disabled_reason is E'@behavior -insert -update';
comment on column crm.webhook_endpoints.created_by is E'@behavior -insert -update';
comment on constraint webhook_endpoints_created_by_fkey on crm.webhook_endpoints is E'@fieldName creator\n@foreignFieldName createdWebhookEndpoints';

-- The outbox: one row per business event, written only when an active endpoint wants it.
create table if not exists crm.webhook_events (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  event_type text not null,
  record_id uuid,
  payload jsonb not null,
  created_at timestamptz not null default now(),
  constraint webhook_events_organization_id_id_key unique (organization_id, id)
);
create index if not exists webhook_events_organization_id_created_at_idx on crm.webhook_events (organization_id, created_at);
comment on table crm.webhook_events is E'@behavior -insert -update -delete\nA business event written in the transaction of its cause (the outbox). payload is {"object": the row, "previous": changed columns before the change}.';

create table if not exists crm.webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  endpoint_id uuid not null,
  event_id uuid not null,
  event_type text not null,
  status text not null default 'pending'
    constraint webhook_deliveries_status_check check (status in ('pending', 'retrying', 'succeeded', 'failed')),
  attempts int not null default 0,
  next_attempt_at timestamptz default now(),
  last_status_code int,
  last_error text,
  last_duration_ms int,
  delivered_at timestamptz,
  redelivery_of uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint webhook_deliveries_organization_id_id_key unique (organization_id, id),
  constraint webhook_deliveries_endpoint_fkey foreign key (organization_id, endpoint_id)
    references crm.webhook_endpoints (organization_id, id) on delete cascade,
  constraint webhook_deliveries_event_fkey foreign key (organization_id, event_id)
    references crm.webhook_events (organization_id, id) on delete cascade,
  constraint webhook_deliveries_redelivery_of_fkey foreign key (organization_id, redelivery_of)
    references crm.webhook_deliveries (organization_id, id) on delete set null (redelivery_of)
);
create index if not exists webhook_deliveries_endpoint_idx on crm.webhook_deliveries (organization_id, endpoint_id, created_at desc);
create index if not exists webhook_deliveries_event_idx on crm.webhook_deliveries (organization_id, event_id);
create index if not exists webhook_deliveries_status_idx on crm.webhook_deliveries (organization_id, status);
create index if not exists webhook_deliveries_redelivery_of_idx on crm.webhook_deliveries (organization_id, redelivery_of);
comment on table crm.webhook_deliveries is E'@behavior -insert -update -delete\nOne event sent to one endpoint: its status, attempts and last response. redeliverWebhook sends it again.';
comment on constraint webhook_deliveries_endpoint_fkey on crm.webhook_deliveries is E'@fieldName endpoint\n@foreignFieldName deliveries';
comment on constraint webhook_deliveries_event_fkey on crm.webhook_deliveries is E'@fieldName event\n@foreignFieldName deliveries';
comment on constraint webhook_deliveries_redelivery_of_fkey on crm.webhook_deliveries is E'@fieldName original\n@foreignFieldName redeliveries';

create table if not exists crm.webhook_delivery_attempts (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  delivery_id uuid not null,
  attempt int not null,
  status_code int,
  duration_ms int not null,
  error text,
  response_body text constraint webhook_delivery_attempts_response_body_length check (length(response_body) <= 2048),
  created_at timestamptz not null default now(),
  constraint webhook_delivery_attempts_delivery_fkey foreign key (organization_id, delivery_id)
    references crm.webhook_deliveries (organization_id, id) on delete cascade
);
create index if not exists webhook_delivery_attempts_delivery_idx on crm.webhook_delivery_attempts (organization_id, delivery_id, attempt);
comment on table crm.webhook_delivery_attempts is E'@behavior -insert -update -delete\nThe log of every attempt: response code, duration, error and the start of the response body (2 KB).';
comment on constraint webhook_delivery_attempts_delivery_fkey on crm.webhook_delivery_attempts is E'@fieldName delivery\n@foreignFieldName attemptLog';

-- Policies: everything here is for webhooks:manage holders of the organization.
alter table crm.webhook_endpoints enable row level security;
alter table crm.webhook_events enable row level security;
alter table crm.webhook_deliveries enable row level security;
alter table crm.webhook_delivery_attempts enable row level security;
do $$
declare
  t text;
begin
  foreach t in array array['webhook_endpoints', 'webhook_events', 'webhook_deliveries', 'webhook_delivery_attempts'] loop
    execute format('drop policy if exists %I on crm.%I', t || '_select', t);
    execute format($p$create policy %I on crm.%I for select
      using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')))$p$, t || '_select', t);
  end loop;
end
$$;
drop policy if exists webhook_endpoints_write on crm.webhook_endpoints;
create policy webhook_endpoints_write on crm.webhook_endpoints for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('webhooks:manage')));

grant select on crm.webhook_endpoints, crm.webhook_events, crm.webhook_deliveries, crm.webhook_delivery_attempts to crm_user;
grant insert (url, event_types, description, is_active), update (url, event_types, description, is_active), delete
  on crm.webhook_endpoints to crm_user;

-- Endpoint rules: http(s) URL without credentials; event types from the catalog; no private, loopback
-- or link-local literal address unless the server allows it (the worker checks again after DNS).
create or replace function crm_private.tg_webhook_endpoint_check() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  host text;
  unknown text;
  allow_private boolean := crm_private.setting('webhooks.allow_private_networks', 'false')::boolean;
  allow_http boolean := crm_private.setting('webhooks.allow_http', 'false')::boolean;
begin
  if tg_op = 'UPDATE' and new.is_active and not old.is_active then
    -- Re-enabled by an admin: a fresh start.
    new.consecutive_failures := 0;
    new.disabled_at := null;
    new.disabled_reason := null;
  end if;
  -- The URL and event types are checked when they are set (the worker's own updates skip this).
  if tg_op = 'UPDATE' and new.url is not distinct from old.url and new.event_types is not distinct from old.event_types then
    return new;
  end if;
  new.url := btrim(new.url);
  if new.url !~* '^https?://[^/?#@\s]+(/[^\s]*)?$' then
    raise exception 'The URL must be an http(s) URL without user name or password.' using errcode = 'CRVAL', column = 'url';
  end if;
  if new.url ~* '^http://' and not allow_http then
    raise exception 'Webhook URLs must use https.' using errcode = 'CRVAL', column = 'url';
  end if;
  host := lower(substring(new.url from '^[A-Za-z]+://(\[[^\]]+\]|[^/:?#]+)'));
  host := btrim(host, '[]');
  if not allow_private then
    if host = 'localhost' or host like '%.localhost' or host like '%.local' or host like '%.internal' then
      raise exception 'Webhooks cannot be sent to %.', host using errcode = 'CRVAL', column = 'url';
    end if;
    if host ~ '^[0-9.]+$' or host ~ ':' then
      begin
        if crm_private.is_blocked_address(host::inet) then
          raise exception 'Webhooks cannot be sent to private, loopback or link-local addresses.' using errcode = 'CRVAL', column = 'url';
        end if;
      exception when invalid_text_representation then
        raise exception 'The URL''s host is not a valid address.' using errcode = 'CRVAL', column = 'url';
      end;
    end if;
  end if;
  new.event_types := array(select distinct btrim(e) from unnest(new.event_types) e order by 1);
  select string_agg(e, ', ') into unknown from unnest(new.event_types) e
   where e <> '*' and not exists (select 1 from crm_private.webhook_event_types t where t.event_type = e);
  if unknown is not null then
    raise exception 'Unknown event types: %.', unknown using errcode = 'CRVAL', column = 'event_types',
      hint = 'See webhookEventTypes.';
  end if;
  return new;
end
$$;
drop trigger if exists _150_check on crm.webhook_endpoints;
create trigger _150_check before insert or update on crm.webhook_endpoints
  for each row execute function crm_private.tg_webhook_endpoint_check();
drop trigger if exists _100_updated_at on crm.webhook_endpoints;
create trigger _100_updated_at before update on crm.webhook_endpoints
  for each row execute function crm_private.tg_set_updated_at();
drop trigger if exists _800_audit on crm.webhook_endpoints;
create trigger _800_audit after insert or update or delete on crm.webhook_endpoints
  for each row execute function crm_private.tg_audit('secret', 'consecutive_failures');

-- The outbox trigger ----------------------------------------------------------------------------------
-- Statement-level (transition tables): one set-based pass per statement. TG_ARGV[0] is the event
-- prefix (customer, contact, deal, task …). A table with deleted_at gets <prefix>.deleted on soft
-- delete; deals also get deal.stage_changed. Nothing is written when no active endpoint of the
-- organization wants the event, so organizations without webhooks pay one index probe per statement.
create or replace function crm_private.tg_webhook_outbox() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  prefix text := tg_argv[0];
  orgs uuid[];
  candidates jsonb[];
begin
  if tg_op = 'DELETE' then
    select array_agg(distinct organization_id) into orgs from old_rows;
  else
    select array_agg(distinct organization_id) into orgs from new_rows;
  end if;
  if not exists (select 1 from crm.webhook_endpoints e where e.organization_id = any (orgs) and e.is_active) then
    return null;
  end if;
  -- Candidate events: {org, type, id, payload}.
  if tg_op = 'INSERT' then
    select array_agg(jsonb_build_object('org', j->>'organization_id', 'type', prefix || '.created', 'id', j->>'id',
                                        'payload', jsonb_build_object('object', j - 'search_vector')))
      into candidates
      from (select to_jsonb(n) as j from new_rows n) x
     where j->>'deleted_at' is null;
  elsif tg_op = 'UPDATE' then
    select array_agg(ev) into candidates from (
      select jsonb_build_object('org', n->>'organization_id',
               'type', prefix || case when o->>'deleted_at' is null and n->>'deleted_at' is not null then '.deleted' else '.updated' end,
               'id', n->>'id',
               'payload', jsonb_build_object('object', n - 'search_vector', 'previous',
                 (select coalesce(jsonb_object_agg(k, o->k), '{}') from jsonb_object_keys(n) k
                   where k not in ('updated_at', 'search_vector') and o->k is distinct from n->k))) as ev
        from (select to_jsonb(nr) as n, to_jsonb(orow) as o from new_rows nr join old_rows orow on orow.id = nr.id) x
       where not (o->>'deleted_at' is not null and n->>'deleted_at' is not null)
         and (o - 'updated_at' - 'search_vector') is distinct from (n - 'updated_at' - 'search_vector')
      union all
      select jsonb_build_object('org', n->>'organization_id', 'type', 'deal.stage_changed', 'id', n->>'id',
               'payload', jsonb_build_object('object', n - 'search_vector',
                                             'previous', jsonb_build_object('stage_id', o->'stage_id', 'probability', o->'probability')))
        from (select to_jsonb(nr) as n, to_jsonb(orow) as o from new_rows nr join old_rows orow on orow.id = nr.id) x
       where prefix = 'deal' and o->>'stage_id' is distinct from n->>'stage_id'
    ) e;
  else
    select array_agg(jsonb_build_object('org', j->>'organization_id', 'type', prefix || '.deleted', 'id', j->>'id',
                                        'payload', jsonb_build_object('object', j - 'search_vector')))
      into candidates
      from (select to_jsonb(o) as j from old_rows o) x
     where j->>'deleted_at' is null;
  end if;
  if candidates is null then
    return null;
  end if;
  perform crm_private.webhook_enqueue(candidates);
  return null;
end
$$;

-- Writes events (for the endpoints that want them) and their deliveries, and queues one delivery job
-- each. `candidates`: [{org, type, id, payload}]. Also the entry point for modules that emit events
-- from their own functions.
create or replace function crm_private.webhook_enqueue(candidates jsonb[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  n int;
begin
  with wanted as (
    select (c->>'org')::uuid as org, c->>'type' as event_type, (c->>'id')::uuid as record_id, c->'payload' as payload
      from unnest(candidates) c
     where exists (select 1 from crm.webhook_endpoints e
                    where e.organization_id = (c->>'org')::uuid and e.is_active
                      and e.event_types && array[c->>'type', '*'])
  ), events as (
    insert into crm.webhook_events (organization_id, event_type, record_id, payload)
    select org, event_type, record_id, payload from wanted
    returning id, organization_id, event_type
  ), deliveries as (
    insert into crm.webhook_deliveries (organization_id, endpoint_id, event_id, event_type)
    select ev.organization_id, e.id, ev.id, ev.event_type
      from events ev
      join crm.webhook_endpoints e on e.organization_id = ev.organization_id and e.is_active
                                  and e.event_types && array[ev.event_type, '*']
    returning id
  )
  select coalesce(sum(crm_private.queue_webhook_delivery(d.id, null)), 0) into n from deliveries d;
  return n;
end
$$;

create or replace function crm_private.queue_webhook_delivery(delivery uuid, run_at timestamptz) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.add_job('webhooks:deliver', jsonb_build_object('deliveryId', delivery),
                              'webhook-delivery:' || delivery, run_at, 5);
  return 1;
end
$$;

do $$
declare
  t record;
begin
  for t in select * from (values ('customers', 'customer'), ('contacts', 'contact'), ('deals', 'deal'), ('tasks', 'task')) v (tbl, prefix) loop
    execute format('drop trigger if exists _710_webhooks_insert on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
    execute format('drop trigger if exists _710_webhooks_update on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_update after update on crm.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
    execute format('drop trigger if exists _710_webhooks_delete on crm.%I', t.tbl);
    execute format('create trigger _710_webhooks_delete after delete on crm.%I referencing old table as old_rows
                    for each statement execute function crm_private.tg_webhook_outbox(%L)', t.tbl, t.prefix);
  end loop;
end
$$;

-- Delivery (used by the worker) -------------------------------------------------------------------------
-- Everything the worker needs to send one delivery; null when the delivery is gone or finished.
create or replace function crm_private.webhook_delivery_to_send(delivery uuid)
  returns table (delivery_id uuid, organization_id uuid, endpoint_id uuid, url text, secret text, endpoint_active boolean,
                 event_id uuid, event_type text, event_created_at timestamptz, payload jsonb, attempt int)
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select d.id, d.organization_id, e.id, e.url, e.secret, e.is_active, ev.id, ev.event_type, ev.created_at, ev.payload, d.attempts + 1
    from crm.webhook_deliveries d
    join crm.webhook_endpoints e on e.organization_id = d.organization_id and e.id = d.endpoint_id
    join crm.webhook_events ev on ev.organization_id = d.organization_id and ev.id = d.event_id
   where d.id = delivery and d.status in ('pending', 'retrying')
$$;

-- Seconds to wait after failed attempt n: 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h — ten
-- attempts over about a day — with ±10 % jitter so endpoints recovering from an outage are not hit
-- by every retry at once. Null: no more attempts.
create or replace function crm_private.webhook_retry_delay(attempt int) returns interval
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select make_interval(secs => d * (0.9 + random() * 0.2))
    from (select (array[30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800])[attempt] as d) x
   where d is not null
$$;

-- Records one attempt: the log row, the delivery's state (and its next attempt), the endpoint's run of
-- failures. An endpoint whose failures in a row reach `disable_after` is disabled and the members who
-- manage webhooks are notified. Returns {status, nextAttemptAt, endpointDisabled}.
create or replace function crm_private.webhook_record_attempt(
  delivery uuid, status_code int, duration_ms int, error text, response_body text, disable_after int
) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.webhook_deliveries;
  e crm.webhook_endpoints;
  ok boolean := error is null and status_code between 200 and 299;
  wait interval;
  disabled boolean := false;
begin
  select * into d from crm.webhook_deliveries x where x.id = delivery for update;
  if d.id is null or d.status not in ('pending', 'retrying') then
    return jsonb_build_object('status', coalesce(d.status, 'missing'));
  end if;
  insert into crm.webhook_delivery_attempts (organization_id, delivery_id, attempt, status_code, duration_ms, error, response_body)
  values (d.organization_id, d.id, d.attempts + 1, status_code, greatest(duration_ms, 0), left(error, 1000), left(response_body, 2048));
  if ok then
    update crm.webhook_deliveries x set status = 'succeeded', attempts = x.attempts + 1, last_status_code = status_code,
           last_error = null, last_duration_ms = duration_ms, delivered_at = now(), next_attempt_at = null, updated_at = now()
     where x.id = d.id returning * into d;
    update crm.webhook_endpoints x set consecutive_failures = 0 where x.id = d.endpoint_id and x.consecutive_failures <> 0;
    return jsonb_build_object('status', d.status);
  end if;
  wait := crm_private.webhook_retry_delay(d.attempts + 1);
  update crm.webhook_deliveries x set status = case when wait is null then 'failed' else 'retrying' end,
         attempts = x.attempts + 1, last_status_code = status_code, last_error = left(error, 1000), last_duration_ms = duration_ms,
         next_attempt_at = now() + wait, updated_at = now()
   where x.id = d.id returning * into d;
  update crm.webhook_endpoints x set consecutive_failures = x.consecutive_failures + 1
   where x.id = d.endpoint_id returning * into e;
  if e.is_active and e.consecutive_failures >= greatest(disable_after, 1) then
    update crm.webhook_endpoints x set is_active = false, disabled_at = now(),
           disabled_reason = format('%s failed delivery attempts in a row (last: %s)', e.consecutive_failures,
                                    coalesce(error, 'HTTP ' || status_code))
     where x.id = e.id;
    perform crm_private.notify(e.organization_id,
      array(select m.user_id from crm.organization_memberships m
              join crm.role_permissions rp on rp.role_id = m.role_id and rp.permission_code = 'webhooks:manage'
             where m.organization_id = e.organization_id and m.is_active),
      'webhook_disabled', 'Webhook endpoint disabled: ' || left(e.url, 200),
      format('%s failed delivery attempts in a row. Fix the receiver, re-enable the endpoint and redeliver what it missed.',
             e.consecutive_failures),
      'webhook_endpoint', e.id, null, jsonb_build_object('endpointId', e.id, 'url', e.url));
    disabled := true;
  end if;
  if d.status = 'retrying' then
    perform crm_private.queue_webhook_delivery(d.id, d.next_attempt_at);
  end if;
  return jsonb_build_object('status', d.status, 'nextAttemptAt', d.next_attempt_at, 'endpointDisabled', disabled);
end
$$;

-- A delivery whose endpoint is disabled (or was deleted) is closed without sending.
create or replace function crm_private.webhook_skip_delivery(delivery uuid, reason text) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.webhook_deliveries set status = 'failed', last_error = reason, next_attempt_at = null, updated_at = now()
   where id = delivery and status in ('pending', 'retrying')
$$;

-- The API ------------------------------------------------------------------------------------------------
create or replace function crm.webhook_event_types() returns text[]
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select array_agg(event_type order by event_type) from crm_private.webhook_event_types
$$;
comment on function crm.webhook_event_types() is 'The event types a webhook endpoint can subscribe to.';

-- Sends a delivery's event to its endpoint again, as a new delivery (the original keeps its log).
create or replace function crm.redeliver_webhook(delivery_id uuid) returns crm.webhook_deliveries
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  d crm.webhook_deliveries;
  r crm.webhook_deliveries;
begin
  perform crm_private.require_permission('webhooks:manage');
  select * into d from crm.webhook_deliveries x where x.id = redeliver_webhook.delivery_id and x.organization_id = crm.current_org_id();
  if d.id is null then
    raise exception 'No such delivery.' using errcode = 'CRNFD', column = 'deliveryId';
  end if;
  if not exists (select 1 from crm.webhook_endpoints e where e.organization_id = d.organization_id and e.id = d.endpoint_id and e.is_active) then
    raise exception 'The endpoint is disabled; enable it first.' using errcode = 'CRSTA', column = 'deliveryId';
  end if;
  insert into crm.webhook_deliveries (organization_id, endpoint_id, event_id, event_type, redelivery_of)
  values (d.organization_id, d.endpoint_id, d.event_id, d.event_type, d.id)
  returning * into r;
  perform crm_private.queue_webhook_delivery(r.id, null);
  return r;
end
$$;
comment on function crm.redeliver_webhook(uuid) is 'Send a delivery''s event to its endpoint again (a new delivery, webhooks:manage).';

create or replace function crm.rotate_webhook_secret(endpoint_id uuid) returns crm.webhook_endpoints
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  e crm.webhook_endpoints;
begin
  perform crm_private.require_permission('webhooks:manage');
  update crm.webhook_endpoints x set secret = 'whsec_' || encode(public.gen_random_bytes(32), 'hex')
   where x.id = rotate_webhook_secret.endpoint_id and x.organization_id = crm.current_org_id()
  returning * into e;
  if e.id is null then
    raise exception 'No such webhook endpoint.' using errcode = 'CRNFD', column = 'endpointId';
  end if;
  return e;
end
$$;
comment on function crm.rotate_webhook_secret(uuid) is 'Give an endpoint a new signing secret (the old one stops working at once).';

grant execute on function crm.webhook_event_types(), crm.redeliver_webhook(uuid), crm.rotate_webhook_secret(uuid) to crm_user;

--! split: 430-imports.sql
-- CSV import: the server streams a file through COPY into a per-import staging table (text columns,
-- in the file's order), then crm_private.import_run validates it set-based, builds typed rows and
-- applies them in one transaction AS THE IMPORTER (crm_user with their claims: their row-level
-- security, their permissions, the normal triggers — custom fields, status history, primary contact,
-- audit, webhooks). Entities: customers and contacts now; products and orders plug in later through
-- crm_private.import_fields and a crm_private.import_apply_<entity> function.

create table if not exists crm.import_jobs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  entity text not null constraint import_jobs_entity_check check (entity in ('customers', 'contacts', 'products', 'orders')),
  file_name text constraint import_jobs_file_name_length check (length(file_name) <= 255),
  on_duplicate text not null default 'skip' constraint import_jobs_on_duplicate_check check (on_duplicate in ('skip', 'update', 'create')),
  on_error text not null default 'abort' constraint import_jobs_on_error_check check (on_error in ('abort', 'skip_rows')),
  status text not null default 'receiving'
    constraint import_jobs_status_check check (status in ('receiving', 'queued', 'running', 'completed', 'failed')),
  columns text[] not null default '{}',
  bytes_received bigint not null default 0,
  total_rows int not null default 0,
  error_rows int not null default 0,
  created_rows int not null default 0,
  updated_rows int not null default 0,
  skipped_rows int not null default 0,
  error text,
  created_by uuid not null default crm.current_user_id(),
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  constraint import_jobs_organization_id_id_key unique (organization_id, id),
  constraint import_jobs_creator_fkey foreign key (organization_id, created_by)
    references crm.organization_memberships (organization_id, user_id) on delete cascade
);
create index if not exists import_jobs_organization_id_created_by_idx on crm.import_jobs (organization_id, created_by, created_at desc);
comment on table crm.import_jobs is E'@behavior -insert -update -delete\nA CSV import (POST /import/:entity): its options, status and counts. Rows with errors are listed in errors (also GET /import/:id/errors.csv).';
comment on column crm.import_jobs.on_duplicate is 'Rows matching an existing record (by id, else e-mail): skip them, update the record, or create anyway (customers: an error, e-mail addresses are unique).';
comment on column crm.import_jobs.on_error is 'abort: any row with an error and nothing is imported; skip_rows: the good rows are imported, the others reported.';
comment on column crm.import_jobs.columns is 'The field each column of the file was mapped to (empty: ignored).';
comment on constraint import_jobs_creator_fkey on crm.import_jobs is E'@fieldName creator\n@foreignFieldName importJobs';

create table if not exists crm.import_errors (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  import_job_id uuid not null,
  row_number int not null,
  column_name text,
  message text not null,
  value text,
  constraint import_errors_job_fkey foreign key (organization_id, import_job_id)
    references crm.import_jobs (organization_id, id) on delete cascade
);
create index if not exists import_errors_job_idx on crm.import_errors (organization_id, import_job_id, row_number);
comment on table crm.import_errors is E'@behavior -insert -update -delete\nOne problem with one row of an import (rowNumber counts data rows from 1; the header is not a row).';
comment on constraint import_errors_job_fkey on crm.import_errors is E'@fieldName importJob\n@foreignFieldName errors';

alter table crm.import_jobs enable row level security;
alter table crm.import_errors enable row level security;
drop policy if exists import_jobs_select on crm.import_jobs;
create policy import_jobs_select on crm.import_jobs for select
  using (organization_id = (select crm.current_org_id()) and created_by = (select crm.current_user_id()));
drop policy if exists import_errors_select on crm.import_errors;
create policy import_errors_select on crm.import_errors for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.import_jobs j where j.id = import_errors.import_job_id));
grant select on crm.import_jobs, crm.import_errors to crm_user;

-- Fields ------------------------------------------------------------------------------------------------
-- What a file may contain per entity: field, kind of value, required, maximum length, allowed values,
-- numeric range. Columns named custom_fields.<key> are the organization's custom fields.
create or replace function crm_private.import_fields(entity text)
  returns table (field text, kind text, required boolean, max_length int, options text[], min_value numeric, max_value numeric)
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select f.field, f.kind, f.required, f.max_length, f.options, f.min_value, f.max_value from (values
    ('customers', 'id', 'uuid', false, null, null::text[], null::numeric, null::numeric),
    ('customers', 'name', 'text', true, 300, null, null, null),
    ('customers', 'kind', 'enum', false, null, array['person', 'company'], null, null),
    ('customers', 'email', 'email', false, 320, null, null, null),
    ('customers', 'phone', 'text', false, 50, null, null, null),
    ('customers', 'status', 'enum', false, null, array['lead', 'prospect', 'customer', 'churned'], null, null),
    ('customers', 'owner', 'member', false, null, null, null, null),
    ('customers', 'industry', 'text', false, 100, null, null, null),
    ('customers', 'company_size', 'enum', false, null, array['1-10', '11-50', '51-200', '201-500', '501-1000', '1001-5000', '5000+'], null, null),
    ('customers', 'website', 'url', false, 2000, null, null, null),
    ('customers', 'annual_revenue', 'numeric', false, null, null, 0, 99999999999999),
    ('customers', 'employee_count', 'int', false, null, null, 0, 2147483647),
    ('customers', 'lead_source', 'text', false, 100, null, null, null),
    ('customers', 'lead_score', 'int', false, null, null, 0, 100),
    ('customers', 'birth_date', 'date', false, null, null, null, null),
    ('customers', 'contacted', 'boolean', false, null, null, null, null),
    ('customers', 'next_follow_up_at', 'timestamptz', false, null, null, null, null),
    ('contacts', 'id', 'uuid', false, null, null, null, null),
    ('contacts', 'customer', 'customer', true, 320, null, null, null),
    ('contacts', 'first_name', 'text', true, 100, null, null, null),
    ('contacts', 'last_name', 'text', false, 100, null, null, null),
    ('contacts', 'email', 'email', false, 320, null, null, null),
    ('contacts', 'phone', 'text', false, 50, null, null, null),
    ('contacts', 'mobile', 'text', false, 50, null, null, null),
    ('contacts', 'title', 'text', false, 200, null, null, null),
    ('contacts', 'department', 'text', false, 200, null, null, null),
    ('contacts', 'status', 'enum', false, null, array['active', 'inactive', 'bounced'], null, null)
  ) f (entity, field, kind, required, max_length, options, min_value, max_value)
  where f.entity = import_fields.entity
$$;

-- Header names a file may use for a field besides its own name (lower case, spaces as underscores).
create or replace function crm_private.import_aliases(entity text) returns table (alias text, field text)
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select a.alias, a.field from (values
    ('customers', 'owner_id', 'owner'), ('customers', 'owner_email', 'owner'), ('customers', 'owner_username', 'owner'),
    ('customers', 'e_mail', 'email'), ('contacts', 'e_mail', 'email'),
    ('contacts', 'customer_id', 'customer'), ('contacts', 'customer_email', 'customer')
  ) a (entity, alias, field)
  where a.entity = import_aliases.entity
$$;

create or replace function crm_private.is_timestamptz(v text) returns boolean
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  perform v::timestamptz;
  return v ~ '^\d{4}-\d{2}-\d{2}';
exception when others then
  return false;
end
$$;

-- Starting an import ----------------------------------------------------------------------------------
-- Called by the server as the owner with the importer's claims set: checks the permission, maps the
-- header to fields and creates the job and its staging table. Returns {id, staging, columns}.
create or replace function crm_private.import_create(entity text, file_name text, on_duplicate text, on_error text, header text[])
  returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  mapped text[] := '{}';
  h text;
  norm text;
  field text;
  unknown text[] := '{}';
  missing text;
  dup text;
  job crm.import_jobs;
  staging text;
  org uuid := crm.current_org_id();
begin
  if crm.current_user_id() is null or org is null then
    perform crm_private.raise('CRUNA', 'Sign in to an organization first.');
  end if;
  if entity not in ('customers', 'contacts') then
    perform crm_private.raise('CRNFD', format('Importing %s is not available.', entity), 'entity');
  end if;
  if entity = 'customers' then
    perform crm_private.require_permission('customers:create');
  elsif not (crm.has_permission('customers:update_all') or crm.has_permission('customers:update_team') or crm.has_permission('customers:update_own')) then
    perform crm_private.raise('CRFBD', 'You need a customers:update_* permission to import contacts.');
  end if;
  if on_duplicate not in ('skip', 'update', 'create') then
    perform crm_private.raise('CRVAL', 'onDuplicate is skip, update or create.', 'onDuplicate');
  end if;
  if on_error not in ('abort', 'skip_rows') then
    perform crm_private.raise('CRVAL', 'onError is abort or skip_rows.', 'onError');
  end if;
  if coalesce(cardinality(header), 0) = 0 or cardinality(header) > 200 then
    perform crm_private.raise('CRVAL', 'The file needs a header row with 1 to 200 columns.', 'file');
  end if;
  foreach h in array header loop
    norm := regexp_replace(lower(btrim(coalesce(h, ''))), '[\s-]+', '_', 'g');
    -- camelCase headers (as the GraphQL API names fields): nextFollowUpAt → next_follow_up_at
    if btrim(coalesce(h, '')) ~ '^[a-z]+([A-Z][a-z0-9]*)+$' then
      norm := lower(regexp_replace(btrim(h), '([A-Z])', '_\1', 'g'));
    end if;
    norm := regexp_replace(norm, '^(customfields|custom_fields|custom|cf)\.', 'custom_fields.');
    field := null;
    if norm like 'custom_fields.%' then
      if exists (select 1 from crm.custom_field_definitions d where d.organization_id = org and d.entity = rtrim(import_create.entity, 's')
                   and d.key = substr(norm, 15)) then
        field := norm;
      end if;
    elsif norm in ('organization_id', 'created_at', 'updated_at', 'created_by', 'deleted_at', 'search_vector', 'is_primary', 'row_id') then
      field := '';  -- read-only columns of an export: accepted and ignored
    else
      select f.field into field from crm_private.import_fields(entity) f where f.field = norm;
      if field is null then
        select a.field into field from crm_private.import_aliases(entity) a where a.alias = norm;
      end if;
    end if;
    if field is null then
      unknown := unknown || coalesce(nullif(btrim(h), ''), '(empty)');
    end if;
    mapped := mapped || coalesce(field, '');
  end loop;
  if cardinality(unknown) > 0 then
    perform crm_private.raise('CRVAL', format('Unknown columns: %s.', array_to_string(unknown, ', ')), 'file',
      format('Columns of %s: %s, and custom_fields.<key> for custom fields.', entity,
             (select string_agg(f.field, ', ') from crm_private.import_fields(entity) f)));
  end if;
  select string_agg(m, ', ') into dup from (select m from unnest(mapped) m where m <> '' group by m having count(*) > 1) x;
  if dup is not null then
    perform crm_private.raise('CRVAL', format('More than one column maps to: %s.', dup), 'file');
  end if;
  if on_duplicate <> 'update' then
    select string_agg(f.field, ', ') into missing from crm_private.import_fields(entity) f
     where f.required and not (f.field = any (mapped));
    if missing is not null then
      perform crm_private.raise('CRVAL', format('Missing required columns: %s.', missing), 'file');
    end if;
  end if;
  insert into crm.import_jobs (organization_id, entity, file_name, on_duplicate, on_error, columns, created_by)
  values (org, entity, left(file_name, 255), on_duplicate, on_error, mapped, crm.current_user_id())
  returning * into job;
  staging := 'import_staging_' || replace(job.id::text, '-', '');
  execute format('create unlogged table crm_private.%I (row_number bigint generated always as identity primary key, %s)',
                 staging, (select string_agg(format('c_%s text', i), ', ') from generate_series(1, cardinality(header)) i));
  execute format('alter table crm_private.%I enable row level security', staging);
  execute format('create policy no_access on crm_private.%I using (false)', staging);
  return jsonb_build_object('id', job.id, 'staging', staging, 'columns', to_jsonb(mapped));
end
$$;

-- The staging table of a job (named after it).
create or replace function crm_private.import_staging(job uuid) returns text
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select 'import_staging_' || replace(job::text, '-', '')
$$;

create or replace function crm_private.import_drop_staging(job uuid) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  execute format('drop table if exists crm_private.%I', crm_private.import_staging(job));
end
$$;

-- A failed import: status, message, staging dropped.
create or replace function crm_private.import_fail(job uuid, message text) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  update crm.import_jobs set status = 'failed', error = left(message, 2000), finished_at = now() where id = job;
  perform crm_private.import_drop_staging(job);
end
$$;

-- Validation ------------------------------------------------------------------------------------------
-- The condition under which a value is wrong, as SQL over `v` (the trimmed cell, null when empty),
-- giving the message; null when a value of that kind cannot be wrong.
create or replace function crm_private.import_check_sql(kind text, required boolean, max_length int, options text[],
                                                       min_value numeric, max_value numeric, org uuid)
  returns text
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select format('case when v is null then %s %s end',
    case when required then quote_literal('Required.') else 'null' end,
    case kind
      when 'text' then format('when length(v) > %s then %L', max_length, format('At most %s characters.', max_length))
      when 'email' then format($f$when v !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' or length(v) > 320 then 'Not a valid e-mail address.'$f$)
      when 'url' then format($f$when v !~* '^https?://' or length(v) > %s then 'Not an http(s) URL.'$f$, coalesce(max_length, 2000))
      when 'enum' then format('when lower(v) <> all (%L::text[]) then %L', options, 'One of: ' || array_to_string(options, ', ') || '.')
      when 'uuid' then $f$when v !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then 'Not an id (UUID).'$f$
      when 'int' then format($f$when v !~ '^[+-]?\d{1,10}$' then 'Not a whole number.' when v::bigint not between %s and %s then %L$f$,
                             min_value, max_value, format('Between %s and %s.', min_value, max_value))
      when 'numeric' then format($f$when v !~ '^[+-]?(\d{1,15}(\.\d*)?|\.\d+)$' then 'Not a number.' when v::numeric not between %s and %s then %L$f$,
                                 min_value, max_value, format('Between %s and %s.', min_value, max_value))
      when 'date' then $f$when v !~ '^\d{4}-\d{2}-\d{2}$' or not crm_private.is_date(v) then 'Not a date (YYYY-MM-DD).'$f$
      when 'timestamptz' then $f$when not crm_private.is_timestamptz(v) then 'Not a date and time (ISO 8601, e.g. 2025-03-01T09:00:00Z).'$f$
      when 'boolean' then $f$when lower(v) not in ('true', 'false', 'yes', 'no', 'y', 'n', 't', 'f', '1', '0') then 'Not true or false.'$f$
      when 'member' then format($f$when not exists (select 1 from crm.organization_memberships m join crm.users u on u.id = m.user_id
                                      where m.organization_id = %L and m.is_active
                                        and (u.username = v::citext or u.email = v::citext or m.user_id::text = lower(v)))
                               then 'No active member with this username, e-mail or id.'$f$, org)
      when 'customer' then format('when length(v) > %s then %L', max_length, 'Not a customer id or e-mail address.')
      when 'cf_text' then $f$when length(v) > 1000 then 'At most 1000 characters.'$f$
      when 'cf_number' then $f$when v !~ '^[+-]?(\d{1,15}(\.\d*)?|\.\d+)$' then 'Not a number.'$f$
      when 'cf_date' then $f$when v !~ '^\d{4}-\d{2}-\d{2}$' or not crm_private.is_date(v) then 'Not a date (YYYY-MM-DD).'$f$
      when 'cf_boolean' then $f$when lower(v) not in ('true', 'false', 'yes', 'no', 'y', 'n', 't', 'f', '1', '0') then 'Not true or false.'$f$
      when 'cf_select' then format('when not (%L::jsonb @> to_jsonb(v)) then %L', to_jsonb(options), 'One of: ' || array_to_string(options, ', ') || '.')
      when 'cf_multiselect' then format($f$when exists (select 1 from unnest(string_to_array(v, ';')) o where not (%L::jsonb @> to_jsonb(btrim(o))))
                                         then %L$f$, to_jsonb(options), 'Values separated by ";", each one of: ' || array_to_string(options, ', ') || '.')
      else ''
    end)
$$;

-- The typed value of a cell, as SQL over `v`.
create or replace function crm_private.import_value_sql(kind text, org uuid) returns text
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select case kind
    when 'text' then 'v'
    when 'customer' then 'v'
    when 'url' then 'v'
    when 'email' then 'v::citext'
    when 'enum' then 'lower(v)'
    when 'uuid' then 'v::uuid'
    when 'int' then 'v::int'
    when 'numeric' then 'v::numeric'
    when 'date' then 'v::date'
    when 'timestamptz' then 'v::timestamptz'
    when 'boolean' then $f$(lower(v) in ('true', 'yes', 'y', 't', '1'))$f$
    when 'member' then format($f$(select m.user_id from crm.organization_memberships m join crm.users u on u.id = m.user_id
                                  where m.organization_id = %L and (u.username = v::citext or u.email = v::citext or m.user_id::text = lower(v))
                                  order by (m.user_id::text = lower(v)) desc limit 1)$f$, org)
    when 'cf_text' then 'to_jsonb(v)'
    when 'cf_select' then 'to_jsonb(v)'
    when 'cf_date' then 'to_jsonb(v)'
    when 'cf_number' then 'to_jsonb(v::numeric)'
    when 'cf_boolean' then $f$to_jsonb(lower(v) in ('true', 'yes', 'y', 't', '1'))$f$
    when 'cf_multiselect' then $f$(select jsonb_agg(btrim(o)) from unnest(string_to_array(v, ';')) o where btrim(o) <> '')$f$
  end
$$;

-- The file's columns with what they hold: position, field, kind and rules.
create or replace function crm_private.import_columns(job crm.import_jobs)
  returns table (pos int, field text, kind text, required boolean, max_length int, options text[], min_value numeric, max_value numeric)
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select c.pos::int, c.field, f.kind, f.required, f.max_length, f.options, f.min_value, f.max_value
    from unnest(job.columns) with ordinality c (field, pos)
    join crm_private.import_fields(job.entity) f on f.field = c.field
  union all
  select c.pos::int, c.field, 'cf_' || d.field_type, d.is_required and job.on_duplicate <> 'update', null,
         array(select jsonb_array_elements_text(d.options)), null, null
    from unnest(job.columns) with ordinality c (field, pos)
    join crm.custom_field_definitions d on d.organization_id = job.organization_id and d.entity = rtrim(job.entity, 's')
                                        and 'custom_fields.' || d.key = c.field
$$;

-- Every value checked, one set-based statement per column; duplicates within the file (by id and by
-- e-mail) reported against the later row. Returns the number of rows with errors.
create or replace function crm_private.import_validate(job crm.import_jobs) returns int
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  c record;
  staging text := crm_private.import_staging(job.id);
  n int;
begin
  delete from crm.import_errors where import_job_id = job.id;
  for c in select * from crm_private.import_columns(job) loop
    execute format(
      $q$insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message, value)
         select $1, $2, s.row_number, $3, x.msg, left(y.v, 200)
           from crm_private.%I s
           cross join lateral (select nullif(btrim(s.%I), '') as v) y
           cross join lateral (select %s as msg) x
          where x.msg is not null$q$,
      staging, 'c_' || c.pos,
      crm_private.import_check_sql(c.kind, c.required, c.max_length, c.options, c.min_value, c.max_value, job.organization_id))
      using job.organization_id, job.id, c.field;
  end loop;
  for c in select * from crm_private.import_columns(job) where field in ('id', 'email') loop
    execute format(
      $q$insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message, value)
         select $1, $2, d.row_number, $3, 'Same ' || $3 || ' as row ' || d.first_row || '.', left(d.v, 200)
           from (select s.row_number, btrim(s.%I) as v,
                        first_value(s.row_number) over (partition by lower(btrim(s.%I)) order by s.row_number) as first_row
                   from crm_private.%I s where nullif(btrim(s.%I), '') is not null) d
          where d.row_number <> d.first_row$q$,
      'c_' || c.pos, 'c_' || c.pos, staging, 'c_' || c.pos)
      using job.organization_id, job.id, c.field;
  end loop;
  select count(distinct row_number) into n from crm.import_errors where import_job_id = job.id;
  return n;
end
$$;

-- pg_temp.import_rows: the rows without errors, typed, one column per field of the entity (null when
-- the file has no such column), plus custom_fields (jsonb of the custom columns present) and the
-- working columns the apply step fills in.
create or replace function crm_private.import_build_rows(job crm.import_jobs) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  cols text;
  cf text;
begin
  select string_agg(
           coalesce(
             (select format('(select %s from (select nullif(btrim(s.%I), '''') as v) z) as %I',
                            crm_private.import_value_sql(f.kind, job.organization_id), 'c_' || c.pos, f.field)
                from crm_private.import_columns(job) c where c.field = f.field),
             format('null::%s as %I',
                    case f.kind when 'uuid' then 'uuid' when 'member' then 'uuid' when 'email' then 'citext' when 'int' then 'int'
                                when 'numeric' then 'numeric' when 'date' then 'date' when 'timestamptz' then 'timestamptz'
                                when 'boolean' then 'boolean' else 'text' end, f.field)),
           ', ' order by f.field)
    into cols
    from crm_private.import_fields(job.entity) f;
  select coalesce('jsonb_strip_nulls(jsonb_build_object(' || string_agg(
           format('%L, (select %s from (select nullif(btrim(s.%I), '''') as v) z)', substr(c.field, 15),
                  crm_private.import_value_sql(c.kind, job.organization_id), 'c_' || c.pos), ', ') || '))',
                  'null::jsonb')
    into cf
    from crm_private.import_columns(job) c where c.kind like 'cf\_%';
  if to_regclass('pg_temp.import_rows') is not null then
    drop table pg_temp.import_rows;
  end if;
  execute format(
    $q$create temp table import_rows on commit drop as
       select s.row_number, %s, %s as custom_fields,
              null::uuid as existing_id, null::uuid as candidate_id, null::uuid as match_id, null::uuid as customer_id, null::text as action,
              null::text as error_column, null::text as error
         from crm_private.%I s
        where not exists (select 1 from crm.import_errors e where e.import_job_id = $1 and e.row_number = s.row_number)$q$,
    cols, cf, crm_private.import_staging(job.id))
    using job.id;
  create index on pg_temp.import_rows (row_number);
  analyze pg_temp.import_rows;
  grant select, update on pg_temp.import_rows to crm_user;
end
$$;

-- Running an import ------------------------------------------------------------------------------------
-- Validates and applies a staged import in the caller's transaction: the server runs it inline for
-- small files and the imports:run job for large ones. The owner runs it; the apply step switches to
-- crm_user with the importer's claims. Returns the job's counts.
create or replace function crm_private.import_run(job_id uuid) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  job crm.import_jobs;
  invalid int;
  result jsonb;
begin
  select * into job from crm.import_jobs where id = job_id for update;
  if job.id is null or job.status not in ('queued', 'running', 'receiving') then
    raise exception 'Import % cannot run (status %).', job_id, coalesce(job.status, 'missing') using errcode = 'CRSTA';
  end if;
  perform set_config('jwt.claims.sub', job.created_by::text, true);
  perform set_config('jwt.claims.org', job.organization_id::text, true);
  perform set_config('jwt.claims.sid', '', true);
  perform set_config('cairn.request_id', 'import:' || job.id, true);
  execute format('select count(*) from crm_private.%I', crm_private.import_staging(job.id)) into job.total_rows;
  invalid := crm_private.import_validate(job);
  perform crm_private.import_build_rows(job);
  execute format('select crm_private.import_apply_%s($1, $2)', job.entity) into result using job, invalid;
  -- Back as the owner: the errors found while applying join the report.
  insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message)
  select job.organization_id, job.id, r.row_number, r.error_column, r.error from pg_temp.import_rows r where r.error is not null;
  update crm.import_jobs x set
    status = case when (result->>'applied')::boolean then 'completed' else 'failed' end,
    total_rows = job.total_rows,
    error_rows = (select count(distinct e.row_number) from crm.import_errors e where e.import_job_id = job.id),
    created_rows = (result->>'created')::int,
    updated_rows = (result->>'updated')::int,
    skipped_rows = (result->>'skipped')::int,
    error = case when not (result->>'applied')::boolean then 'Rows have errors; nothing was imported (onError: abort).' end,
    started_at = coalesce(x.started_at, now()),
    finished_at = now()
   where x.id = job.id
  returning * into job;
  perform crm_private.import_drop_staging(job.id);
  perform crm_private.notify(job.organization_id, array[job.created_by], 'import_finished',
    format('Import of %s %s', job.entity, case job.status when 'completed' then 'finished' else 'failed' end),
    format('%s rows: %s created, %s updated, %s skipped, %s with errors.', job.total_rows, job.created_rows, job.updated_rows,
           job.skipped_rows, job.error_rows),
    'import_job', job.id, null, jsonb_build_object('importJobId', job.id),
    'import:' || job.id);
  return jsonb_build_object('id', job.id, 'status', job.status, 'totalRows', job.total_rows, 'errorRows', job.error_rows,
                            'createdRows', job.created_rows, 'updatedRows', job.updated_rows, 'skippedRows', job.skipped_rows);
end
$$;

-- Customers: match by id, else e-mail, among the customers the importer can see; check what the
-- importer may do (create: customers:create, and only customers they own unless customers:update_all;
-- update: the update scope); then insert and update set-based.
--
-- Matching by e-mail happens as the owner first (citext equality is not leakproof, so under RLS it
-- could not use the index), giving candidate ids; the importer's RLS then decides, by id, which
-- candidates they can see. Between the two set_config('role') calls the function runs as crm_user:
-- only crm.* and pg_temp.* objects and plain variables are used there.
create or replace function crm_private.import_apply_customers(job crm.import_jobs, invalid int) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  has_col text[] := job.columns;
  created int := 0;
  updated int := 0;
  skipped int := 0;
  sets text;
  me uuid := crm.current_user_id();
  update_all boolean := crm.has_permission('customers:update_all');
  updatable uuid[] := crm.visible_owner_ids('customers', 'update');
begin
  -- As the owner: the SET list of updates (columns present in the file) and the e-mail candidates.
  select string_agg(case
           when f.field = 'owner' then 'owner_id = coalesce(r.owner, c.owner_id)'
           else format('%I = coalesce(r.%I, c.%I)', f.field, f.field, f.field) end, ', ')
    into sets
    from crm_private.import_fields('customers') f
   where f.field = any (has_col) and f.field <> 'id';
  if exists (select 1 from unnest(has_col) x where x like 'custom_fields.%') then
    sets := concat_ws(', ', sets, 'custom_fields = c.custom_fields || coalesce(r.custom_fields, ''{}'')');
  end if;
  update pg_temp.import_rows r set candidate_id = c.id from crm.customers c
   where r.id is null and r.email is not null
     and c.organization_id = job.organization_id and c.deleted_at is null and c.email = r.email;
  analyze pg_temp.import_rows;

  perform set_config('role', 'crm_user', true);
  update pg_temp.import_rows r set existing_id = c.id from crm.customers c where c.id = coalesce(r.id, r.candidate_id);
  update pg_temp.import_rows r set error_column = 'id', error = 'No customer you can see has this id.'
   where r.id is not null and r.existing_id is null;
  update pg_temp.import_rows r set error_column = 'email', error = 'A customer with this e-mail address already exists (you may not see it).'
   where r.error is null and r.candidate_id is not null and r.existing_id is null;
  update pg_temp.import_rows r set action = case
      when r.existing_id is null then 'create'
      when job.on_duplicate = 'skip' then 'skip'
      when job.on_duplicate = 'update' then 'update'
      else 'duplicate' end
   where r.error is null;
  update pg_temp.import_rows r set error_column = 'email', error = 'A customer with this e-mail address already exists.'
   where r.action = 'duplicate';
  update pg_temp.import_rows r set error_column = 'name', error = 'Required for new customers.'
   where r.action = 'create' and r.name is null;
  update pg_temp.import_rows r set error_column = 'owner', error = 'You may only import customers you own (customers:update_all needed).'
   where r.action in ('create', 'update') and r.error is null and r.owner is not null and r.owner <> me
     and not update_all and not (r.action = 'update' and r.owner = any (updatable));
  update pg_temp.import_rows r set error_column = 'id', error = 'You may not change this customer.'
    from crm.customers c
   where r.action = 'update' and r.error is null and c.id = r.existing_id
     and not update_all and not (c.owner_id = any (updatable));
  update pg_temp.import_rows r set error_column = 'custom_fields.' || d.key, error = 'Required.'
    from crm.custom_field_definitions d
   where r.action = 'create' and r.error is null and d.entity = 'customer' and d.is_required
     and not (coalesce(r.custom_fields, '{}'::jsonb) ? d.key);
  if job.on_error = 'abort' and (invalid > 0 or exists (select 1 from pg_temp.import_rows where error is not null)) then
    perform set_config('role', 'none', true);
    return jsonb_build_object('applied', false, 'created', 0, 'updated', 0, 'skipped', 0);
  end if;
  select count(*) into skipped from pg_temp.import_rows where action = 'skip' and error is null;
  -- A customer created meanwhile with the same e-mail address fails the whole import (23505): the
  -- unique index is the final word, and nothing is half-applied.
  insert into crm.customers (kind, name, email, phone, status, owner_id, industry, company_size, website, annual_revenue,
                             employee_count, lead_source, lead_score, birth_date, contacted, next_follow_up_at, custom_fields)
  select coalesce(r.kind, 'company'), r.name, r.email, r.phone, coalesce(r.status, 'lead'), coalesce(r.owner, me),
         r.industry, r.company_size, r.website, r.annual_revenue, r.employee_count, r.lead_source, coalesce(r.lead_score, 0),
         r.birth_date, coalesce(r.contacted, false), r.next_follow_up_at, coalesce(r.custom_fields, '{}'::jsonb)
    from pg_temp.import_rows r
   where r.action = 'create' and r.error is null
   order by r.row_number;
  get diagnostics created = row_count;
  if sets is not null then
    execute format('update crm.customers c set %s from pg_temp.import_rows r
                     where r.action = ''update'' and r.error is null and c.id = r.existing_id', sets);
    get diagnostics updated = row_count;
  end if;
  perform set_config('role', 'none', true);
  return jsonb_build_object('applied', true, 'created', created, 'updated', updated, 'skipped', skipped);
end
$$;

-- Contacts: the customer (id or e-mail) must be one the importer can see and change; existing
-- contacts are matched by id, else by e-mail within that customer. Candidates by e-mail are found as
-- the owner, then kept only when the importer can see them (as for customers).
create or replace function crm_private.import_apply_contacts(job crm.import_jobs, invalid int) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  has_col text[] := job.columns;
  created int := 0;
  updated int := 0;
  skipped int := 0;
  sets text;
  update_all boolean := crm.has_permission('customers:update_all');
  updatable uuid[] := crm.visible_owner_ids('customers', 'update');
  uuid_re text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
begin
  select string_agg(format('%I = coalesce(r.%I, ct.%I)', f.field, f.field, f.field), ', ')
    into sets
    from crm_private.import_fields('contacts') f
   where f.field = any (has_col) and f.field not in ('id', 'customer');
  if exists (select 1 from unnest(has_col) x where x like 'custom_fields.%') then
    sets := concat_ws(', ', sets, 'custom_fields = ct.custom_fields || coalesce(r.custom_fields, ''{}'')');
  end if;
  -- As the owner: the customer named by e-mail (or id), and a contact with the row's e-mail there.
  update pg_temp.import_rows r set candidate_id = c.id from crm.customers c
   where r.customer !~* uuid_re and c.organization_id = job.organization_id and c.deleted_at is null and c.email = r.customer::citext;
  update pg_temp.import_rows r set candidate_id = r.customer::uuid where r.customer ~* uuid_re;
  update pg_temp.import_rows r set match_id = ct.id from crm.contacts ct
   where r.id is null and r.email is not null and r.candidate_id is not null
     and ct.organization_id = job.organization_id and ct.customer_id = r.candidate_id and ct.deleted_at is null and ct.email = r.email;
  analyze pg_temp.import_rows;

  perform set_config('role', 'crm_user', true);
  update pg_temp.import_rows r set existing_id = ct.id, customer_id = ct.customer_id
    from crm.contacts ct where ct.id = coalesce(r.id, r.match_id);
  update pg_temp.import_rows r set error_column = 'id', error = 'No contact you can see has this id.'
   where r.id is not null and r.existing_id is null;
  update pg_temp.import_rows r set customer_id = c.id from crm.customers c
   where r.customer_id is null and r.error is null and c.id = r.candidate_id;
  update pg_temp.import_rows r set error_column = 'customer', error = 'No customer you can see has this id or e-mail address.'
   where r.error is null and r.customer_id is null;
  update pg_temp.import_rows r set error_column = 'customer', error = 'You may not change this customer''s contacts.'
    from crm.customers c
   where r.error is null and c.id = r.customer_id and not update_all and not (c.owner_id = any (updatable));
  update pg_temp.import_rows r set action = case
      when r.existing_id is null or job.on_duplicate = 'create' then 'create'
      when job.on_duplicate = 'skip' then 'skip'
      else 'update' end
   where r.error is null;
  update pg_temp.import_rows r set error_column = 'first_name', error = 'Required for new contacts.'
   where r.action = 'create' and r.first_name is null;
  update pg_temp.import_rows r set error_column = 'custom_fields.' || d.key, error = 'Required.'
    from crm.custom_field_definitions d
   where r.action = 'create' and r.error is null and d.entity = 'contact' and d.is_required
     and not (coalesce(r.custom_fields, '{}'::jsonb) ? d.key);
  if job.on_error = 'abort' and (invalid > 0 or exists (select 1 from pg_temp.import_rows where error is not null)) then
    perform set_config('role', 'none', true);
    return jsonb_build_object('applied', false, 'created', 0, 'updated', 0, 'skipped', 0);
  end if;
  select count(*) into skipped from pg_temp.import_rows where action = 'skip' and error is null;
  insert into crm.contacts (customer_id, first_name, last_name, email, phone, mobile, title, department, status, custom_fields)
  select r.customer_id, r.first_name, coalesce(r.last_name, ''), r.email, r.phone, r.mobile, r.title, r.department,
         coalesce(r.status, 'active'), coalesce(r.custom_fields, '{}'::jsonb)
    from pg_temp.import_rows r
   where r.action = 'create' and r.error is null
   order by r.row_number;
  get diagnostics created = row_count;
  if sets is not null then
    execute format('update crm.contacts ct set %s from pg_temp.import_rows r
                     where r.action = ''update'' and r.error is null and ct.id = r.existing_id', sets);
    get diagnostics updated = row_count;
  end if;
  perform set_config('role', 'none', true);
  return jsonb_build_object('applied', true, 'created', created, 'updated', updated, 'skipped', skipped);
end
$$;

-- Housekeeping for the integrations: staging tables of imports that never finished, old import jobs,
-- read notifications, and delivered or failed webhook events past retention.
create or replace function crm_private.prune_integrations(retention interval default interval '30 days') returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  j record;
  staged int := 0;
  imports bigint;
  notifications bigint;
  events bigint;
begin
  for j in select id from crm.import_jobs
            where status in ('receiving', 'failed', 'completed', 'queued') and created_at < now() - interval '1 day'
              and to_regclass('crm_private.' || crm_private.import_staging(id)) is not null loop
    perform crm_private.import_drop_staging(j.id);
    update crm.import_jobs set status = 'failed', error = coalesce(error, 'Abandoned.'), finished_at = coalesce(finished_at, now())
     where id = j.id and status in ('receiving', 'queued');
    staged := staged + 1;
  end loop;
  delete from crm.import_jobs where created_at < now() - retention;
  get diagnostics imports = row_count;
  delete from crm.notifications where read_at < now() - retention * 3;
  get diagnostics notifications = row_count;
  delete from crm.webhook_events ev where ev.created_at < now() - retention
     and not exists (select 1 from crm.webhook_deliveries d where d.organization_id = ev.organization_id and d.event_id = ev.id
                      and d.status in ('pending', 'retrying'));
  get diagnostics events = row_count;
  return jsonb_build_object('staging_tables', staged, 'import_jobs', imports, 'notifications', notifications, 'webhook_events', events);
end
$$;

--! split: 435-bulk-writes.sql
-- Bulk writes. The audit trigger, restated with the same output but one SQL statement for the diff instead of a
-- PL/pgSQL loop that rebuilt the jsonb once per column (quadratic in the number of columns). It runs
-- for every row of every business write, so bulk writes (CSV imports) pay for it 100,000 times.
-- Semantics unchanged (see 000004): INSERT records non-null new values, DELETE every old value,
-- UPDATE the changed columns; columns named in TG_ARGV and the timestamps are left out; an UPDATE
-- that changes nothing is not recorded.
create or replace function crm_private.tg_audit() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  old_row jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
  new_row jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
  row_data jsonb := coalesce(new_row, old_row);
  diff jsonb;
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
  select coalesce(jsonb_object_agg(k, case tg_op
                                        when 'INSERT' then jsonb_build_object('new', n)
                                        when 'DELETE' then jsonb_build_object('old', o)
                                        else jsonb_build_object('old', o, 'new', n) end), '{}'::jsonb)
    into diff
    from (select k, new_row->k as n, old_row->k as o from jsonb_object_keys(row_data) k) x
   where not coalesce(k = any (tg_argv), false) and k not in ('updated_at', 'created_at')
     and case tg_op when 'INSERT' then n <> 'null'::jsonb when 'DELETE' then true else o is distinct from n end;
  if tg_op = 'UPDATE' and diff = '{}'::jsonb then
    return null;
  end if;
  insert into crm.audit_log (organization_id, actor_id, table_name, record_id, operation, changes, request_id)
  values (org, crm.current_user_id(), tg_table_name, coalesce(rec, ''), tg_op, diff, crm_private.request_id());
  return null;
end
$$;

-- Inserts into the tables CSV imports write (customers, contacts) are audited, and customers' first
-- status recorded, once per statement over the inserted rows (transition table) instead of once per
-- row: the same rows in crm.audit_log and crm.customer_status_history, one set-based INSERT each.
-- Updates and deletes keep the row-level trigger above.
create or replace function crm_private.tg_audit_inserted() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.audit_log (organization_id, actor_id, table_name, record_id, operation, changes, request_id)
  select (x.j->>'organization_id')::uuid, crm.current_user_id(), tg_table_name, x.j->>'id', 'INSERT',
         (select coalesce(jsonb_object_agg(e.k, jsonb_build_object('new', e.v)), '{}'::jsonb)
            from jsonb_each(x.j) e (k, v)
           where e.v <> 'null'::jsonb and e.k not in ('updated_at', 'created_at') and not coalesce(e.k = any (tg_argv), false)),
         crm_private.request_id()
    from (select to_jsonb(n) as j from new_rows n) x
   where x.j->>'organization_id' is not null;
  return null;
end
$$;

create or replace function crm_private.tg_customer_status_inserted() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.customer_status_history (organization_id, customer_id, from_status, to_status, changed_by)
  select n.organization_id, n.id, null, n.status, crm.current_user_id() from new_rows n;
  return null;
end
$$;

do $$
declare
  t text;
begin
  foreach t in array array['customers', 'contacts'] loop
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after update or delete on crm.%I for each row execute function crm_private.tg_audit(%L)', t, 'search_vector');
    execute format('drop trigger if exists _800_audit_insert on crm.%I', t);
    execute format('create trigger _800_audit_insert after insert on crm.%I referencing new table as new_rows
                    for each statement execute function crm_private.tg_audit_inserted(%L)', t, 'search_vector');
  end loop;
end
$$;
drop trigger if exists _300_status_history on crm.customers;
create trigger _300_status_history after update of status on crm.customers
  for each row execute function crm_private.tg_customer_status_history();
drop trigger if exists _300_status_history_insert on crm.customers;
create trigger _300_status_history_insert after insert on crm.customers referencing new table as new_rows
  for each statement execute function crm_private.tg_customer_status_inserted();
