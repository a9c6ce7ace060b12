--! Previous: sha1:4368e3c5c87fc2e17f635c1580da411411a3c563
--! Hash: sha1:27e4e107338b4bcba07a441e63d24c92554d7a6d
--! Message: identity and access: users, memberships, roles, permissions, teams, sessions, audit

-- Settings the server passes per request (never client input) -------------------------------------
create or replace function crm_private.setting(name text, fallback text) returns text
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(nullif(current_setting('cairn.' || name, true), ''), fallback)
$$;

create or replace function crm_private.raise(code text, message text, field text default null, hint text default null)
  returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception using errcode = code, message = message, column = coalesce(field, ''), hint = coalesce(hint, '');
end
$$;

-- Users (global) ---------------------------------------------------------------------------------
create table if not exists crm.users (
  id uuid primary key default gen_random_uuid(),
  username citext not null unique
    constraint users_username_format check (username ~ '^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$'),
  email citext unique
    constraint users_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' and length(email) <= 320),
  full_name text not null default '' constraint users_full_name_length check (length(full_name) <= 200),
  avatar_url text constraint users_avatar_url_format check (avatar_url ~ '^https?://' and length(avatar_url) <= 2000),
  locale text not null default 'en' constraint users_locale_format check (locale ~ '^[a-z]{2}(-[A-Z]{2})?$'),
  preferences jsonb not null default '{}'::jsonb constraint users_preferences_object check (jsonb_typeof(preferences) = 'object'),
  is_active boolean not null default true,
  email_confirmed_at timestamptz,
  last_login_at timestamptz,
  last_organization_id uuid references crm.organizations (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz
);
create index if not exists users_last_organization_id_idx on crm.users (last_organization_id);
comment on table crm.users is E'@behavior -insert -delete\nA person who can sign in. Users are global; memberships tie them to organizations.';
comment on column crm.users.last_organization_id is E'@behavior -*';
comment on column crm.users.deleted_at is 'Set when the account is closed; a closed account cannot sign in.';

drop trigger if exists _100_updated_at on crm.users;
create trigger _100_updated_at before update on crm.users
  for each row execute function crm_private.tg_set_updated_at();

-- Secrets: never reachable through the API.
create table if not exists crm_private.user_secrets (
  user_id uuid primary key references crm.users (id) on delete cascade,
  password_hash text,
  password_changed_at timestamptz not null default now()
);
alter table crm_private.user_secrets enable row level security;
drop policy if exists no_access on crm_private.user_secrets;
create policy no_access on crm_private.user_secrets using (false);

-- Identities issued by an external token issuer (seed 001's console), provisioned on first use.
create table if not exists crm_private.external_identities (
  issuer text not null,
  subject text not null,
  user_id uuid not null references crm.users (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (issuer, subject)
);
create index if not exists external_identities_user_id_idx on crm_private.external_identities (user_id);
alter table crm_private.external_identities enable row level security;
drop policy if exists no_access on crm_private.external_identities;
create policy no_access on crm_private.external_identities using (false);

-- Permissions (global catalog) -------------------------------------------------------------------
create table if not exists crm.permissions (
  code text primary key constraint permissions_code_format check (code ~ '^[a-z_]+:[a-z_]+$'),
  resource text not null,
  description text not null
);
create index if not exists permissions_resource_idx on crm.permissions (resource);
comment on table crm.permissions is E'@behavior -insert -update -delete\nThe catalog of action codes roles are granted.';

-- Which default role gets which code. Applied to every new organization and, for codes added by
-- later migrations, to the system roles of existing organizations (crm_private.register_permission).
create table if not exists crm_private.default_role_grants (
  role_name text not null,
  permission_code text not null references crm.permissions (code) on delete cascade,
  primary key (role_name, permission_code)
);
create index if not exists default_role_grants_permission_code_idx on crm_private.default_role_grants (permission_code);
alter table crm_private.default_role_grants enable row level security;
drop policy if exists no_access on crm_private.default_role_grants;
create policy no_access on crm_private.default_role_grants using (false);

create table if not exists crm_private.default_roles (
  name text primary key,
  description text not null,
  position int not null
);
alter table crm_private.default_roles enable row level security;
drop policy if exists no_access on crm_private.default_roles;
create policy no_access on crm_private.default_roles using (false);

insert into crm_private.default_roles (name, description, position) values
  ('Administrator', 'Full management of the organization: users, roles, settings and all records.', 1),
  ('Sales Manager', 'Supervises the team: sees and edits all customers and tasks, assigns work, runs campaigns and reports.', 2),
  ('Sales Representative', 'Front-line sales: works on the customers and tasks assigned to them.', 3),
  ('Finance', 'Invoices, expenses and financial reports; reads customers and campaigns.', 4),
  ('Viewer', 'Read-only access to the organization''s records and reports.', 5)
on conflict (name) do update set description = excluded.description, position = excluded.position;

-- Roles (per organization) -----------------------------------------------------------------------
create table if not exists crm.roles (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint roles_name_length check (length(btrim(name::text)) between 1 and 100),
  description text not null default '' constraint roles_description_length check (length(description) <= 1000),
  is_system boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint roles_name_unique unique (organization_id, name),
  constraint roles_organization_id_id_key unique (organization_id, id)
);
comment on table crm.roles is 'A named set of permissions within an organization.';
comment on column crm.roles.is_system is E'@behavior -insert -update\nDefault roles created with the organization.';
comment on column crm.roles.organization_id is E'@behavior -insert -update';

drop trigger if exists _100_updated_at on crm.roles;
create trigger _100_updated_at before update on crm.roles
  for each row execute function crm_private.tg_set_updated_at();

create table if not exists crm.role_permissions (
  organization_id uuid not null default crm.current_org_id(),
  role_id uuid not null,
  permission_code text not null references crm.permissions (code) on delete cascade,
  granted_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  primary key (role_id, permission_code),
  constraint role_permissions_role_fkey foreign key (organization_id, role_id)
    references crm.roles (organization_id, id) on delete cascade
);
create index if not exists role_permissions_organization_id_role_id_idx on crm.role_permissions (organization_id, role_id);
create index if not exists role_permissions_permission_code_idx on crm.role_permissions (permission_code);
create index if not exists role_permissions_granted_by_idx on crm.role_permissions (granted_by);
comment on table crm.role_permissions is E'@behavior -insert -update -delete\nA permission granted to a role (grant and revoke with grantPermission / revokePermission).';

-- Memberships and teams --------------------------------------------------------------------------
create table if not exists crm.organization_memberships (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  user_id uuid not null references crm.users (id) on delete cascade,
  role_id uuid not null,
  is_active boolean not null default true,
  invited_by uuid references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint organization_memberships_user_unique unique (organization_id, user_id),
  constraint organization_memberships_role_fkey foreign key (organization_id, role_id)
    references crm.roles (organization_id, id) on delete restrict
);
create index if not exists organization_memberships_user_id_idx on crm.organization_memberships (user_id);
create index if not exists organization_memberships_organization_id_role_id_idx on crm.organization_memberships (organization_id, role_id);
create index if not exists organization_memberships_invited_by_idx on crm.organization_memberships (invited_by);
comment on table crm.organization_memberships is E'@behavior -insert -update -delete\nA user''s membership of an organization, with their role.';

drop trigger if exists _100_updated_at on crm.organization_memberships;
create trigger _100_updated_at before update on crm.organization_memberships
  for each row execute function crm_private.tg_set_updated_at();

create table if not exists crm.teams (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name citext not null constraint teams_name_length check (length(btrim(name::text)) between 1 and 100),
  description text not null default '' constraint teams_description_length check (length(description) <= 1000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint teams_name_unique unique (organization_id, name),
  constraint teams_organization_id_id_key unique (organization_id, id)
);
comment on table crm.teams is 'A group of members; team-scoped permissions (…:read_team) see the records of its members.';
comment on column crm.teams.organization_id is E'@behavior -insert -update';

drop trigger if exists _100_updated_at on crm.teams;
create trigger _100_updated_at before update on crm.teams
  for each row execute function crm_private.tg_set_updated_at();

create table if not exists crm.team_members (
  organization_id uuid not null default crm.current_org_id(),
  team_id uuid not null,
  user_id uuid not null,
  is_lead boolean not null default false,
  created_at timestamptz not null default now(),
  primary key (team_id, user_id),
  constraint team_members_team_fkey foreign key (organization_id, team_id)
    references crm.teams (organization_id, id) on delete cascade,
  -- Only members of the organization can be in its teams.
  constraint team_members_member_fkey foreign key (organization_id, user_id)
    references crm.organization_memberships (organization_id, user_id) on delete cascade
);
create index if not exists team_members_organization_id_team_id_idx on crm.team_members (organization_id, team_id);
create index if not exists team_members_organization_id_user_id_idx on crm.team_members (organization_id, user_id);
create index if not exists team_members_user_id_idx on crm.team_members (user_id);
comment on column crm.team_members.organization_id is E'@behavior -insert -update';

-- Invitations ------------------------------------------------------------------------------------
create table if not exists crm.invitations (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  email citext not null constraint invitations_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  role_id uuid not null,
  invited_by uuid references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  accepted_at timestamptz,
  accepted_by uuid references crm.users (id) on delete set null,
  revoked_at timestamptz,
  constraint invitations_role_fkey foreign key (organization_id, role_id)
    references crm.roles (organization_id, id) on delete cascade
);
create index if not exists invitations_organization_id_email_idx on crm.invitations (organization_id, email);
create index if not exists invitations_organization_id_role_id_idx on crm.invitations (organization_id, role_id);
create index if not exists invitations_invited_by_idx on crm.invitations (invited_by);
create index if not exists invitations_accepted_by_idx on crm.invitations (accepted_by);
comment on table crm.invitations is E'@behavior -insert -update -delete\nAn invitation to join an organization (inviteMember / acceptInvitation / revokeInvitation).';

-- Sessions, single-use tokens, throttling (private) ------------------------------------------------
create table if not exists crm_private.sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references crm.users (id) on delete cascade,
  organization_id uuid references crm.organizations (id) on delete cascade,
  created_at timestamptz not null default now(),
  last_refreshed_at timestamptz,
  expires_at timestamptz not null,
  revoked_at timestamptz,
  revoked_reason text,
  client_ip text,
  user_agent text
);
create index if not exists sessions_user_id_idx on crm_private.sessions (user_id) where revoked_at is null;
create index if not exists sessions_user_id_all_idx on crm_private.sessions (user_id);
create index if not exists sessions_organization_id_idx on crm_private.sessions (organization_id);
create index if not exists sessions_expires_at_idx on crm_private.sessions (expires_at);
alter table crm_private.sessions enable row level security;
drop policy if exists no_access on crm_private.sessions;
create policy no_access on crm_private.sessions using (false);

-- One row per refresh token ever issued for a session (its family). Only the newest is usable; a
-- reused older one means the token leaked, and the whole session is revoked.
create table if not exists crm_private.refresh_tokens (
  token_hash bytea primary key,
  session_id uuid not null references crm_private.sessions (id) on delete cascade,
  issued_at timestamptz not null default now(),
  expires_at timestamptz not null,
  used_at timestamptz
);
create index if not exists refresh_tokens_session_id_idx on crm_private.refresh_tokens (session_id);
alter table crm_private.refresh_tokens enable row level security;
drop policy if exists no_access on crm_private.refresh_tokens;
create policy no_access on crm_private.refresh_tokens using (false);

create table if not exists crm_private.one_time_tokens (
  token_hash bytea primary key,
  kind text not null check (kind in ('confirm_email', 'password_reset', 'invitation')),
  user_id uuid references crm.users (id) on delete cascade,
  invitation_id uuid references crm.invitations (id) on delete cascade,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  used_at timestamptz
);
create index if not exists one_time_tokens_user_id_idx on crm_private.one_time_tokens (user_id);
create index if not exists one_time_tokens_invitation_id_idx on crm_private.one_time_tokens (invitation_id);
create index if not exists one_time_tokens_expires_at_idx on crm_private.one_time_tokens (expires_at);
alter table crm_private.one_time_tokens enable row level security;
drop policy if exists no_access on crm_private.one_time_tokens;
create policy no_access on crm_private.one_time_tokens using (false);

-- Failed sign-in counters, per account ('user:<id>') and per client address ('ip:<addr>').
create table if not exists crm_private.login_throttle (
  key text primary key,
  failures int not null default 0,
  window_started_at timestamptz not null default now(),
  locked_until timestamptz
);
alter table crm_private.login_throttle enable row level security;
drop policy if exists no_access on crm_private.login_throttle;
create policy no_access on crm_private.login_throttle using (false);

-- Emails the local provider has "sent" (development mailbox; a real provider replaces it later).
create table if not exists crm_private.email_outbox (
  id bigint generated always as identity primary key,
  to_address text not null,
  template text not null,
  subject text not null,
  body text not null,
  created_at timestamptz not null default now()
);
alter table crm_private.email_outbox enable row level security;
drop policy if exists no_access on crm_private.email_outbox;
create policy no_access on crm_private.email_outbox using (false);

-- Audit log (append-only) ------------------------------------------------------------------------
create table if not exists crm.audit_log (
  id bigint generated always as identity primary key,
  organization_id uuid not null references crm.organizations (id) on delete cascade,
  actor_id uuid references crm.users (id) on delete set null,
  table_name text not null,
  record_id text not null,
  operation text not null check (operation in ('INSERT', 'UPDATE', 'DELETE')),
  changes jsonb not null default '{}'::jsonb,
  request_id text,
  created_at timestamptz not null default now()
);
create index if not exists audit_log_organization_id_created_at_idx on crm.audit_log (organization_id, created_at desc);
create index if not exists audit_log_organization_id_table_record_idx on crm.audit_log (organization_id, table_name, record_id);
create index if not exists audit_log_actor_id_idx on crm.audit_log (actor_id);
comment on table crm.audit_log is E'@behavior -insert -update -delete\nWho changed what, when: written by triggers, never edited.';
comment on column crm.audit_log.changes is 'For each changed column: {"old": …, "new": …} (secrets are never recorded).';

create or replace function crm_private.tg_audit_log_append_only() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception 'The audit log is append-only' using errcode = '42501';
end
$$;
drop trigger if exists _000_append_only on crm.audit_log;
create trigger _000_append_only before update or delete on crm.audit_log
  for each row execute function crm_private.tg_audit_log_append_only();
drop trigger if exists _000_no_truncate on crm.audit_log;
create trigger _000_no_truncate before truncate on crm.audit_log
  for each statement execute function crm_private.tg_audit_log_append_only();

-- Generic audit trigger for every business table: records actor, request and changed columns.
-- Columns named in TG_ARGV are left out of the diff (e.g. search vectors).
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
  rec := coalesce(row_data->>'id', concat_ws(':', row_data->>'role_id', row_data->>'team_id', row_data->>'user_id', row_data->>'permission_code'));
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
  values (org, crm.current_user_id(), tg_table_name, rec, tg_op, diff, crm_private.request_id());
  return null;
end
$$;

-- Identity helpers -------------------------------------------------------------------------------
-- The permission codes of the current user in the current organization (empty without both).
create or replace function crm.current_permissions() returns text[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(rp.permission_code order by rp.permission_code), '{}')
    from crm.organization_memberships m
    join crm.users u on u.id = m.user_id and u.is_active and u.deleted_at is null
    join crm.role_permissions rp on rp.role_id = m.role_id
   where m.user_id = crm.current_user_id()
     and m.organization_id = crm.current_org_id()
     and m.is_active
$$;
comment on function crm.current_permissions() is 'The permission codes the caller holds in the current organization.';

create or replace function crm.has_permission(code text) returns boolean
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select exists (
    select 1
      from crm.organization_memberships m
      join crm.role_permissions rp on rp.role_id = m.role_id and rp.permission_code = has_permission.code
     where m.user_id = crm.current_user_id()
       and m.organization_id = crm.current_org_id()
       and m.is_active
  )
$$;
comment on function crm.has_permission(text) is 'Whether the caller holds a permission code in the current organization.';

-- The user ids whose records the caller may see (action 'read') or change ('update', …) for a
-- resource when they lack `<resource>:<action>_all`: their teams' members with `_team`, themselves
-- with `_own`, nobody otherwise. Policies call it once per statement: `owner_id = any ((select …)::uuid[])` (the cast makes
-- the scalar subquery an array expression; without it PostgreSQL reads ANY (subquery) and fails).
create or replace function crm.visible_owner_ids(resource text, action text default 'read') returns uuid[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case
    when crm.has_permission(resource || ':' || action || '_team') then
      array(
        select distinct tm.user_id
          from crm.team_members mine
          join crm.team_members tm on tm.team_id = mine.team_id
         where mine.user_id = crm.current_user_id()
           and mine.organization_id = crm.current_org_id()
        union
        select crm.current_user_id()
      )
    when crm.has_permission(resource || ':' || action || '_own') then array[crm.current_user_id()]
    else '{}'::uuid[]
  end
$$;
comment on function crm.visible_owner_ids(text, text) is E'@behavior -queryField\nOwner ids visible to the caller for a resource and action (own → me, team → my teams'' members).';

-- Organizations the caller is an active member of (policy helper).
create or replace function crm.my_organization_ids() returns uuid[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(organization_id), '{}') from crm.organization_memberships
   where user_id = crm.current_user_id() and is_active
$$;

-- Users who are members (active or not) of the current organization (policy helper).
create or replace function crm.current_org_member_ids() returns uuid[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(array_agg(user_id), '{}') from crm.organization_memberships
   where organization_id = crm.current_org_id()
$$;

comment on function crm.my_organization_ids() is E'@behavior -queryField -mutationField\nOrganizations the caller is an active member of.';
comment on function crm.current_org_member_ids() is E'@behavior -queryField -mutationField\nMembers of the current organization.';

create or replace function crm_private.require_permission(code text) returns void
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  if crm.current_org_id() is null or not crm.has_permission(code) then
    perform crm_private.raise('CRFBD', format('You need the %s permission to do this.', code));
  end if;
end
$$;

-- Grants ------------------------------------------------------------------------------------------
grant execute on function crm.current_permissions(), crm.has_permission(text), crm.visible_owner_ids(text, text),
  crm.my_organization_ids(), crm.current_org_member_ids()
  to crm_user;
grant select on crm.users, crm.permissions, crm.roles, crm.role_permissions, crm.organization_memberships,
  crm.teams, crm.team_members, crm.invitations, crm.audit_log to crm_user;
grant update (full_name, avatar_url, locale, preferences) on crm.users to crm_user;
grant insert (name, description), update (name, description), delete on crm.roles to crm_user;
grant insert (name, description), update (name, description), delete on crm.teams to crm_user;
grant insert (team_id, user_id, is_lead), update (is_lead), delete on crm.team_members to crm_user;
grant update (name, settings) on crm.organizations to crm_user;

-- Row-level security -------------------------------------------------------------------------------
alter table crm.users enable row level security;
alter table crm.permissions enable row level security;
alter table crm.roles enable row level security;
alter table crm.role_permissions enable row level security;
alter table crm.organization_memberships enable row level security;
alter table crm.teams enable row level security;
alter table crm.team_members enable row level security;
alter table crm.invitations enable row level security;
alter table crm.audit_log enable row level security;

drop policy if exists organizations_select on crm.organizations;
create policy organizations_select on crm.organizations for select
  using (id = any ((select crm.my_organization_ids())::uuid[]));
drop policy if exists organizations_update on crm.organizations;
create policy organizations_update on crm.organizations for update
  using (id = (select crm.current_org_id()) and (select crm.has_permission('settings:manage')));

-- Your own profile; with users:read, the members of your current organization.
drop policy if exists users_select on crm.users;
create policy users_select on crm.users for select
  using (
    id = (select crm.current_user_id())
    or ((select crm.has_permission('users:read')) and id = any ((select crm.current_org_member_ids())::uuid[]))
  );
drop policy if exists users_update_self on crm.users;
create policy users_update_self on crm.users for update
  using (id = (select crm.current_user_id()));

drop policy if exists permissions_select on crm.permissions;
create policy permissions_select on crm.permissions for select using (true);

drop policy if exists roles_select on crm.roles;
create policy roles_select on crm.roles for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists roles_insert on crm.roles;
create policy roles_insert on crm.roles for insert
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('roles:manage')));
drop policy if exists roles_update on crm.roles;
create policy roles_update on crm.roles for update
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('roles:manage')));
drop policy if exists roles_delete on crm.roles;
create policy roles_delete on crm.roles for delete
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('roles:manage')));

drop policy if exists role_permissions_select on crm.role_permissions;
create policy role_permissions_select on crm.role_permissions for select
  using (organization_id = (select crm.current_org_id()));

drop policy if exists memberships_select on crm.organization_memberships;
create policy memberships_select on crm.organization_memberships for select
  using (
    user_id = (select crm.current_user_id())
    or (organization_id = (select crm.current_org_id()) and (select crm.has_permission('users:read')))
  );

drop policy if exists teams_select on crm.teams;
create policy teams_select on crm.teams for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists teams_write on crm.teams;
create policy teams_write on crm.teams for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:manage')));

drop policy if exists team_members_select on crm.team_members;
create policy team_members_select on crm.team_members for select
  using (organization_id = (select crm.current_org_id()));
drop policy if exists team_members_write on crm.team_members;
create policy team_members_write on crm.team_members for all
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:manage')))
  with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission('teams:manage')));

drop policy if exists invitations_select on crm.invitations;
create policy invitations_select on crm.invitations for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('users:create')));

drop policy if exists audit_log_select on crm.audit_log;
create policy audit_log_select on crm.audit_log for select
  using (
    organization_id = (select crm.current_org_id())
    and ((select crm.has_permission('audit:read')) or (select crm.has_permission('logs:view')))
  );

-- Guard rails (triggers) ---------------------------------------------------------------------------
-- Nobody grants a code they do not hold themselves (the owner, e.g. migrations and new
-- organizations, is exempt: there is no request user).
create or replace function crm_private.tg_role_permissions_guard() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  -- Applies to requests (crm_user); owner-run code (migrations, SECURITY DEFINER functions) checks itself.
  if current_user = 'crm_user' and not crm.has_permission(new.permission_code) then
    raise exception 'You cannot grant %: you do not hold it yourself.', new.permission_code
      using errcode = 'CRFBD', column = 'permission_code';
  end if;
  return new;
end
$$;
drop trigger if exists _200_guard on crm.role_permissions;
create trigger _200_guard before insert on crm.role_permissions
  for each row execute function crm_private.tg_role_permissions_guard();

-- System roles keep their names (they are how defaults and external role mapping find them), and a
-- role with members cannot be deleted. SECURITY DEFINER so the member check sees every membership.
create or replace function crm_private.tg_roles_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  if tg_op = 'UPDATE' and old.is_system and new.name is distinct from old.name then
    raise exception 'Default roles cannot be renamed.' using errcode = 'CRSTA', column = 'name';
  end if;
  if tg_op = 'DELETE' then
    if old.is_system and crm.current_user_id() is not null then
      raise exception 'Default roles cannot be deleted.' using errcode = 'CRSTA', column = 'id';
    end if;
    if exists (select 1 from crm.organization_memberships m where m.organization_id = old.organization_id and m.role_id = old.id) then
      raise exception 'This role still has members; give them another role first.' using errcode = 'CRSTA', column = 'id';
    end if;
    return old;
  end if;
  return new;
end
$$;
drop trigger if exists _200_guard on crm.roles;
create trigger _200_guard before update or delete on crm.roles
  for each row execute function crm_private.tg_roles_guard();

-- Every organization keeps at least one active member who can manage roles. Checked at commit so a
-- transaction may move the right from one member to another.
create or replace function crm_private.assert_role_manager(org uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if org is null or not exists (select 1 from crm.organizations where id = org) then
    return;
  end if;
  if not exists (
    select 1
      from crm.organization_memberships m
      join crm.users u on u.id = m.user_id and u.is_active and u.deleted_at is null
      join crm.role_permissions rp on rp.role_id = m.role_id and rp.permission_code = 'roles:manage'
     where m.organization_id = org and m.is_active
  ) then
    perform crm_private.raise('CRSTA', 'The organization must keep at least one active member who can manage roles.');
  end if;
end
$$;

create or replace function crm_private.tg_keep_role_manager() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid;
begin
  if tg_table_name = 'users' then
    for org in select organization_id from crm.organization_memberships where user_id = old.id loop
      perform crm_private.assert_role_manager(org);
    end loop;
  else
    perform crm_private.assert_role_manager(old.organization_id);
  end if;
  return null;
end
$$;
drop trigger if exists _900_keep_role_manager on crm.organization_memberships;
create constraint trigger _900_keep_role_manager after update or delete on crm.organization_memberships
  deferrable initially deferred for each row execute function crm_private.tg_keep_role_manager();
drop trigger if exists _900_keep_role_manager on crm.role_permissions;
create constraint trigger _900_keep_role_manager after delete on crm.role_permissions
  deferrable initially deferred for each row execute function crm_private.tg_keep_role_manager();
drop trigger if exists _900_keep_role_manager on crm.users;
create constraint trigger _900_keep_role_manager after update of is_active, deleted_at on crm.users
  deferrable initially deferred for each row execute function crm_private.tg_keep_role_manager();

-- Audit every change to the access model.
drop trigger if exists _800_audit on crm.organizations;
create trigger _800_audit after update on crm.organizations for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.roles;
create trigger _800_audit after insert or update or delete on crm.roles for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.role_permissions;
create trigger _800_audit after insert or delete on crm.role_permissions for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.organization_memberships;
create trigger _800_audit after insert or update or delete on crm.organization_memberships for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.teams;
create trigger _800_audit after insert or update or delete on crm.teams for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.team_members;
create trigger _800_audit after insert or update or delete on crm.team_members for each row execute function crm_private.tg_audit();
drop trigger if exists _800_audit on crm.invitations;
create trigger _800_audit after insert or update on crm.invitations for each row execute function crm_private.tg_audit();

-- Permission catalog and default grants ------------------------------------------------------------
-- Registers a permission code and which default roles get it (the Administrator always does);
-- grants it to those system roles of every existing organization. Later modules call this from
-- their migrations.
create or replace function crm_private.register_permission(code text, description text, default_roles text[])
  returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not ('Administrator' = any (default_roles)) then
    default_roles := default_roles || 'Administrator'::text;
  end if;
  insert into crm.permissions (code, resource, description)
  values (code, split_part(code, ':', 1), description)
  on conflict on constraint permissions_pkey do update set description = excluded.description, resource = excluded.resource;
  insert into crm_private.default_role_grants (role_name, permission_code)
  select r, code from unnest(default_roles) r
  on conflict do nothing;
  insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
  select ro.organization_id, ro.id, code, null
    from crm.roles ro
   where ro.is_system and ro.name::text = any (default_roles)
  on conflict do nothing;
end
$$;

do $$
declare
  a text[] := array['Administrator'];
  am text[] := array['Administrator', 'Sales Manager'];
  amr text[] := array['Administrator', 'Sales Manager', 'Sales Representative'];
begin
  -- customers
  perform crm_private.register_permission('customers:create', 'Create customers', amr);
  perform crm_private.register_permission('customers:read_own', 'View customers you own', amr);
  perform crm_private.register_permission('customers:read_team', 'View customers owned by your teams', '{}');
  perform crm_private.register_permission('customers:read_all', 'View all customers', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('customers:update_own', 'Update customers you own', amr);
  perform crm_private.register_permission('customers:update_team', 'Update customers owned by your teams', '{}');
  perform crm_private.register_permission('customers:update_all', 'Update any customer', am);
  perform crm_private.register_permission('customers:delete', 'Delete customers', am);
  -- orders
  perform crm_private.register_permission('orders:create', 'Create orders', amr);
  perform crm_private.register_permission('orders:read', 'View orders', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('orders:update', 'Update orders', am);
  perform crm_private.register_permission('orders:delete', 'Delete orders', a);
  -- tasks
  perform crm_private.register_permission('tasks:create', 'Create tasks', am);
  perform crm_private.register_permission('tasks:read_own', 'View tasks assigned to you', amr);
  perform crm_private.register_permission('tasks:read_team', 'View tasks assigned to your teams', '{}');
  perform crm_private.register_permission('tasks:read_all', 'View all tasks', am || array['Viewer']);
  perform crm_private.register_permission('tasks:assign', 'Assign tasks to members', am);
  perform crm_private.register_permission('tasks:update_own', 'Update tasks assigned to you', '{}');
  perform crm_private.register_permission('tasks:update_all', 'Update any task', am);
  perform crm_private.register_permission('tasks:update_status_own', 'Change the status of tasks assigned to you', amr);
  perform crm_private.register_permission('tasks:delete', 'Delete tasks', am);
  -- work logs
  perform crm_private.register_permission('worklogs:create', 'Log your own work', amr);
  perform crm_private.register_permission('worklogs:read_own', 'View your own work logs', amr);
  perform crm_private.register_permission('worklogs:read_all', 'View all work logs', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('worklogs:update', 'Update work logs', am);
  perform crm_private.register_permission('worklogs:delete', 'Delete work logs', a);
  -- projects
  perform crm_private.register_permission('projects:create', 'Create projects', am);
  perform crm_private.register_permission('projects:read_own', 'View projects of customers you own', amr);
  perform crm_private.register_permission('projects:read_all', 'View all projects', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('projects:update', 'Update projects', am);
  perform crm_private.register_permission('projects:delete', 'Delete projects', a);
  -- campaigns and promotions
  perform crm_private.register_permission('campaigns:create', 'Create campaigns', am);
  perform crm_private.register_permission('campaigns:read', 'View campaigns', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('campaigns:update', 'Update campaigns', am);
  perform crm_private.register_permission('campaigns:execute', 'Launch campaigns', am);
  perform crm_private.register_permission('campaigns:delete', 'Delete campaigns', a);
  perform crm_private.register_permission('promotions:create', 'Define promotion rules', am);
  perform crm_private.register_permission('promotions:read', 'View promotions', am || array['Viewer']);
  perform crm_private.register_permission('promotions:update', 'Update promotions', am);
  perform crm_private.register_permission('promotions:delete', 'Delete promotions', a);
  -- finance (seed 002)
  perform crm_private.register_permission('invoices:create', 'Create invoices', array['Administrator', 'Finance']);
  perform crm_private.register_permission('invoices:read', 'View invoices', array['Administrator', 'Finance', 'Sales Manager', 'Viewer']);
  perform crm_private.register_permission('invoices:update', 'Update invoices and record payments', array['Administrator', 'Finance']);
  perform crm_private.register_permission('invoices:delete', 'Delete invoices', array['Administrator', 'Finance']);
  perform crm_private.register_permission('expenses:create', 'Record expenses', array['Administrator', 'Finance']);
  perform crm_private.register_permission('expenses:read', 'View expenses', array['Administrator', 'Finance']);
  perform crm_private.register_permission('expenses:approve', 'Approve or reject expenses', array['Administrator', 'Finance']);
  perform crm_private.register_permission('reports:financial', 'Financial reports', array['Administrator', 'Finance']);
  -- people and access
  perform crm_private.register_permission('users:create', 'Add and invite members', a);
  perform crm_private.register_permission('users:read', 'View the organization''s members', am || array['Finance', 'Viewer']);
  perform crm_private.register_permission('users:update', 'Change members'' roles, deactivate and reactivate members', a);
  perform crm_private.register_permission('users:delete', 'Remove members from the organization', a);
  perform crm_private.register_permission('roles:manage', 'Create, rename and delete roles; grant and revoke permissions', a);
  perform crm_private.register_permission('permissions:manage', 'Manage the permission catalog', a);
  perform crm_private.register_permission('teams:read', 'View teams', amr || array['Finance', 'Viewer']);
  perform crm_private.register_permission('teams:manage', 'Create teams and manage their members', am);
  -- system
  perform crm_private.register_permission('settings:manage', 'Change organization settings', a);
  perform crm_private.register_permission('reports:read_all', 'Analytics and dashboards', am || array['Viewer']);
  perform crm_private.register_permission('database:backup', 'Database operations', a);
  perform crm_private.register_permission('logs:view', 'View system logs', a);
  perform crm_private.register_permission('audit:read', 'Read the audit log', a);
end
$$;

-- New organizations get the default roles and grants.
create or replace function crm_private.seed_organization(org uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into crm.roles (organization_id, name, description, is_system)
  select org, d.name, d.description, true from crm_private.default_roles d order by d.position
  on conflict (organization_id, name) do nothing;
  insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
  select org, r.id, g.permission_code, null
    from crm_private.default_role_grants g
    join crm.roles r on r.organization_id = org and r.name::text = g.role_name and r.is_system
  on conflict do nothing;
end
$$;

create or replace function crm_private.tg_seed_organization() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.seed_organization(new.id);
  return null;
end
$$;
drop trigger if exists _500_seed on crm.organizations;
create trigger _500_seed after insert on crm.organizations
  for each row execute function crm_private.tg_seed_organization();

-- Organizations created before this migration.
select crm_private.seed_organization(id) from crm.organizations;

-- ================================================================================================
-- Authentication. These functions are SECURITY DEFINER (they read secrets) and are not exposed by
-- PostGraphile directly: the server wires them as the register/login/… mutations (src/graphql/
-- plugins/auth.ts), which sign the access token. Failures that must still be recorded (throttling,
-- refresh-token reuse) are returned as {"error": …} so the transaction commits; everything else raises.
-- ================================================================================================
create or replace function crm_private.new_token() returns text
  language sql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
  select translate(encode(gen_random_bytes(32), 'base64'), '+/=', '-_')
$$;

create or replace function crm_private.token_hash(token text) returns bytea
  language sql immutable parallel safe
  set search_path = pg_catalog, public, pg_temp
as $$
  select digest(coalesce(token, ''), 'sha256')
$$;

create or replace function crm_private.hash_password(password text) returns text
  language sql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
  select crypt(password, gen_salt('bf', crm_private.setting('auth.bcrypt_cost', '10')::int))
$$;

create or replace function crm_private.check_password(password text, username text, email text) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  min_length int := crm_private.setting('auth.password_min_length', '10')::int;
  p text := lower(coalesce(password, ''));
  local_part text := lower(split_part(coalesce(email, ''), '@', 1));
begin
  if length(coalesce(password, '')) < min_length then
    perform crm_private.raise('CRVAL', format('The password must have at least %s characters.', min_length), 'password');
  end if;
  if length(password) > 200 then
    perform crm_private.raise('CRVAL', 'The password must have at most 200 characters.', 'password');
  end if;
  if (length(coalesce(username, '')) >= 3 and position(lower(username) in p) > 0)
     or (length(local_part) >= 3 and position(local_part in p) > 0) then
    perform crm_private.raise('CRVAL', 'The password must not contain your username or email address.', 'password');
  end if;
  if p ~ '^(.)\1*$' then
    perform crm_private.raise('CRVAL', 'The password must not be one repeated character.', 'password');
  end if;
end
$$;

create or replace function crm_private.auth_error(code text, message text, field text default null) returns jsonb
  language sql immutable
  set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('error', jsonb_strip_nulls(jsonb_build_object('code', code, 'message', message, 'field', field)))
$$;

-- Throttling ---------------------------------------------------------------------------------------
create or replace function crm_private.throttle_locked(k text) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from crm_private.login_throttle where key = k and locked_until > now())
$$;

create or replace function crm_private.throttle_failure(k text, max_failures int) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  lock interval := make_interval(secs => crm_private.setting('auth.login_lock_seconds', '900')::int);
  t crm_private.login_throttle;
begin
  insert into crm_private.login_throttle as lt (key, failures, window_started_at)
  values (k, 1, now())
  on conflict (key) do update set
    failures = case when lt.window_started_at < now() - lock or lt.locked_until <= now() then 1 else lt.failures + 1 end,
    window_started_at = case when lt.window_started_at < now() - lock or lt.locked_until <= now() then now() else lt.window_started_at end,
    locked_until = case when lt.locked_until <= now() then null else lt.locked_until end
  returning * into t;
  if t.failures >= max_failures then
    update crm_private.login_throttle set locked_until = now() + lock where key = k;
  end if;
end
$$;

-- Sessions -----------------------------------------------------------------------------------------
-- Starts a session and returns what the server needs to sign the access token.
create or replace function crm_private.start_session(uid uuid, org uuid) returns jsonb
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  ttl interval := make_interval(secs => crm_private.setting('auth.refresh_token_ttl_seconds', '604800')::int);
  sid uuid;
  token text := crm_private.new_token();
begin
  insert into crm_private.sessions (user_id, organization_id, expires_at, client_ip, user_agent)
  values (uid, org, now() + ttl, crm_private.setting('client_ip', null), left(crm_private.setting('user_agent', null), 500))
  returning id into sid;
  insert into crm_private.refresh_tokens (token_hash, session_id, expires_at)
  values (crm_private.token_hash(token), sid, now() + ttl);
  update crm.users set last_login_at = now(), last_organization_id = coalesce(org, last_organization_id) where id = uid;
  return crm_private.session_json(sid, token);
end
$$;

create or replace function crm_private.session_json(sid uuid, refresh_token text) returns jsonb
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('session', jsonb_build_object(
    'user_id', s.user_id,
    'organization_id', s.organization_id,
    'session_id', s.id,
    'role', r.name,
    'refresh_token', refresh_token,
    'refresh_token_expires_at', s.expires_at))
    from crm_private.sessions s
    left join crm.organization_memberships m on m.organization_id = s.organization_id and m.user_id = s.user_id
    left join crm.roles r on r.id = m.role_id
   where s.id = sid
$$;

-- The organization a login lands in: the one asked for, the only one, or the last used one.
create or replace function crm_private.choose_organization(uid uuid, wanted text) returns jsonb
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org crm.organizations;
  m crm.organization_memberships;
  last_org uuid;
begin
  if nullif(btrim(wanted), '') is not null then
    select o.* into org from crm.organizations o
     where (wanted ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' and o.id = wanted::uuid)
        or o.slug = wanted::citext
     limit 1;
    select * into m from crm.organization_memberships where organization_id = org.id and user_id = uid;
    if m.id is null then
      return crm_private.auth_error('FORBIDDEN', 'You are not a member of that organization.', 'organization');
    elsif not m.is_active then
      return crm_private.auth_error('MEMBERSHIP_DISABLED', 'Your membership of that organization is disabled.', 'organization');
    end if;
    return jsonb_build_object('organization_id', m.organization_id);
  end if;
  select last_organization_id into last_org from crm.users where id = uid;
  select * into m from crm.organization_memberships
   where user_id = uid and is_active
   order by (organization_id = last_org) desc nulls last, created_at desc
   limit 1;
  if m.id is not null then
    return jsonb_build_object('organization_id', m.organization_id);
  end if;
  if exists (select 1 from crm.organization_memberships where user_id = uid) then
    return crm_private.auth_error('MEMBERSHIP_DISABLED', 'Your memberships are disabled.');
  end if;
  return jsonb_build_object('organization_id', null);
end
$$;

create or replace function crm.login(identifier text, password text, organization text default null) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  ip text := crm_private.setting('client_ip', null);
  u crm.users;
  stored text;
  ok boolean;
  chosen jsonb;
  max_account int := crm_private.setting('auth.login_max_failures', '5')::int;
  max_ip int := crm_private.setting('auth.ip_max_failures', '20')::int;
  hash text;
begin
  if ip is not null and crm_private.throttle_locked('ip:' || ip) then
    return crm_private.auth_error('RATE_LIMITED', 'Too many failed sign-ins from this address; try again later.');
  end if;
  select * into u from crm.users
   where (username = identifier::citext or email = identifier::citext) and deleted_at is null
   limit 1;
  if u.id is not null and crm_private.throttle_locked('user:' || u.id) then
    return crm_private.auth_error('RATE_LIMITED', 'Too many failed sign-ins for this account; try again later.');
  end if;
  select password_hash into stored from crm_private.user_secrets where user_id = u.id;
  -- Unknown users cost the same bcrypt work as known ones (a fresh salt of the configured cost).
  hash := coalesce(stored, gen_salt('bf', crm_private.setting('auth.bcrypt_cost', '10')::int));
  ok := crypt(coalesce(password, ''), hash) = hash and stored is not null;
  if not ok then
    if ip is not null then
      perform crm_private.throttle_failure('ip:' || ip, max_ip);
    end if;
    if u.id is not null then
      perform crm_private.throttle_failure('user:' || u.id, max_account);
    end if;
    return crm_private.auth_error('INVALID_CREDENTIALS', 'Unknown username or email, or wrong password.');
  end if;
  delete from crm_private.login_throttle where key = 'user:' || u.id;
  if not u.is_active then
    return crm_private.auth_error('ACCOUNT_DISABLED', 'This account is disabled.');
  end if;
  if crm_private.setting('auth.require_email_confirmation', 'false')::boolean and u.email_confirmed_at is null then
    return crm_private.auth_error('EMAIL_NOT_CONFIRMED', 'Confirm your email address first.');
  end if;
  chosen := crm_private.choose_organization(u.id, organization);
  if chosen ? 'error' then
    return chosen;
  end if;
  return crm_private.start_session(u.id, (chosen->>'organization_id')::uuid);
end
$$;

create or replace function crm.refresh_session(refresh_token text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  ttl interval := make_interval(secs => crm_private.setting('auth.refresh_token_ttl_seconds', '604800')::int);
  rt crm_private.refresh_tokens;
  s crm_private.sessions;
  token text;
begin
  select * into rt from crm_private.refresh_tokens where token_hash = crm_private.token_hash(refresh_token) for update;
  if rt.token_hash is null then
    return crm_private.auth_error('INVALID_TOKEN', 'Unknown refresh token.', 'refreshToken');
  end if;
  select * into s from crm_private.sessions where id = rt.session_id for update;
  if s.revoked_at is not null then
    return crm_private.auth_error('INVALID_TOKEN', 'This session has ended; sign in again.', 'refreshToken');
  end if;
  if rt.used_at is not null then
    -- A rotated token came back: it leaked. End the whole session (every token of the family).
    update crm_private.sessions set revoked_at = now(), revoked_reason = 'refresh_token_reuse' where id = s.id;
    return crm_private.auth_error('INVALID_TOKEN', 'This refresh token was already used; the session has been ended.', 'refreshToken');
  end if;
  if rt.expires_at <= now() or s.expires_at <= now() then
    return crm_private.auth_error('INVALID_TOKEN', 'The refresh token has expired; sign in again.', 'refreshToken');
  end if;
  if not exists (select 1 from crm.users where id = s.user_id and is_active and deleted_at is null) then
    return crm_private.auth_error('ACCOUNT_DISABLED', 'This account is disabled.');
  end if;
  if s.organization_id is not null and not exists (
    select 1 from crm.organization_memberships where organization_id = s.organization_id and user_id = s.user_id and is_active
  ) then
    return crm_private.auth_error('MEMBERSHIP_DISABLED', 'Your membership of this organization is disabled.');
  end if;
  update crm_private.refresh_tokens set used_at = now() where token_hash = rt.token_hash;
  token := crm_private.new_token();
  insert into crm_private.refresh_tokens (token_hash, session_id, expires_at)
  values (crm_private.token_hash(token), s.id, now() + ttl);
  update crm_private.sessions set last_refreshed_at = now(), expires_at = now() + ttl where id = s.id;
  return crm_private.session_json(s.id, token);
end
$$;

create or replace function crm.logout() returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  update crm_private.sessions set revoked_at = now(), revoked_reason = 'logout'
   where id = crm.current_session_id() and user_id = crm.current_user_id() and revoked_at is null;
  return jsonb_build_object('success', true);
end
$$;

create or replace function crm.logout_all() returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  update crm_private.sessions set revoked_at = now(), revoked_reason = 'logout_all'
   where user_id = crm.current_user_id() and revoked_at is null;
  get diagnostics n = row_count;
  return jsonb_build_object('success', true, 'sessions_ended', n);
end
$$;

create or replace function crm.switch_organization(organization text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  chosen jsonb;
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  if nullif(btrim(organization), '') is null then
    perform crm_private.raise('CRVAL', 'Name the organization to switch to.', 'organization');
  end if;
  chosen := crm_private.choose_organization(crm.current_user_id(), organization);
  if chosen ? 'error' then
    perform crm_private.raise(case chosen->'error'->>'code' when 'MEMBERSHIP_DISABLED' then 'CRMDS' else 'CRFBD' end,
                              chosen->'error'->>'message', 'organization');
  end if;
  return crm_private.start_session(crm.current_user_id(), (chosen->>'organization_id')::uuid);
end
$$;

-- Registration and email confirmation ---------------------------------------------------------------
create or replace function crm_private.slugify(name text) returns text
  language sql immutable
  set search_path = pg_catalog, pg_temp
as $$
  select coalesce(nullif(left(trim(both '-' from regexp_replace(lower(name), '[^a-z0-9]+', '-', 'g')), 48), ''), 'org')
$$;

-- Creates an organization (default roles come from its insert trigger) with `uid` as Administrator.
create or replace function crm_private.create_organization(uid uuid, org_name text, wanted_slug text default null) returns uuid
  language plpgsql
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  base text := coalesce(nullif(lower(btrim(wanted_slug)), ''), crm_private.slugify(org_name));
  candidate text := base;
  org uuid;
  admin_role uuid;
begin
  if length(btrim(coalesce(org_name, ''))) = 0 then
    perform crm_private.raise('CRVAL', 'The organization needs a name.', 'organizationName');
  end if;
  for attempt in 1..20 loop
    begin
      insert into crm.organizations (name, slug) values (btrim(org_name), candidate) returning id into org;
      exit;
    exception when unique_violation then
      if wanted_slug is not null then
        perform crm_private.raise('CRCNF', 'That organization slug is taken.', 'slug');
      end if;
      candidate := left(base, 40) || '-' || substr(md5(random()::text), 1, 6);
    end;
  end loop;
  select id into admin_role from crm.roles where organization_id = org and name = 'Administrator' and is_system;
  insert into crm.organization_memberships (organization_id, user_id, role_id) values (org, uid, admin_role);
  return org;
end
$$;

create or replace function crm_private.queue_email(template text, to_address text, data jsonb) returns void
  language sql
  set search_path = pg_catalog, pg_temp
as $$
  select crm_private.add_job('email:send', jsonb_build_object('template', template, 'to', to_address, 'data', data))
$$;

create or replace function crm_private.issue_email_confirmation(uid uuid) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  token text := crm_private.new_token();
  u crm.users;
begin
  select * into u from crm.users where id = uid;
  if u.email is null then
    return;
  end if;
  update crm_private.one_time_tokens set used_at = now() where user_id = uid and kind = 'confirm_email' and used_at is null;
  insert into crm_private.one_time_tokens (token_hash, kind, user_id, expires_at)
  values (crm_private.token_hash(token), 'confirm_email', uid, now() + interval '48 hours');
  perform crm_private.queue_email('confirm_email', u.email::text, jsonb_build_object('token', token, 'username', u.username, 'full_name', u.full_name));
end
$$;

create or replace function crm.register(
  username text, email text, password text, full_name text default '', organization_name text default null
) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  uid uuid;
  org uuid;
begin
  if username is null or username !~ '^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$' then
    perform crm_private.raise('CRVAL', 'Usernames have 3 to 64 letters, digits, dots, dashes or underscores.', 'username');
  end if;
  if email is null or email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' then
    perform crm_private.raise('CRVAL', 'Enter a valid email address.', 'email');
  end if;
  if exists (select 1 from crm.users u where u.username = register.username::citext) then
    perform crm_private.raise('CRCNF', 'That username is taken.', 'username');
  end if;
  if exists (select 1 from crm.users u where u.email = register.email::citext) then
    perform crm_private.raise('CRCNF', 'An account with that email address already exists.', 'email');
  end if;
  perform crm_private.check_password(password, username, email);
  insert into crm.users (username, email, full_name) values (username, email, coalesce(btrim(full_name), ''))
  returning id into uid;
  insert into crm_private.user_secrets (user_id, password_hash) values (uid, crm_private.hash_password(password));
  if nullif(btrim(organization_name), '') is not null then
    org := crm_private.create_organization(uid, organization_name);
  end if;
  perform crm_private.issue_email_confirmation(uid);
  if crm_private.setting('auth.require_email_confirmation', 'false')::boolean then
    return jsonb_build_object('user_id', uid, 'organization_id', org, 'email_confirmation_required', true);
  end if;
  return crm_private.start_session(uid, org)
    || jsonb_build_object('user_id', uid, 'organization_id', org, 'email_confirmation_required', false);
end
$$;

create or replace function crm.confirm_email(token text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  t crm_private.one_time_tokens;
begin
  select * into t from crm_private.one_time_tokens
   where token_hash = crm_private.token_hash(token) and kind = 'confirm_email' for update;
  if t.token_hash is null or t.used_at is not null or t.expires_at <= now() then
    perform crm_private.raise('CRTOK', 'This confirmation link is invalid or has expired.', 'token');
  end if;
  update crm_private.one_time_tokens set used_at = now() where token_hash = t.token_hash;
  update crm.users set email_confirmed_at = coalesce(email_confirmed_at, now()) where id = t.user_id;
  return jsonb_build_object('success', true);
end
$$;

create or replace function crm.resend_email_confirmation() returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  if exists (select 1 from crm.users where id = crm.current_user_id() and email_confirmed_at is null) then
    perform crm_private.issue_email_confirmation(crm.current_user_id());
  end if;
  return jsonb_build_object('success', true);
end
$$;

-- Passwords -----------------------------------------------------------------------------------------
-- Always answers the same, whether or not the address belongs to an account.
create or replace function crm.request_password_reset(email text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  u crm.users;
  token text := crm_private.new_token();
begin
  select * into u from crm.users where crm.users.email = request_password_reset.email::citext
     and is_active and deleted_at is null;
  if u.id is not null then
    update crm_private.one_time_tokens set used_at = now() where user_id = u.id and kind = 'password_reset' and used_at is null;
    insert into crm_private.one_time_tokens (token_hash, kind, user_id, expires_at)
    values (crm_private.token_hash(token), 'password_reset', u.id, now() + interval '1 hour');
    perform crm_private.queue_email('password_reset', u.email::text, jsonb_build_object('token', token, 'username', u.username));
  end if;
  return jsonb_build_object('success', true);
end
$$;

create or replace function crm.reset_password(token text, new_password text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  t crm_private.one_time_tokens;
  u crm.users;
begin
  select * into t from crm_private.one_time_tokens
   where token_hash = crm_private.token_hash(token) and kind = 'password_reset' for update;
  if t.token_hash is null or t.used_at is not null or t.expires_at <= now() then
    perform crm_private.raise('CRTOK', 'This password reset link is invalid or has expired.', 'token');
  end if;
  select * into u from crm.users where id = t.user_id;
  perform crm_private.check_password(new_password, u.username, u.email);
  update crm_private.one_time_tokens set used_at = now() where token_hash = t.token_hash;
  update crm_private.user_secrets set password_hash = crm_private.hash_password(new_password), password_changed_at = now()
   where user_id = u.id;
  -- Whoever had the old password loses every session; the reset link proved the mailbox, too.
  update crm_private.sessions set revoked_at = now(), revoked_reason = 'password_reset'
   where user_id = u.id and revoked_at is null;
  update crm.users set email_confirmed_at = coalesce(email_confirmed_at, now()) where id = u.id;
  delete from crm_private.login_throttle where key = 'user:' || u.id;
  return jsonb_build_object('success', true);
end
$$;

create or replace function crm.change_password(current_password text, new_password text) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  u crm.users;
  stored text;
begin
  select * into u from crm.users where id = crm.current_user_id();
  if u.id is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  select password_hash into stored from crm_private.user_secrets where user_id = u.id;
  if stored is null or crypt(coalesce(current_password, ''), stored) <> stored then
    perform crm_private.raise('CRCRD', 'The current password is wrong.', 'currentPassword');
  end if;
  perform crm_private.check_password(new_password, u.username, u.email);
  update crm_private.user_secrets set password_hash = crm_private.hash_password(new_password), password_changed_at = now()
   where user_id = u.id;
  -- Other sessions end; this one goes on.
  update crm_private.sessions set revoked_at = now(), revoked_reason = 'password_changed'
   where user_id = u.id and revoked_at is null and id is distinct from crm.current_session_id();
  return jsonb_build_object('success', true);
end
$$;

-- Organizations -------------------------------------------------------------------------------------
create or replace function crm.create_organization(name text, slug text default null) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org uuid;
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  if slug is not null and slug !~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$' then
    perform crm_private.raise('CRVAL', 'Slugs have lowercase letters, digits and dashes.', 'slug');
  end if;
  org := crm_private.create_organization(crm.current_user_id(), name, slug);
  return crm_private.start_session(crm.current_user_id(), org) || jsonb_build_object('organization_id', org);
end
$$;

-- Invitations ---------------------------------------------------------------------------------------
create or replace function crm.accept_invitation(
  token text, username text default null, password text default null, full_name text default ''
) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  t crm_private.one_time_tokens;
  inv crm.invitations;
  uid uuid := crm.current_user_id();
begin
  select * into t from crm_private.one_time_tokens
   where token_hash = crm_private.token_hash(token) and kind = 'invitation' for update;
  select * into inv from crm.invitations where id = t.invitation_id;
  if t.token_hash is null or t.used_at is not null or t.expires_at <= now() or inv.revoked_at is not null or inv.accepted_at is not null then
    perform crm_private.raise('CRTOK', 'This invitation is invalid, used or expired.', 'token');
  end if;
  if uid is null then
    -- A newcomer: the invitation proves the mailbox, so the account starts confirmed.
    if exists (select 1 from crm.users u where u.email = inv.email) then
      perform crm_private.raise('CRCNF', 'An account with this email address exists; sign in and accept the invitation.', 'email');
    end if;
    if accept_invitation.username is null or accept_invitation.username !~ '^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$' then
      perform crm_private.raise('CRVAL', 'Choose a username of 3 to 64 letters, digits, dots, dashes or underscores.', 'username');
    end if;
    if exists (select 1 from crm.users u where u.username = accept_invitation.username::citext) then
      perform crm_private.raise('CRCNF', 'That username is taken.', 'username');
    end if;
    perform crm_private.check_password(password, accept_invitation.username, inv.email);
    insert into crm.users (username, email, full_name, email_confirmed_at)
    values (accept_invitation.username, inv.email, coalesce(btrim(full_name), ''), now())
    returning id into uid;
    insert into crm_private.user_secrets (user_id, password_hash) values (uid, crm_private.hash_password(password));
  elsif not exists (select 1 from crm.users u where u.id = uid and u.email = inv.email) then
    perform crm_private.raise('CRFBD', 'This invitation was sent to another email address.', 'token');
  end if;
  if exists (select 1 from crm.organization_memberships where organization_id = inv.organization_id and user_id = uid) then
    perform crm_private.raise('CRCNF', 'You are already a member of this organization.');
  end if;
  insert into crm.organization_memberships (organization_id, user_id, role_id, invited_by)
  values (inv.organization_id, uid, inv.role_id, inv.invited_by);
  update crm_private.one_time_tokens set used_at = now() where token_hash = t.token_hash;
  update crm.invitations set accepted_at = now(), accepted_by = uid where id = inv.id;
  return crm_private.start_session(uid, inv.organization_id);
end
$$;

-- Used by the server on every authenticated request: the principal behind a token, or nothing when
-- the session was revoked or expired, or the user or membership was deactivated.
create or replace function crm_private.session_principal(sid uuid, uid uuid, org uuid)
  returns table (user_id uuid, organization_id uuid)
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select s.user_id, s.organization_id
    from crm_private.sessions s
    join crm.users u on u.id = s.user_id and u.is_active and u.deleted_at is null
   where s.id = sid and s.user_id = uid and s.revoked_at is null and s.expires_at > now()
     and s.organization_id is not distinct from org
     and (s.organization_id is null or exists (
           select 1 from crm.organization_memberships m
            where m.organization_id = s.organization_id and m.user_id = s.user_id and m.is_active))
$$;

-- External issuer (seed 001): provision the principal on first use; the issuer's role claim,
-- mapped to a role name by the server's configuration, decides the member's role.
create or replace function crm_private.external_principal(
  issuer text, subject text, email text, role_name text, organization text
) returns table (user_id uuid, organization_id uuid)
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org crm.organizations;
  uid uuid;
  rid uuid;
  m crm.organization_memberships;
  clean_email citext := case when email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' then email::citext end;
begin
  select o.* into org from crm.organizations o
   where (organization ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' and o.id = organization::uuid)
      or o.slug = organization::citext
   limit 1;
  if org.id is null or subject is null or length(subject) > 200 then
    return;
  end if;
  select r.id into rid from crm.roles r where r.organization_id = org.id and r.name = role_name::citext;
  if rid is null then
    return;
  end if;
  select ei.user_id into uid from crm_private.external_identities ei where ei.issuer = external_principal.issuer and ei.subject = external_principal.subject;
  if uid is null then
    insert into crm.users (username, email, full_name, email_confirmed_at)
    values (
      'ext-' || left(encode(digest(external_principal.issuer || ':' || external_principal.subject, 'sha256'), 'hex'), 20),
      case when not exists (select 1 from crm.users x where x.email = clean_email) then clean_email end,
      coalesce(split_part(clean_email::text, '@', 1), ''),
      now())
    on conflict (username) do nothing
    returning id into uid;
    if uid is null then
      select u.id into uid from crm.users u
       where u.username = 'ext-' || left(encode(digest(external_principal.issuer || ':' || external_principal.subject, 'sha256'), 'hex'), 20);
    end if;
    insert into crm_private.external_identities (issuer, subject, user_id) values (external_principal.issuer, external_principal.subject, uid)
    on conflict do nothing;
  end if;
  if not exists (select 1 from crm.users u where u.id = uid and u.is_active and u.deleted_at is null) then
    return;
  end if;
  select * into m from crm.organization_memberships om where om.organization_id = org.id and om.user_id = uid;
  if m.id is null then
    insert into crm.organization_memberships (organization_id, user_id, role_id) values (org.id, uid, rid)
    on conflict on constraint organization_memberships_user_unique do nothing;
  elsif not m.is_active then
    return;
  elsif m.role_id <> rid then
    update crm.organization_memberships set role_id = rid where id = m.id;
  end if;
  user_id := uid;
  organization_id := org.id;
  return next;
end
$$;

grant usage on schema crm_private to crm_authenticator;
grant execute on function crm_private.session_principal(uuid, uuid, uuid) to crm_authenticator;
grant execute on function crm_private.external_principal(text, text, text, text, text) to crm_authenticator;

-- ================================================================================================
-- Access administration (exposed as GraphQL mutations). Each checks its permission explicitly.
-- ================================================================================================
-- Assigning a role hands out its codes: the assigner must hold every one of them.
create or replace function crm_private.assert_may_assign_role(rid uuid) returns void
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  missing text;
begin
  if not exists (select 1 from crm.roles where id = rid and organization_id = crm.current_org_id()) then
    perform crm_private.raise('CRNFD', 'No such role in this organization.', 'roleId');
  end if;
  select string_agg(rp.permission_code, ', ' order by rp.permission_code) into missing
    from crm.role_permissions rp
   where rp.role_id = rid and not (rp.permission_code = any (crm.current_permissions()));
  if missing is not null then
    perform crm_private.raise('CRFBD', format('You cannot assign a role with permissions you do not hold: %s.', missing), 'roleId');
  end if;
end
$$;

create or replace function crm.grant_permission(role_id uuid, permission_code text) returns crm.roles
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.roles;
begin
  perform crm_private.require_permission('roles:manage');
  select * into r from crm.roles where id = grant_permission.role_id and organization_id = crm.current_org_id();
  if r.id is null then
    perform crm_private.raise('CRNFD', 'No such role in this organization.', 'roleId');
  end if;
  if not exists (select 1 from crm.permissions p where p.code = grant_permission.permission_code) then
    perform crm_private.raise('CRVAL', 'Unknown permission code.', 'permissionCode');
  end if;
  if not crm.has_permission(grant_permission.permission_code) then
    perform crm_private.raise('CRFBD', format('You cannot grant %s: you do not hold it yourself.', grant_permission.permission_code), 'permissionCode');
  end if;
  insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
  values (r.organization_id, r.id, grant_permission.permission_code, crm.current_user_id())
  on conflict do nothing;
  return r;
end
$$;

create or replace function crm.revoke_permission(role_id uuid, permission_code text) returns crm.roles
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  r crm.roles;
begin
  perform crm_private.require_permission('roles:manage');
  select * into r from crm.roles where id = revoke_permission.role_id and organization_id = crm.current_org_id();
  if r.id is null then
    perform crm_private.raise('CRNFD', 'No such role in this organization.', 'roleId');
  end if;
  delete from crm.role_permissions rp where rp.role_id = r.id and rp.permission_code = revoke_permission.permission_code;
  return r;
end
$$;

create or replace function crm.add_member(login text, role_id uuid) returns crm.organization_memberships
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  uid uuid;
  m crm.organization_memberships;
begin
  perform crm_private.require_permission('users:create');
  perform crm_private.assert_may_assign_role(add_member.role_id);
  select id into uid from crm.users where (username = login::citext or email = login::citext) and deleted_at is null;
  if uid is null then
    perform crm_private.raise('CRNFD', 'No user with that username or email; invite them by email instead.', 'login');
  end if;
  if exists (select 1 from crm.organization_memberships om where om.organization_id = crm.current_org_id() and om.user_id = uid) then
    perform crm_private.raise('CRCNF', 'That user is already a member.', 'login');
  end if;
  insert into crm.organization_memberships (organization_id, user_id, role_id, invited_by)
  values (crm.current_org_id(), uid, add_member.role_id, crm.current_user_id())
  returning * into m;
  return m;
end
$$;

create or replace function crm.invite_member(email text, role_id uuid) returns crm.invitations
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  inv crm.invitations;
  token text := crm_private.new_token();
begin
  perform crm_private.require_permission('users:create');
  perform crm_private.assert_may_assign_role(invite_member.role_id);
  if email is null or email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' then
    perform crm_private.raise('CRVAL', 'Enter a valid email address.', 'email');
  end if;
  if exists (select 1 from crm.organization_memberships m join crm.users u on u.id = m.user_id
              where m.organization_id = crm.current_org_id() and u.email = invite_member.email::citext) then
    perform crm_private.raise('CRCNF', 'Someone with that email address is already a member.', 'email');
  end if;
  -- A new invitation replaces any open one for the same address.
  update crm.invitations i set revoked_at = now()
   where i.organization_id = crm.current_org_id() and i.email = invite_member.email::citext
     and i.accepted_at is null and i.revoked_at is null;
  insert into crm.invitations (organization_id, email, role_id, invited_by, expires_at)
  values (crm.current_org_id(), invite_member.email, invite_member.role_id, crm.current_user_id(), now() + interval '7 days')
  returning * into inv;
  insert into crm_private.one_time_tokens (token_hash, kind, invitation_id, expires_at)
  values (crm_private.token_hash(token), 'invitation', inv.id, inv.expires_at);
  perform crm_private.queue_email('invitation', inv.email::text, jsonb_build_object(
    'token', token,
    'organization', (select name from crm.organizations where id = inv.organization_id),
    'invited_by', (select full_name from crm.users where id = inv.invited_by)));
  return inv;
end
$$;

create or replace function crm.revoke_invitation(invitation_id uuid) returns crm.invitations
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  inv crm.invitations;
begin
  perform crm_private.require_permission('users:create');
  update crm.invitations set revoked_at = now()
   where id = invitation_id and organization_id = crm.current_org_id() and accepted_at is null and revoked_at is null
  returning * into inv;
  if inv.id is null then
    perform crm_private.raise('CRNFD', 'No open invitation with that id.', 'invitationId');
  end if;
  return inv;
end
$$;

create or replace function crm.change_member_role(membership_id uuid, role_id uuid) returns crm.organization_memberships
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.organization_memberships;
begin
  perform crm_private.require_permission('users:update');
  perform crm_private.assert_may_assign_role(change_member_role.role_id);
  update crm.organization_memberships om set role_id = change_member_role.role_id
   where om.id = membership_id and om.organization_id = crm.current_org_id()
  returning * into m;
  if m.id is null then
    perform crm_private.raise('CRNFD', 'No such member in this organization.', 'membershipId');
  end if;
  return m;
end
$$;

create or replace function crm.set_member_active(membership_id uuid, active boolean) returns crm.organization_memberships
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.organization_memberships;
begin
  perform crm_private.require_permission('users:update');
  update crm.organization_memberships om set is_active = active
   where om.id = membership_id and om.organization_id = crm.current_org_id()
  returning * into m;
  if m.id is null then
    perform crm_private.raise('CRNFD', 'No such member in this organization.', 'membershipId');
  end if;
  return m;
end
$$;

create or replace function crm.remove_member(membership_id uuid) returns crm.organization_memberships
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.organization_memberships;
begin
  perform crm_private.require_permission('users:delete');
  delete from crm.organization_memberships om
   where om.id = membership_id and om.organization_id = crm.current_org_id()
  returning * into m;
  if m.id is null then
    perform crm_private.raise('CRNFD', 'No such member in this organization.', 'membershipId');
  end if;
  return m;
end
$$;

-- Deactivating a user account (global) is for administrators of an organization the user belongs
-- to, with users:update; it ends the user's sessions everywhere.
create or replace function crm.set_user_active(user_id uuid, active boolean) returns crm.users
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  u crm.users;
begin
  perform crm_private.require_permission('users:update');
  if not (set_user_active.user_id = any (crm.current_org_member_ids())) then
    perform crm_private.raise('CRNFD', 'No such member in this organization.', 'userId');
  end if;
  update crm.users set is_active = active where id = set_user_active.user_id returning * into u;
  if not active then
    update crm_private.sessions set revoked_at = now(), revoked_reason = 'user_deactivated'
     where crm_private.sessions.user_id = u.id and revoked_at is null;
  end if;
  return u;
end
$$;

-- The caller ------------------------------------------------------------------------------------------
create or replace function crm.current_user_profile() returns crm.users
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select * from crm.users where id = crm.current_user_id()
$$;
comment on function crm.current_user_profile() is E'@name currentUser\nThe signed-in user.';

create or replace function crm.current_organization() returns crm.organizations
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select * from crm.organizations where id = crm.current_org_id()
$$;
comment on function crm.current_organization() is 'The organization of this request.';

create or replace function crm.current_membership() returns crm.organization_memberships
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select * from crm.organization_memberships where user_id = crm.current_user_id() and organization_id = crm.current_org_id()
$$;
comment on function crm.current_membership() is 'The caller''s membership (and so role) in the current organization.';

-- Computed columns for the admin screens.
create or replace function crm.roles_permission_count(r crm.roles) returns int
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select count(*)::int from crm.role_permissions rp where rp.role_id = r.id
$$;
create or replace function crm.roles_member_count(r crm.roles) returns int
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select count(*)::int from crm.organization_memberships m where m.role_id = r.id
$$;

-- Auth entry points are wired by the server, not generated.
do $$
declare
  f text;
begin
  foreach f in array array[
    'crm.login(text, text, text)', 'crm.refresh_session(text)', 'crm.logout()', 'crm.logout_all()',
    'crm.switch_organization(text)', 'crm.register(text, text, text, text, text)', 'crm.confirm_email(text)',
    'crm.resend_email_confirmation()', 'crm.request_password_reset(text)', 'crm.reset_password(text, text)',
    'crm.change_password(text, text)', 'crm.create_organization(text, text)',
    'crm.accept_invitation(text, text, text, text)'
  ] loop
    execute format('comment on function %s is %L', f, '@behavior -queryField -mutationField');
  end loop;
end
$$;

grant execute on function
  crm.login(text, text, text), crm.refresh_session(text), crm.register(text, text, text, text, text),
  crm.confirm_email(text), crm.request_password_reset(text), crm.reset_password(text, text),
  crm.accept_invitation(text, text, text, text)
  to crm_anonymous, crm_user;
grant execute on function
  crm.logout(), crm.logout_all(), crm.switch_organization(text), crm.resend_email_confirmation(),
  crm.change_password(text, text), crm.create_organization(text, text),
  crm.grant_permission(uuid, text), crm.revoke_permission(uuid, text), crm.add_member(text, uuid),
  crm.invite_member(text, uuid), crm.revoke_invitation(uuid), crm.change_member_role(uuid, uuid),
  crm.set_member_active(uuid, boolean), crm.remove_member(uuid), crm.set_user_active(uuid, boolean),
  crm.current_user_profile(), crm.current_organization(), crm.current_membership(),
  crm.roles_permission_count(crm.roles), crm.roles_member_count(crm.roles)
  to crm_user;

-- Housekeeping: expired sessions and used or expired single-use tokens.
create or replace function crm_private.prune(retention interval default interval '30 days')
  returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  failed_jobs bigint;
  sessions bigint;
  tokens bigint;
  throttles bigint;
begin
  delete from graphile_worker._private_jobs j
   where j.attempts >= j.max_attempts and j.locked_at is null and j.updated_at < now() - retention;
  get diagnostics failed_jobs = row_count;
  delete from crm_private.sessions where expires_at < now() - retention or revoked_at < now() - retention;
  get diagnostics sessions = row_count;
  delete from crm_private.one_time_tokens where expires_at < now() - retention or used_at < now() - retention;
  get diagnostics tokens = row_count;
  delete from crm_private.login_throttle where coalesce(locked_until, window_started_at) < now() - interval '1 day';
  get diagnostics throttles = row_count;
  return jsonb_build_object('failed_jobs', failed_jobs, 'sessions', sessions, 'one_time_tokens', tokens, 'login_throttle', throttles);
end
$$;

-- Demo tenant (development only; the server calls it on the embedded database, never in production).
-- accounts: [{"username", "email", "full_name", "password", "role"}]
create or replace function crm_private.create_demo_tenant(org_name text, org_slug text, accounts jsonb) returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org uuid;
  a jsonb;
  uid uuid;
begin
  select id into org from crm.organizations where slug = org_slug::citext;
  if org is not null then
    return org;
  end if;
  insert into crm.organizations (name, slug) values (org_name, org_slug) returning id into org;
  for a in select * from jsonb_array_elements(accounts) loop
    insert into crm.users (username, email, full_name, email_confirmed_at)
    values (a->>'username', a->>'email', a->>'full_name', now())
    on conflict (username) do update set email_confirmed_at = coalesce(crm.users.email_confirmed_at, now())
    returning id into uid;
    insert into crm_private.user_secrets (user_id, password_hash)
    values (uid, crm_private.hash_password(a->>'password'))
    on conflict (user_id) do update set password_hash = excluded.password_hash, password_changed_at = now();
    insert into crm.organization_memberships (organization_id, user_id, role_id)
    select org, uid, r.id from crm.roles r where r.organization_id = org and r.name = (a->>'role')::citext
    on conflict on constraint organization_memberships_user_unique do nothing;
  end loop;
  return org;
end
$$;
