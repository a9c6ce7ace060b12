--! Previous: sha1:1625093956a42a345565a27cf3f0b9fec34a7fe7
--! Hash: sha1:76c7da731c5c58b5e9f59dfd5e92b844072a15df
--! Message: hardening: membership by consent, organization by slug or id, references within the caller's scope, rate-limit store

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 100-membership-consent.sql
-- Membership by consent, and tenant admins act on memberships only.
--
-- Users are global. Adding an existing account to an organization is an invitation that the person
-- accepts (or declines) after signing in; until then the inviting organization sees only the address
-- (e-mail or username) it typed, never the account's profile. Deactivating or removing a member
-- affects that organization's membership and that organization's sessions; account-wide state
-- (disabled) changes only through crm_private.set_account_active, which no request role reaches.

-- Invitations: addressed to an e-mail address, or to an existing account by its username -----------
alter table crm.invitations add column if not exists username citext;
alter table crm.invitations add column if not exists invitee_id uuid;
alter table crm.invitations add column if not exists declined_at timestamptz;
alter table crm.invitations alter column email drop not null;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'invitations_invitee_fkey' and conrelid = 'crm.invitations'::regclass) then
    alter table crm.invitations add constraint invitations_invitee_fkey
      foreign key (invitee_id) references crm.users (id) on delete cascade;
  end if;
  if not exists (select 1 from pg_constraint where conname = 'invitations_address_needed' and conrelid = 'crm.invitations'::regclass) then
    alter table crm.invitations add constraint invitations_address_needed check (email is not null or username is not null);
  end if;
end
$$;
create index if not exists invitations_invitee_id_idx on crm.invitations (invitee_id);
create index if not exists invitations_email_idx on crm.invitations (email);
comment on column crm.invitations.invitee_id is E'@behavior -*\nThe existing account the invitation is addressed to (never shown to the inviting organization).';
comment on constraint invitations_invitee_fkey on crm.invitations is E'@behavior -*';
comment on column crm.invitations.username is 'The username the invitation was addressed to (when invited by username rather than e-mail).';
comment on column crm.invitations.declined_at is 'Set when the invited person declined.';

-- An invitation is open until it is accepted, declined, revoked or expired.
create or replace function crm_private.invitation_is_open(inv crm.invitations) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select inv.id is not null and inv.accepted_at is null and inv.revoked_at is null and inv.declined_at is null and inv.expires_at > now()
$$;

-- Whether an invitation is addressed to the account `uid` (by account or by its e-mail address).
create or replace function crm_private.invitation_is_for(inv crm.invitations, uid uuid) returns boolean
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  -- Null-safe on purpose: an invitation without an invitee account must not compare as "unknown".
  select coalesce(inv.invitee_id = uid, false)
      or (inv.email is not null and uid is not null and exists (select 1 from crm.users u where u.id = uid and u.email = inv.email))
$$;

-- Creates the invitation row, its single-use token, and the e-mail (to `deliver_to`, which the
-- inviting organization does not see when it invited by username).
create or replace function crm_private.create_invitation(
  address_email citext, address_username citext, invitee uuid, rid uuid, deliver_to text
) returns crm.invitations
  language plpgsql
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  inv crm.invitations;
  token text := crm_private.new_token();
begin
  -- A new invitation replaces any open one for the same address or account.
  update crm.invitations i set revoked_at = now()
   where i.organization_id = crm.current_org_id()
     and i.accepted_at is null and i.revoked_at is null and i.declined_at is null
     and (i.email = address_email or i.username = address_username or i.invitee_id = invitee);
  insert into crm.invitations (organization_id, email, username, invitee_id, role_id, invited_by, expires_at)
  values (crm.current_org_id(), address_email, address_username, invitee, rid, crm.current_user_id(), now() + interval '7 days')
  returning * into inv;
  insert into crm_private.one_time_tokens (token_hash, kind, invitation_id, expires_at)
  values (crm_private.token_hash(token), 'invitation', inv.id, inv.expires_at);
  if deliver_to is not null then
    perform crm_private.queue_email('invitation', deliver_to, jsonb_build_object(
      'token', token,
      'organization', (select name from crm.organizations where id = inv.organization_id),
      'invited_by', (select full_name from crm.users where id = inv.invited_by)));
  end if;
  return inv;
end
$$;

create or replace function crm.invite_member(email text, role_id uuid) returns crm.invitations
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
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
  return crm_private.create_invitation(invite_member.email::citext, null,
    (select u.id from crm.users u where u.email = invite_member.email::citext and u.deleted_at is null),
    invite_member.role_id, invite_member.email);
end
$$;

-- Adding an existing account is an invitation the person accepts: by e-mail address (the same as
-- inviteMember) or by username (the organization sees the username it typed, never the account).
drop function if exists crm.add_member(text, uuid);
create function crm.add_member(login text, role_id uuid) returns crm.invitations
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  u crm.users;
begin
  perform crm_private.require_permission('users:create');
  perform crm_private.assert_may_assign_role(add_member.role_id);
  if nullif(btrim(login), '') is null then
    perform crm_private.raise('CRVAL', 'Give the username or e-mail address of the person to invite.', 'login');
  end if;
  if login ~ '@' then
    return crm.invite_member(btrim(login), add_member.role_id);
  end if;
  -- Organizations' system principals are nobody's to invite: they answer like an unknown name.
  select * into u from crm.users x
   where x.username = btrim(login)::citext and x.deleted_at is null and x.system_organization_id is null;
  if u.id is null then
    perform crm_private.raise('CRNFD', 'No user with that username; invite them by e-mail instead.', 'login');
  end if;
  if exists (select 1 from crm.organization_memberships om where om.organization_id = crm.current_org_id() and om.user_id = u.id) then
    perform crm_private.raise('CRCNF', 'That user is already a member.', 'login');
  end if;
  return crm_private.create_invitation(null, u.username, u.id, add_member.role_id, u.email::text);
end
$$;
comment on function crm.add_member(text, uuid) is
  'Invite an existing account by username or e-mail address; the person joins when they accept (acceptInvitation). Needs users:create.';

-- Accepting: with the e-mailed token (newcomers create their account here), or signed in, by the
-- invitation's id as listed in myInvitations.
drop function if exists crm.accept_invitation(text, text, text, text);
create or replace function crm.accept_invitation(
  token text default null, username text default null, password text default null, full_name text default '',
  invitation_id uuid default null
) returns jsonb
  language plpgsql volatile security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  t crm_private.one_time_tokens;
  inv crm.invitations;
  uid uuid := crm.current_user_id();
begin
  if accept_invitation.invitation_id is not null then
    if uid is null then
      perform crm_private.raise('CRUNA', 'Sign in first, or accept with the token from the invitation e-mail.');
    end if;
    select * into inv from crm.invitations i where i.id = accept_invitation.invitation_id for update;
    if not crm_private.invitation_is_open(inv) or not crm_private.invitation_is_for(inv, uid) then
      perform crm_private.raise('CRNFD', 'No open invitation for you with that id.', 'invitationId');
    end if;
  else
    select * into t from crm_private.one_time_tokens x
     where x.token_hash = crm_private.token_hash(accept_invitation.token) and x.kind = 'invitation' for update;
    select * into inv from crm.invitations i where i.id = t.invitation_id for update;
    if t.token_hash is null or t.used_at is not null or t.expires_at <= now() or not crm_private.invitation_is_open(inv) then
      perform crm_private.raise('CRTOK', 'This invitation is invalid, used or expired.', 'token');
    end if;
    if uid is null then
      -- A newcomer: the invitation proves the mailbox, so the account starts confirmed.
      if inv.email is null or inv.invitee_id is not null or exists (select 1 from crm.users u where u.email = inv.email) then
        perform crm_private.raise('CRCNF', 'An account with this address exists; sign in and accept the invitation.', 'email');
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
    elsif not crm_private.invitation_is_for(inv, uid) then
      perform crm_private.raise('CRFBD', 'This invitation was sent to someone else.', 'token');
    end if;
  end if;
  if exists (select 1 from crm.organization_memberships m where m.organization_id = inv.organization_id and m.user_id = uid) then
    perform crm_private.raise('CRCNF', 'You are already a member of this organization.');
  end if;
  insert into crm.organization_memberships (organization_id, user_id, role_id, invited_by)
  values (inv.organization_id, uid, inv.role_id, inv.invited_by);
  update crm_private.one_time_tokens x set used_at = now() where x.invitation_id = inv.id and x.used_at is null;
  update crm.invitations i set accepted_at = now(), accepted_by = uid where i.id = inv.id;
  return crm_private.start_session(uid, inv.organization_id);
end
$$;
comment on function crm.accept_invitation(text, text, text, text, uuid) is '@behavior -queryField -mutationField';
grant execute on function crm.accept_invitation(text, text, text, text, uuid) to crm_anonymous, crm_user;

create or replace function crm.decline_invitation(invitation_id uuid) returns boolean
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  inv crm.invitations;
begin
  if crm.current_user_id() is null then
    perform crm_private.raise('CRUNA', 'Sign in first.');
  end if;
  select * into inv from crm.invitations i where i.id = decline_invitation.invitation_id for update;
  if not crm_private.invitation_is_open(inv) or not crm_private.invitation_is_for(inv, crm.current_user_id()) then
    perform crm_private.raise('CRNFD', 'No open invitation for you with that id.', 'invitationId');
  end if;
  update crm.invitations i set declined_at = now() where i.id = inv.id;
  update crm_private.one_time_tokens x set used_at = now() where x.invitation_id = inv.id and x.used_at is null;
  return true;
end
$$;
comment on function crm.decline_invitation(uuid) is 'Decline an invitation listed in myInvitations.';

-- What the invited person sees about the inviting organization.
do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = 'crm' and t.typname = 'my_invitation') then
    create type crm.my_invitation as (
      id uuid,
      organization_name text,
      organization_slug text,
      role_name text,
      invited_by_name text,
      created_at timestamptz,
      expires_at timestamptz
    );
  end if;
end
$$;
comment on type crm.my_invitation is 'An open invitation addressed to the signed-in user: accept it with acceptInvitation(input: { invitationId }) or decline it.';

create or replace function crm.my_invitations() returns setof crm.my_invitation
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
  select i.id, o.name::text, o.slug::text, r.name::text, coalesce(nullif(inviter.full_name, ''), inviter.username::text), i.created_at, i.expires_at
    from crm.invitations i
    join crm.organizations o on o.id = i.organization_id
    join crm.roles r on r.id = i.role_id
    left join crm.users inviter on inviter.id = i.invited_by
   where crm.current_user_id() is not null
     and crm_private.invitation_is_open(i)
     and crm_private.invitation_is_for(i, crm.current_user_id())
     and not exists (select 1 from crm.organization_memberships m where m.organization_id = i.organization_id and m.user_id = crm.current_user_id())
   order by i.created_at desc
$$;
comment on function crm.my_invitations() is 'Open invitations addressed to the signed-in user (by account or e-mail address).';

grant execute on function crm.add_member(text, uuid), crm.decline_invitation(uuid), crm.my_invitations() to crm_user;

-- Memberships: deactivating or removing a member ends that organization's sessions only ------------
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
  if not active then
    update crm_private.sessions s set revoked_at = now(), revoked_reason = 'membership_deactivated'
     where s.user_id = m.user_id and s.organization_id = m.organization_id and s.revoked_at is null;
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
  update crm_private.sessions s set revoked_at = now(), revoked_reason = 'membership_removed'
   where s.user_id = m.user_id and s.organization_id = m.organization_id and s.revoked_at is null;
  return m;
end
$$;

-- Account-wide state: never through a tenant role ------------------------------------------------
-- Tenant admins used to be able to disable an account everywhere (crm.set_user_active); that is
-- gone. An operator disables or re-enables an account as the owner (psql, a maintenance script).
drop function if exists crm.set_user_active(uuid, boolean);
create or replace function crm_private.set_account_active(account uuid, active boolean) returns crm.users
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  u crm.users;
begin
  update crm.users set is_active = active where id = account returning * into u;
  if u.id is null then
    raise exception 'No account with id %', account using errcode = 'CRNFD';
  end if;
  if not active then
    update crm_private.sessions set revoked_at = now(), revoked_reason = 'account_disabled'
     where user_id = u.id and revoked_at is null;
  end if;
  return u;
end
$$;
revoke all on function crm_private.set_account_active(uuid, boolean) from public;

-- What another organization's admin reads about a member: the profile an organization needs
-- (username, name, e-mail, avatar, locale, whether the account is active), not the account's own
-- settings or its activity elsewhere. Preferences, last sign-in and e-mail confirmation are shown
-- to the account holder only.
comment on column crm.users.preferences is E'@behavior -select';
comment on column crm.users.last_login_at is E'@behavior -select';
comment on column crm.users.email_confirmed_at is E'@behavior -select';

create or replace function crm.users_preferences(u crm.users) returns jsonb
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select case when u.id = crm.current_user_id() then u.preferences end
$$;
comment on function crm.users_preferences(crm.users) is 'Your own settings (null for other people).';
create or replace function crm.users_last_login_at(u crm.users) returns timestamptz
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select case when u.id = crm.current_user_id() then u.last_login_at end
$$;
comment on function crm.users_last_login_at(crm.users) is 'When you last signed in (null for other people: their activity elsewhere is theirs).';
create or replace function crm.users_email_confirmed_at(u crm.users) returns timestamptz
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select case when u.id = crm.current_user_id() then u.email_confirmed_at end
$$;
comment on function crm.users_email_confirmed_at(crm.users) is 'When you confirmed your e-mail address (null for other people).';
grant execute on function crm.users_preferences(crm.users), crm.users_last_login_at(crm.users), crm.users_email_confirmed_at(crm.users) to crm_user;

--! split: 105-organization-by-slug.sql
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

--! split: 106-sign-in-accepts-invitation.sql
-- Signing in to an organization that invited you accepts its invitation (membership by consent).
-- Signing in to (or switching to) an organization that invited you is your consent: the account
-- holder, with their own credentials, asked to enter it. The open invitation is accepted then.
create or replace function crm_private.accept_invitation_on_sign_in(uid uuid, wanted text) returns void
  language plpgsql
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org crm.organizations := crm_private.organization_by_key(wanted);
  inv crm.invitations;
begin
  if org.id is null or exists (select 1 from crm.organization_memberships m where m.organization_id = org.id and m.user_id = uid) then
    return;
  end if;
  select i.* into inv from crm.invitations i
   where i.organization_id = org.id and crm_private.invitation_is_open(i) and crm_private.invitation_is_for(i, uid)
   order by i.created_at desc limit 1
   for update;
  if inv.id is null then
    return;
  end if;
  insert into crm.organization_memberships (organization_id, user_id, role_id, invited_by)
  values (inv.organization_id, uid, inv.role_id, inv.invited_by);
  update crm_private.one_time_tokens x set used_at = now() where x.invitation_id = inv.id and x.used_at is null;
  update crm.invitations i set accepted_at = now(), accepted_by = uid where i.id = inv.id;
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
  perform crm_private.accept_invitation_on_sign_in(u.id, organization);
  chosen := crm_private.choose_organization(u.id, organization);
  if chosen ? 'error' then
    return chosen;
  end if;
  return crm_private.start_session(u.id, (chosen->>'organization_id')::uuid);
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
  perform crm_private.accept_invitation_on_sign_in(crm.current_user_id(), organization);
  chosen := crm_private.choose_organization(crm.current_user_id(), organization);
  if chosen ? 'error' then
    perform crm_private.raise(case chosen->'error'->>'code' when 'MEMBERSHIP_DISABLED' then 'CRMDS' else 'CRFBD' end,
                              chosen->'error'->>'message', 'organization');
  end if;
  return crm_private.start_session(crm.current_user_id(), (chosen->>'organization_id')::uuid);
end
$$;

--! split: 120-reference-scope.sql
-- A reference a caller sets must point at a row the caller can see.
--
-- Composite foreign keys keep references inside the tenant, but a row inside the tenant can still be
-- outside the caller's scope (a Sales Representative setting `referredById` to a customer owned by
-- someone else). This generic trigger checks, for every foreign key of the row into a tenant-owned
-- table, that the referenced row is visible to the caller under row-level security. It reads the
-- foreign keys from the catalog on each call, so a foreign key added later is covered too; a new table
-- needs one line: `select crm_private.guard_references('crm.<table>');` (the catalog test
-- `referencesUnguarded` names the tables that miss it).
--
-- Only requests are checked (current_user = crm_user): migrations, seeds and SECURITY DEFINER
-- business functions run as the owner and check what they need themselves. A hidden reference is
-- refused like the policies refuse one (42501 → FORBIDDEN), naming the field; a reference to a row
-- that does not exist at all is left to the foreign key (23503 → VALIDATION, "… does not refer to an
-- existing record."), which a SECURITY DEFINER helper tells apart within the caller's organization.
create or replace function crm.reference_exists(tbl regclass, cols text[], vals text[]) returns boolean
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  found boolean;
begin
  -- Tenant-owned tables of crm only, and only within the caller's organization.
  if not exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where c.oid = tbl and n.nspname = 'crm'
                    and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'organization_id' and not a.attisdropped))
     or crm.current_org_id() is null or cardinality(cols) <> cardinality(vals) then
    return false;
  end if;
  execute format('select exists (select 1 from %s p where p.organization_id = $1 and %s)', tbl,
                 (select string_agg(format('p.%I::text = $2[%s]', c, i), ' and ') from unnest(cols) with ordinality x(c, i)))
     using crm.current_org_id(), vals into found;
  return found;
end
$$;
comment on function crm.reference_exists(regclass, text[], text[]) is E'@behavior -queryField -mutationField\nWhether a row exists in the caller''s organization, visible or not (used by the reference guard to tell "hidden" from "missing").';
grant execute on function crm.reference_exists(regclass, text[], text[]) to crm_user;

create or replace function crm_private.tg_references_visible() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  fk record;
  new_row jsonb;
  old_row jsonb;
  visible boolean;
begin
  if current_user <> 'crm_user' then
    return new;
  end if;
  new_row := to_jsonb(new);
  old_row := case when tg_op = 'UPDATE' then to_jsonb(old) end;
  for fk in
    select con.confrelid::regclass::text as parent,
           array_agg(a.attname::text order by k.i) as cols,
           array_agg(pa.attname::text order by k.i) as parent_cols,
           array_agg(format_type(pa.atttypid, pa.atttypmod) order by k.i) as parent_types
      from pg_constraint con
      cross join lateral unnest(con.conkey, con.confkey) with ordinality k(col, parent_col, i)
      join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.col
      join pg_attribute pa on pa.attrelid = con.confrelid and pa.attnum = k.parent_col
     where con.conrelid = tg_relid and con.contype = 'f'
       and exists (select 1 from pg_attribute x where x.attrelid = con.confrelid and x.attname = 'organization_id' and not x.attisdropped)
     group by con.oid, con.confrelid
  loop
    -- MATCH SIMPLE: a null column means there is no reference.
    continue when exists (select 1 from unnest(fk.cols) c where new_row->>c is null);
    continue when tg_op = 'UPDATE' and not exists (select 1 from unnest(fk.cols) c where (new_row->c) is distinct from (old_row->c));
    execute format('select exists (select 1 from %s p where %s)', fk.parent,
                   (select string_agg(format('p.%I = ($1->>%L)::%s', pc, c, t), ' and ')
                      from unnest(fk.parent_cols, fk.cols, fk.parent_types) x(pc, c, t)))
       using new_row into visible;
    -- Missing altogether: the foreign key answers (VALIDATION), as it always did.
    continue when not visible and not crm.reference_exists(fk.parent::regclass, fk.parent_cols,
                                    array(select new_row->>c from unnest(fk.cols) c));
    if not visible then
      raise exception 'You may not refer to that record.'
        using errcode = '42501',
              column = (select c from unnest(fk.cols) with ordinality x(c, i) where c <> 'organization_id' order by i desc limit 1),
              table = tg_table_name;
    end if;
  end loop;
  return new;
end
$$;

-- Installs the guard on one table (idempotent). Fires last among the BEFORE triggers, so it sees the
-- values other triggers filled in.
create or replace function crm_private.guard_references(tbl regclass) returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  execute format('drop trigger if exists _950_references_visible on %s', tbl);
  execute format('create trigger _950_references_visible before insert or update on %s
                    for each row execute function crm_private.tg_references_visible()', tbl);
end
$$;

-- Every table in crm with a foreign key into a tenant-owned table.
select crm_private.guard_references(c.oid)
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'crm' and c.relkind in ('r', 'p')
   and exists (
     select 1 from pg_constraint con
      where con.conrelid = c.oid and con.contype = 'f'
        and exists (select 1 from pg_attribute x where x.attrelid = con.confrelid and x.attname = 'organization_id' and not x.attisdropped));

--! split: 130-rate-limits.sql
-- Request rate limits (src/http/rate-limit.ts, rate-limiter-flexible's PostgreSQL store): one row per
-- client address or principal and window, shared by every API process. Counters need not survive a
-- crash, so the table is unlogged. Only the owner (the API's owner pool) reads and writes it.
create unlogged table if not exists crm_private.rate_limits (
  key varchar(255) primary key,
  points integer not null default 0,
  expire bigint
);
create index if not exists rate_limits_expire_idx on crm_private.rate_limits (expire);
alter table crm_private.rate_limits enable row level security;
drop policy if exists no_access on crm_private.rate_limits;
create policy no_access on crm_private.rate_limits using (false);
