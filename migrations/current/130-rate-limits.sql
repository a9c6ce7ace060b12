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
