--! Previous: sha1:d7461838582b779ff45410e096271105bbc6cccc
--! Hash: sha1:b4deafc69c233c9c2c313a8018846c0b58ba6efa
--! Message: Owner-scoped customer lists read by an owner range in list order; search without planner overrides

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 850-owner-scoped-lists.sql
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

--! split: 851-search.sql
-- search without a planner override and without false hits on e-mail prefixes.
--
-- The previous version turned sequential scans off inside the function and matched every condition of
-- a kind in one OR; the planner still walked the whole organization for customers (a bitmap of the
-- tenant's btree index, ~50,000 rows filtered, ~0.5 s for a common first name at 50,000 customers as a
-- Sales Manager). E-mail prefixes went through the trigram index, which matches the prefix's trigrams
-- anywhere in the address (~1,600 false hits rechecked for one first name), and every contact hit was
-- checked against a materialized list of every visible customer.
--
-- Now e-mail prefixes are a range of a btree in byte order (no false hits), so every term of a kind's
-- OR has an index the planner costs correctly and no override is needed: it combines them (BitmapOr)
-- or walks the caller's own records. A contact's or note's customer is looked up by key (or, for a
-- caller who sees some owners' customers, those customers are walked). Same answers, same ranking,
-- same errors; equal ranks are ordered by title, then id.

create index if not exists customers_email_prefix_idx on crm.customers (organization_id, (lower(email::text)) collate "C");
create index if not exists contacts_email_prefix_idx on crm.contacts (organization_id, (lower(email::text)) collate "C");

create or replace function crm.search(query text, types text[] default null) returns setof crm.search_result
  language plpgsql stable security definer
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  cfg regconfig := crm.search_language();
  tsq tsquery;
  q text := btrim(coalesce(query, ''));
  n int := 100;
  -- E-mail addresses match by prefix, case-insensitively (the whole address also matches through full
  -- text): the range [lq, lq_next) of lower-case addresses in byte order is read from a btree index,
  -- and starts_with keeps the test exact (not the trigram index, whose hits need rechecking).
  lq text := lower(btrim(coalesce(query, ''))) collate "C";
  lq_next text;
  pattern text := replace(replace(replace(btrim(coalesce(query, '')), '\', '\\'), '%', '\%'), '_', '\_') || '%';
  -- The policies' rules, evaluated once.
  customers_all boolean := crm.has_permission('customers:read_all');
  customer_owners uuid[] := crm.visible_owner_ids('customers');
  deals_all boolean := crm.has_permission('deals:read_all');
  deal_owners uuid[] := crm.visible_owner_ids('deals');
  projects_all boolean := crm.has_permission('projects:read_all');
  projects_own boolean := crm.has_permission('projects:read_own');
  me uuid := crm.current_user_id();
  want_customers boolean := types is null or 'customer' = any (types);
  want_contacts boolean := types is null or 'contact' = any (types);
  want_deals boolean := types is null or 'deal' = any (types);
  want_notes boolean := types is null or 'note' = any (types);
begin
  if me is null or org is null then
    raise exception 'Sign in to an organization first.' using errcode = 'CRFBD';
  end if;
  if length(q) < 2 then
    raise exception 'Search for at least two characters.' using errcode = 'CRVAL', column = 'query';
  end if;
  if types is not null and not (types <@ array['customer', 'contact', 'deal', 'note']) then
    raise exception 'types may contain customer, contact, deal and note.' using errcode = 'CRVAL', column = 'types';
  end if;
  tsq := websearch_to_tsquery(cfg, q);
  -- The first string after every string that starts with lq (its last character plus one; the
  -- highest code point when that character cannot be incremented).
  lq_next := case when ascii(right(lq, 1)) in (55295, 1114111) then lq || chr(1114111)
                  else left(lq, -1) || chr(ascii(right(lq, 1)) + 1) end;
  -- One pass per kind, each hit ranked once. A caller who sees every record of a kind: one OR whose
  -- every term has its own index (full text, trigram name, e-mail prefix as a btree range), which the
  -- planner combines (BitmapOr). Otherwise: the caller's records (owner index), then the conditions.
  -- Of the two forms, the one whose constant condition is false does not run.
  return query
  select * from (
    (select * from (
       select 'customer'::text, c.id, c.name, coalesce(c.email::text, c.industry), c.id,
              greatest(ts_rank(c.search_vector, tsq) * 2, similarity(c.name, q), case when c.email::text ilike pattern then 0.9 else 0 end)::real
         from crm.customers c
        where want_customers and customers_all and c.organization_id = org and c.deleted_at is null
          and (c.search_vector @@ tsq or c.name % q
             or (lower(c.email::text) collate "C" >= lq and lower(c.email::text) collate "C" < lq_next
                 and starts_with(lower(c.email::text), lq)))
       union all
       -- The caller's own records first (owner index), then the conditions: a short query's trigram
       -- estimates are far too low for the planner to choose this itself.
       select 'customer'::text, c.id, c.name, coalesce(c.email::text, c.industry), c.id,
              greatest(ts_rank(c.search_vector, tsq) * 2, similarity(c.name, q), case when c.email::text ilike pattern then 0.9 else 0 end)::real
         from (select * from crm.customers c
                where want_customers and not customers_all and c.organization_id = org and c.deleted_at is null
                  and c.owner_id = any (customer_owners) offset 0) c
        where (c.search_vector @@ tsq or c.name % q
             or (lower(c.email::text) collate "C" >= lq and lower(c.email::text) collate "C" < lq_next
                 and starts_with(lower(c.email::text), lq)))
     ) k order by 6 desc, 3, 2 limit n)
    union all
    (select * from (
       -- A contact follows its customer: looked up by key for a caller who sees every customer, the
       -- caller's customers walked for the others (one of the two runs).
       select 'contact'::text, ct.id, ct.first_name || ' ' || ct.last_name, coalesce(ct.email::text, ct.title), ct.customer_id,
              greatest(ts_rank(ct.search_vector, tsq) * 2, similarity(ct.first_name || ' ' || ct.last_name, q),
                       case when ct.email::text ilike pattern then 0.9 else 0 end)::real
         from crm.contacts ct
        where want_contacts and customers_all and ct.organization_id = org and ct.deleted_at is null
          and (ct.search_vector @@ tsq or (ct.first_name || ' ' || ct.last_name) % q
               or (lower(ct.email::text) collate "C" >= lq and lower(ct.email::text) collate "C" < lq_next
                   and starts_with(lower(ct.email::text), lq)))
          and exists (select 1 from crm.customers v where v.organization_id = org and v.id = ct.customer_id and v.deleted_at is null)
       union all
       select 'contact'::text, ct.id, ct.first_name || ' ' || ct.last_name, coalesce(ct.email::text, ct.title), ct.customer_id,
              greatest(ts_rank(ct.search_vector, tsq) * 2, similarity(ct.first_name || ' ' || ct.last_name, q),
                       case when ct.email::text ilike pattern then 0.9 else 0 end)::real
         from crm.customers v
         cross join lateral (select * from crm.contacts ct
                              where ct.organization_id = org and ct.customer_id = v.id and ct.deleted_at is null offset 0) ct
        where want_contacts and not customers_all and v.organization_id = org and v.deleted_at is null and v.owner_id = any (customer_owners)
          and (ct.search_vector @@ tsq or (ct.first_name || ' ' || ct.last_name) % q
               or (lower(ct.email::text) collate "C" >= lq and lower(ct.email::text) collate "C" < lq_next
                   and starts_with(lower(ct.email::text), lq)))
     ) k order by 6 desc, 3, 2 limit n)
    union all
    (select * from (
       select 'deal'::text, d.id, d.name, d.amount::text || ' ' || coalesce(d.currency, ''), d.customer_id,
              greatest(ts_rank(d.search_vector, tsq) * 2, similarity(d.name, q))::real
         from crm.deals d
        where want_deals and deals_all and d.organization_id = org and d.deleted_at is null
          and (d.search_vector @@ tsq or d.name % q)
       union all
       select 'deal'::text, d.id, d.name, d.amount::text || ' ' || coalesce(d.currency, ''), d.customer_id,
              greatest(ts_rank(d.search_vector, tsq) * 2, similarity(d.name, q))::real
         from (select * from crm.deals d
                where want_deals and not deals_all and d.organization_id = org and d.deleted_at is null
                  and d.owner_id = any (deal_owners) offset 0) d
        where (d.search_vector @@ tsq or d.name % q)
     ) k order by 6 desc, 3, 2 limit n)
    union all
    (select 'note', nt.id, left(nt.content, 120), null, nt.customer_id, (ts_rank(nt.search_vector, tsq) * 2)::real
       from crm.notes nt
      where want_notes
        and nt.organization_id = org and nt.deleted_at is null and nt.search_vector @@ tsq
        and (nt.customer_id is null or exists (select 1 from crm.customers v where v.organization_id = org and v.id = nt.customer_id and v.deleted_at is null
                                                 and (customers_all or v.owner_id = any (customer_owners))))
        and (nt.contact_id is null or exists (select 1 from crm.contacts ct join crm.customers v on v.organization_id = ct.organization_id and v.id = ct.customer_id
                                               where ct.id = nt.contact_id and ct.deleted_at is null and v.deleted_at is null
                                                 and (customers_all or v.owner_id = any (customer_owners))))
        and (nt.deal_id is null or exists (select 1 from crm.deals d where d.id = nt.deal_id and d.deleted_at is null
                                             and (deals_all or d.owner_id = any (deal_owners))))
        and (nt.project_id is null or exists (select 1 from crm.projects p where p.id = nt.project_id and p.deleted_at is null
                                                and (projects_all or p.manager_id = me
                                                     or (projects_own and exists (select 1 from crm.customers v
                                                                                   where v.organization_id = org and v.id = p.customer_id and v.deleted_at is null
                                                                                     and (customers_all or v.owner_id = any (customer_owners)))))))
      order by 6 desc, 3, 2 limit n)
  ) hits
  order by 6 desc, 3, 2
  limit n;
end
$$;
comment on function crm.search(text, text[]) is 'Search customers, contacts, deals and notes you can see, best matches first (up to 100 per kind).';
grant execute on function crm.search(text, text[]) to crm_user;
