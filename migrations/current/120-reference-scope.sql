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
