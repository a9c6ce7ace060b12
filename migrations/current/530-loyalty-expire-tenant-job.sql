-- loyalty:expire moves onto the tenant job framework (worker/tenant/registry.ts): one run per
-- organization at its local hour, as its system principal, recorded in crm.job_runs. The work is
-- the same statement as before (crm_private.expire_loyalty_points, which appends to the append-only
-- ledger under the organization's loyalty lock); the job reaches it through a SECURITY DEFINER
-- entry point that only the organization's system principal may call, for its own organization.
create or replace function crm.expire_loyalty_points_as_job(at timestamptz default now()) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
begin
  if org is null or crm.current_user_id() is distinct from crm.system_principal_id(org) then
    raise exception 'Points are expired by the organization''s loyalty:expire job.' using errcode = 'CRFBD';
  end if;
  return crm_private.expire_loyalty_points(org, coalesce(at, now()));
end
$$;
comment on function crm.expire_loyalty_points_as_job(timestamptz) is E'@behavior -*\nThe loyalty:expire tenant job''s entry point (its system principal only).';
revoke all on function crm.expire_loyalty_points_as_job(timestamptz) from public;
grant execute on function crm.expire_loyalty_points_as_job(timestamptz) to crm_user;

-- The tenant job: payload {"asOf"?: the instant to expire up to (tests)}; returns the customers whose
-- points expired (rowsAffected).
create or replace function crm_jobs.expire_points(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.expire_loyalty_points_as_job(coalesce((payload->>'asOf')::timestamptz, now()))::bigint
$$;
grant execute on function crm_jobs.expire_points(jsonb) to crm_user;
