--! Previous: sha1:e1eb190eef88728fafe2d83f349d6382ed7a814e
--! Hash: sha1:870dbe273c5d4811869a6d8ad95d9ffaf17c6eb2
--! Message: request settings and the session check in one statement

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 800-request-settings.sql
-- One statement opens a request: the session check of Cairn's own tokens happens inside the request's
-- transaction, in the statement that applies its settings, instead of in a round trip of its own
-- before the transaction (src/auth/request-settings.ts rewrites @dataplan/pg's set_config statement
-- to call this). Fail-closed: the claims arrive as `cairn.pending_claims`, and only a live session
-- turns them into jwt.claims.* and the role crm_user; a request whose statement was not rewritten
-- stays crm_anonymous.
create or replace function crm_private.begin_request(settings json) returns void
  language plpgsql volatile
as $$
declare
  pending json;
  principal record;
begin
  select el->>1 into pending from json_array_elements(settings) el where el->>0 = 'cairn.pending_claims';
  if pending is not null then
    -- Still crm_authenticator here: session_principal is the one check it may run.
    select p.user_id, p.organization_id into principal
      from crm_private.session_principal((pending->>'sid')::uuid, (pending->>'sub')::uuid, (pending->>'org')::uuid) p;
    if not found then
      raise exception 'The session is no longer valid; sign in again.' using errcode = 'CRUNA', hint = 'cairn:session';
    end if;
  end if;
  perform pg_catalog.set_config(el->>0, el->>1, true) from json_array_elements(settings) el where el->>0 <> 'cairn.pending_claims';
  if pending is not null then
    perform pg_catalog.set_config('jwt.claims.sub', principal.user_id::text, true);
    perform pg_catalog.set_config('jwt.claims.org', coalesce(principal.organization_id::text, ''), true);
    perform pg_catalog.set_config('jwt.claims.sid', pending->>'sid', true);
    perform pg_catalog.set_config('role', 'crm_user', true);
  end if;
end
$$;
comment on function crm_private.begin_request(json) is 'Applies a request''s settings and, for a Cairn token, checks its session first (one statement, inside the request''s transaction).';
revoke all on function crm_private.begin_request(json) from public;
grant execute on function crm_private.begin_request(json) to crm_authenticator;
