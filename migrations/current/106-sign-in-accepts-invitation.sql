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
