-- Organizations named by id or slug (login, switchOrganization, the external issuer's `org` claim).
-- The old lookup put `wanted ~* <uuid pattern> and o.id = wanted::uuid` in one WHERE clause and
-- relied on AND being evaluated left to right; PostgreSQL does not guarantee that order and folds the
-- cast first, so every slug failed with "invalid input syntax for type uuid". The branch is now
-- decided before any cast.
create or replace function crm_private.organization_by_key(key text) returns crm.organizations
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org crm.organizations;
begin
  if key is null then
    return null;
  elsif btrim(key) ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    select o.* into org from crm.organizations o where o.id = btrim(key)::uuid;
  else
    select o.* into org from crm.organizations o where o.slug = btrim(key)::citext;
  end if;
  return org;
end
$$;

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
    org := crm_private.organization_by_key(wanted);
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
  org := crm_private.organization_by_key(organization);
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
