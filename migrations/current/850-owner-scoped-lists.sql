-- Owner-scoped lists read what the caller can see, not the organization's order.
--
-- A Sales Representative's sorted page walked the organization's index in that order and dropped the
-- rows of other owners after fetching each one (about 1,000 heap rows read for 20 returned at 50,000
-- customers): the scope rule `read_all or owner_id = any (…)` is an OR, which PostgreSQL cannot use
-- as an index condition. The select policies now also bound the owner to a range, computed once per
-- statement (crm.visible_owner_bounds: every owner with `_all`, else the lowest and highest visible
-- owner id). A range is an index condition on a trailing index column, so an index in list order that
-- ends with the owner skips other owners' rows inside the index and fetches only the caller's. The OR
-- stays the rule; the range only narrows (a team's range may hold other owners, whom the OR drops).
-- Null owners (a removed member's records) are the all-zero uuid in the range, visible with `_all`
-- only, as before.

create or replace function crm.visible_owner_bounds(resource text, action text default 'read') returns uuid[]
  language sql stable security definer parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select case
    when crm.has_permission(resource || ':' || action || '_all')
      then array['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff']::uuid[]
    else (select array[coalesce((array_agg(o order by o))[1], 'ffffffff-ffff-ffff-ffff-ffffffffffff'),
                       coalesce((array_agg(o order by o desc))[1], '00000000-0000-0000-0000-000000000000')]::uuid[]
            from unnest(crm.visible_owner_ids(resource, action)) o)
  end
$$;
comment on function crm.visible_owner_bounds(text, text) is E'@behavior -queryField\nLowest and highest owner id the caller may see for a resource and action (every owner with _all; null owners count as the all-zero uuid): a range policies add so an index can skip other owners'' rows.';
revoke all on function crm.visible_owner_bounds(text, text) from public;
grant execute on function crm.visible_owner_bounds(text, text) to crm_user;

-- Indexes in the lists' orders that end with the owner (live rows only, like the policies).
create index if not exists customers_name_owner_idx on crm.customers
  (organization_id, name, id, coalesce(owner_id, '00000000-0000-0000-0000-000000000000'::uuid)) where deleted_at is null;
create index if not exists customers_id_owner_idx on crm.customers
  (organization_id, id, coalesce(owner_id, '00000000-0000-0000-0000-000000000000'::uuid)) where deleted_at is null;

drop policy if exists customers_select on crm.customers;
create policy customers_select on crm.customers for select
  using (
    organization_id = (select crm.current_org_id()) and deleted_at is null
    and coalesce(owner_id, '00000000-0000-0000-0000-000000000000'::uuid)
        between ((select crm.visible_owner_bounds('customers'))::uuid[])[1] and ((select crm.visible_owner_bounds('customers'))::uuid[])[2]
    and ((select crm.has_permission('customers:read_all')) or owner_id = any ((select crm.visible_owner_ids('customers'))::uuid[]))
  );

