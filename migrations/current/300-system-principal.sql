-- The system principal: who background jobs act as inside an organization.
--
-- Every organization has one system user (crm.users row, id = crm.system_principal_id(org), named
-- "System") with an active membership holding the organization's internal "System" role. Tenant jobs
-- run as crm_user with that organization's claims and this user as `jwt.claims.sub`, so row-level
-- security applies to them exactly as to a person, and the audit log names a real actor.
--   * It belongs to its own organization only: it cannot be added to another one, so even a job
--     started with the wrong organization claim sees nothing (has_permission finds no membership).
--   * It cannot sign in: no password, no e-mail, and sessions and passwords are refused for it.
--   * Nobody acting as a principal (a person or a job) can change it: the user row, its membership,
--     the System role and that role's grants are guarded; only migrations (no principal) may.
--   * It is not a member people choose: the membership and the role are hidden from the member,
--     role and grant lists, the role cannot be given to anyone, it cannot join teams, and it cannot
--     be the owner or assignee of customers, deals, projects and tasks. The users list shows it
--     (audit entries name it) with isSystem = true.
--   * The System role holds every permission code except those that change who may do what
--     (crm_private.system_role_excludes); codes registered later are granted to it automatically.

-- Columns --------------------------------------------------------------------------------------
alter table crm.users add column if not exists system_organization_id uuid
  references crm.organizations (id) on delete cascade;
create unique index if not exists users_system_organization_id_key on crm.users (system_organization_id);
comment on column crm.users.system_organization_id is E'@behavior -*\nSet on the system principal of an organization (never on a person).';
comment on constraint users_system_organization_id_fkey on crm.users is E'@behavior -*';

alter table crm.roles add column if not exists is_internal boolean not null default false;
create index if not exists roles_organization_id_is_internal_idx on crm.roles (organization_id, is_internal);
comment on column crm.roles.is_internal is E'@behavior -*\nThe role of the organization''s system principal: never listed, never assignable.';

-- Identity -------------------------------------------------------------------------------------
-- Derived from the organization id so that check constraints and policies can name it without a
-- lookup. Never change this expression: constraints depend on it.
create or replace function crm.system_principal_id(organization_id uuid) returns uuid
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select md5('cairn:system-principal:' || organization_id::text)::uuid
$$;
comment on function crm.system_principal_id(uuid) is E'@behavior -queryField -mutationField\nThe user id of an organization''s system principal.';
grant execute on function crm.system_principal_id(uuid) to crm_user;

create or replace function crm.users_is_system(u crm.users) returns boolean
  language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select u.system_organization_id is not null
$$;
comment on function crm.users_is_system(crm.users) is 'The automation principal of the organization (background jobs act as it); it cannot sign in or be changed.';
grant execute on function crm.users_is_system(crm.users) to crm_user;

create or replace function crm_private.is_system_user(uid uuid) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from crm.users u where u.id = uid and u.system_organization_id is not null)
$$;

create or replace function crm_private.is_internal_role(rid uuid) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from crm.roles r where r.id = rid and r.is_internal)
$$;

-- Codes the System role never holds: jobs do not manage access.
create or replace function crm_private.system_role_excludes(code text) returns boolean
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select code in ('roles:manage', 'permissions:manage', 'users:create', 'users:update', 'users:delete', 'teams:manage')
$$;

-- Creates (or completes) the system principal of an organization; returns its user id. Idempotent.
create or replace function crm_private.provision_system_principal(org uuid) returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  uid uuid := crm.system_principal_id(org);
  rid uuid;
begin
  select r.id into rid from crm.roles r where r.organization_id = org and r.is_internal;
  if rid is null then
    insert into crm.roles (organization_id, name, description, is_system, is_internal)
    values (org,
            case when exists (select 1 from crm.roles r where r.organization_id = org and r.name = 'System') then 'System principal' else 'System' end,
            'Background jobs of the organization act with this role. It cannot be assigned, changed or deleted.',
            true, true)
    returning id into rid;
  end if;
  insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
  select org, rid, p.code, null from crm.permissions p where not crm_private.system_role_excludes(p.code)
  on conflict do nothing;
  insert into crm.users (id, username, full_name, system_organization_id)
  values (uid, 'system.' || replace(org::text, '-', ''), 'System', org)
  on conflict (id) do nothing;
  insert into crm.organization_memberships (organization_id, user_id, role_id)
  values (org, uid, rid)
  on conflict on constraint organization_memberships_user_unique do nothing;
  return uid;
end
$$;

-- The system principal of an organization, provisioned if missing; null when the organization does
-- not exist. What the job runner calls before it opens a tenant job's transaction.
create or replace function crm_private.system_principal_for(org uuid) returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from crm.organizations where id = org) then
    return null;
  end if;
  if exists (select 1 from crm.organization_memberships m
              where m.organization_id = org and m.user_id = crm.system_principal_id(org) and m.is_active) then
    return crm.system_principal_id(org);
  end if;
  return crm_private.provision_system_principal(org);
end
$$;

create or replace function crm_private.tg_provision_system_principal() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm_private.provision_system_principal(new.id);
  return null;
end
$$;
-- After _500_seed (the default roles).
drop trigger if exists _510_system_principal on crm.organizations;
create trigger _510_system_principal after insert on crm.organizations
  for each row execute function crm_private.tg_provision_system_principal();

-- New permission codes go to every System role (unless excluded).
create or replace function crm_private.tg_grant_code_to_system_roles() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm_private.system_role_excludes(new.code) then
    insert into crm.role_permissions (organization_id, role_id, permission_code, granted_by)
    select r.organization_id, r.id, new.code, null from crm.roles r where r.is_internal
    on conflict do nothing;
  end if;
  return null;
end
$$;
drop trigger if exists _510_system_roles on crm.permissions;
create trigger _510_system_roles after insert on crm.permissions
  for each row execute function crm_private.tg_grant_code_to_system_roles();

-- Guard rails ------------------------------------------------------------------------------------
-- Migrations run without a principal (crm.current_user_id() is null); requests and jobs have one.

-- The system user row: no principal may change or delete it.
create or replace function crm_private.tg_system_user_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if old.system_organization_id is not null and crm.current_user_id() is not null then
    raise exception 'The system principal cannot be changed.' using errcode = 'CRFBD', column = 'user_id';
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
drop trigger if exists _050_system_principal on crm.users;
create trigger _050_system_principal before update or delete on crm.users
  for each row execute function crm_private.tg_system_user_guard();

-- Memberships: the system user belongs to its own organization with the System role, and only it
-- holds that role; its membership is not changed or removed while the organization exists.
create or replace function crm_private.tg_system_membership_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op in ('UPDATE', 'DELETE') and crm_private.is_system_user(old.user_id)
     and crm.current_user_id() is not null
     and exists (select 1 from crm.organizations o where o.id = old.organization_id) then
    raise exception 'The system principal''s membership cannot be changed.' using errcode = 'CRFBD', column = 'membership_id';
  end if;
  if tg_op = 'DELETE' then
    return old;
  end if;
  if crm_private.is_system_user(new.user_id) then
    if new.user_id <> crm.system_principal_id(new.organization_id) or not crm_private.is_internal_role(new.role_id) then
      raise exception 'The system principal belongs to its own organization only.' using errcode = 'CRFBD', column = 'user_id';
    end if;
  elsif crm_private.is_internal_role(new.role_id) then
    raise exception 'The System role belongs to the organization''s system principal; choose another role.'
      using errcode = 'CRVAL', column = 'role_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.organization_memberships;
create trigger _050_system_principal before insert or update or delete on crm.organization_memberships
  for each row execute function crm_private.tg_system_membership_guard();

-- The System role: not renamed, edited or deleted by a principal.
create or replace function crm_private.tg_system_role_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if old.is_internal and crm.current_user_id() is not null
     and exists (select 1 from crm.organizations o where o.id = old.organization_id) then
    raise exception 'The System role cannot be changed or deleted.' using errcode = 'CRFBD', column = 'role_id';
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
drop trigger if exists _050_system_principal on crm.roles;
create trigger _050_system_principal before update or delete on crm.roles
  for each row execute function crm_private.tg_system_role_guard();

-- The System role's grants follow the rule above: nothing excluded is added, nothing is revoked.
create or replace function crm_private.tg_system_role_grants_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' then
    if crm_private.system_role_excludes(new.permission_code) and crm_private.is_internal_role(new.role_id) then
      raise exception 'The System role cannot be granted %.', new.permission_code using errcode = 'CRFBD', column = 'permission_code';
    end if;
    return new;
  end if;
  if crm_private.is_internal_role(old.role_id) and crm.current_user_id() is not null then
    raise exception 'The System role''s permissions cannot be revoked.' using errcode = 'CRFBD', column = 'permission_code';
  end if;
  return old;
end
$$;
drop trigger if exists _050_system_principal on crm.role_permissions;
create trigger _050_system_principal before insert or delete on crm.role_permissions
  for each row execute function crm_private.tg_system_role_grants_guard();

-- Not in teams, not invited with the System role.
create or replace function crm_private.tg_system_team_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_system_user(new.user_id) then
    raise exception 'The system principal cannot be a team member.' using errcode = 'CRVAL', column = 'user_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.team_members;
create trigger _050_system_principal before insert or update of user_id on crm.team_members
  for each row execute function crm_private.tg_system_team_guard();

create or replace function crm_private.tg_system_invitation_guard() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_internal_role(new.role_id) then
    raise exception 'The System role belongs to the organization''s system principal; choose another role.'
      using errcode = 'CRVAL', column = 'role_id';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm.invitations;
create trigger _050_system_principal before insert or update of role_id on crm.invitations
  for each row execute function crm_private.tg_system_invitation_guard();

-- It never signs in: no session, no password.
create or replace function crm_private.tg_system_no_login() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if crm_private.is_system_user(new.user_id) then
    raise exception 'The system principal cannot sign in.' using errcode = 'CRFBD';
  end if;
  return new;
end
$$;
drop trigger if exists _050_system_principal on crm_private.sessions;
create trigger _050_system_principal before insert on crm_private.sessions
  for each row execute function crm_private.tg_system_no_login();
drop trigger if exists _050_system_principal on crm_private.user_secrets;
create trigger _050_system_principal before insert or update on crm_private.user_secrets
  for each row execute function crm_private.tg_system_no_login();

-- Never an owner or assignee (records a job creates must name a person, or nobody).
do $$
declare
  c record;
begin
  for c in select * from (values
    ('crm.customers', 'customers_owner_id_valid', 'owner_id'),
    ('crm.deals', 'deals_owner_id_valid', 'owner_id'),
    ('crm.projects', 'projects_manager_id_valid', 'manager_id'),
    ('crm.tasks', 'tasks_assignee_id_valid', 'assignee_id')) as x(tbl, con, col)
  loop
    if not exists (select 1 from pg_constraint where conrelid = c.tbl::regclass and conname = c.con) then
      execute format('alter table %s add constraint %I check (%I is distinct from crm.system_principal_id(organization_id))',
                     c.tbl, c.con, c.col);
    end if;
  end loop;
end
$$;

-- Policies: hidden from the member, role and grant lists ---------------------------------------
drop policy if exists roles_select on crm.roles;
create policy roles_select on crm.roles for select
  using (organization_id = (select crm.current_org_id()) and not is_internal);

drop policy if exists role_permissions_select on crm.role_permissions;
create policy role_permissions_select on crm.role_permissions for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.roles r where r.id = role_permissions.role_id));

drop policy if exists memberships_select on crm.organization_memberships;
create policy memberships_select on crm.organization_memberships for select
  using (
    user_id = (select crm.current_user_id())
    or (organization_id = (select crm.current_org_id()) and (select crm.has_permission('users:read'))
        and user_id <> crm.system_principal_id(organization_id))
  );

-- Organizations created before this migration.
select crm_private.provision_system_principal(id) from crm.organizations;
