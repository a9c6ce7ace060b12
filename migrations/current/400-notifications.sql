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
-- themselves). Set-based over `recipients`; a repeated dedupe_key for the same member is skipped.
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
    join crm.users u on u.id = m.user_id and u.is_active and u.deleted_at is null
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
