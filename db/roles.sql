-- Cluster-wide roles. Run by a superuser (npm run db:init, the embedded bootstrap or the test setup),
-- never by the running service. Idempotent: safe to run on every start.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'crm_owner') then
    create role crm_owner login;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'crm_authenticator') then
    create role crm_authenticator login noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'crm_anonymous') then
    create role crm_anonymous nologin;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'crm_user') then
    create role crm_user nologin;
  end if;
end
$$;

-- Never superuser, never BYPASSRLS: the catalog tests check this too.
alter role crm_owner nosuperuser nobypassrls nocreaterole login;
alter role crm_authenticator nosuperuser nobypassrls nocreaterole nocreatedb login noinherit;
alter role crm_anonymous nosuperuser nobypassrls nologin;
alter role crm_user nosuperuser nobypassrls nologin;

-- The API connects as crm_authenticator and does SET LOCAL ROLE per request.
grant crm_anonymous to crm_authenticator;
grant crm_user to crm_authenticator;
-- The worker (connected as crm_owner) runs tenant-scoped work as crm_user under RLS.
grant crm_user to crm_owner;
