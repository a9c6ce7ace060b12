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
  select * into u from crm.users x where x.username = btrim(login)::citext and x.deleted_at is null;
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
