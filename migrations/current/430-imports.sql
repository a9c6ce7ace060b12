-- CSV import: the server streams a file through COPY into a per-import staging table (text columns,
-- in the file's order), then crm_private.import_run validates it set-based, builds typed rows and
-- applies them in one transaction AS THE IMPORTER (crm_user with their claims: their row-level
-- security, their permissions, the normal triggers — custom fields, status history, primary contact,
-- audit, webhooks). Entities: customers and contacts now; products and orders plug in later through
-- crm_private.import_fields and a crm_private.import_apply_<entity> function.

create table if not exists crm.import_jobs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  entity text not null constraint import_jobs_entity_check check (entity in ('customers', 'contacts', 'products', 'orders')),
  file_name text constraint import_jobs_file_name_length check (length(file_name) <= 255),
  on_duplicate text not null default 'skip' constraint import_jobs_on_duplicate_check check (on_duplicate in ('skip', 'update', 'create')),
  on_error text not null default 'abort' constraint import_jobs_on_error_check check (on_error in ('abort', 'skip_rows')),
  status text not null default 'receiving'
    constraint import_jobs_status_check check (status in ('receiving', 'queued', 'running', 'completed', 'failed')),
  columns text[] not null default '{}',
  bytes_received bigint not null default 0,
  total_rows int not null default 0,
  error_rows int not null default 0,
  created_rows int not null default 0,
  updated_rows int not null default 0,
  skipped_rows int not null default 0,
  error text,
  created_by uuid not null default crm.current_user_id(),
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  constraint import_jobs_organization_id_id_key unique (organization_id, id),
  constraint import_jobs_creator_fkey foreign key (organization_id, created_by)
    references crm.organization_memberships (organization_id, user_id) on delete cascade
);
create index if not exists import_jobs_organization_id_created_by_idx on crm.import_jobs (organization_id, created_by, created_at desc);
comment on table crm.import_jobs is E'@behavior -insert -update -delete\nA CSV import (POST /import/:entity): its options, status and counts. Rows with errors are listed in errors (also GET /import/:id/errors.csv).';
comment on column crm.import_jobs.on_duplicate is 'Rows matching an existing record (by id, else e-mail): skip them, update the record, or create anyway (customers: an error, e-mail addresses are unique).';
comment on column crm.import_jobs.on_error is 'abort: any row with an error and nothing is imported; skip_rows: the good rows are imported, the others reported.';
comment on column crm.import_jobs.columns is 'The field each column of the file was mapped to (empty: ignored).';
comment on constraint import_jobs_creator_fkey on crm.import_jobs is E'@fieldName creator\n@foreignFieldName importJobs';

create table if not exists crm.import_errors (
  id bigint generated always as identity primary key,
  organization_id uuid not null,
  import_job_id uuid not null,
  row_number int not null,
  column_name text,
  message text not null,
  value text,
  constraint import_errors_job_fkey foreign key (organization_id, import_job_id)
    references crm.import_jobs (organization_id, id) on delete cascade
);
create index if not exists import_errors_job_idx on crm.import_errors (organization_id, import_job_id, row_number);
comment on table crm.import_errors is E'@behavior -insert -update -delete\nOne problem with one row of an import (rowNumber counts data rows from 1; the header is not a row).';
comment on constraint import_errors_job_fkey on crm.import_errors is E'@fieldName importJob\n@foreignFieldName errors';

alter table crm.import_jobs enable row level security;
alter table crm.import_errors enable row level security;
drop policy if exists import_jobs_select on crm.import_jobs;
create policy import_jobs_select on crm.import_jobs for select
  using (organization_id = (select crm.current_org_id()) and created_by = (select crm.current_user_id()));
drop policy if exists import_errors_select on crm.import_errors;
create policy import_errors_select on crm.import_errors for select
  using (organization_id = (select crm.current_org_id())
         and exists (select 1 from crm.import_jobs j where j.id = import_errors.import_job_id));
grant select on crm.import_jobs, crm.import_errors to crm_user;

-- Fields ------------------------------------------------------------------------------------------------
-- What a file may contain per entity: field, kind of value, required, maximum length, allowed values,
-- numeric range. Columns named custom_fields.<key> are the organization's custom fields.
create or replace function crm_private.import_fields(entity text)
  returns table (field text, kind text, required boolean, max_length int, options text[], min_value numeric, max_value numeric)
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select f.field, f.kind, f.required, f.max_length, f.options, f.min_value, f.max_value from (values
    ('customers', 'id', 'uuid', false, null, null::text[], null::numeric, null::numeric),
    ('customers', 'name', 'text', true, 300, null, null, null),
    ('customers', 'kind', 'enum', false, null, array['person', 'company'], null, null),
    ('customers', 'email', 'email', false, 320, null, null, null),
    ('customers', 'phone', 'text', false, 50, null, null, null),
    ('customers', 'status', 'enum', false, null, array['lead', 'prospect', 'customer', 'churned'], null, null),
    ('customers', 'owner', 'member', false, null, null, null, null),
    ('customers', 'industry', 'text', false, 100, null, null, null),
    ('customers', 'company_size', 'enum', false, null, array['1-10', '11-50', '51-200', '201-500', '501-1000', '1001-5000', '5000+'], null, null),
    ('customers', 'website', 'url', false, 2000, null, null, null),
    ('customers', 'annual_revenue', 'numeric', false, null, null, 0, 99999999999999),
    ('customers', 'employee_count', 'int', false, null, null, 0, 2147483647),
    ('customers', 'lead_source', 'text', false, 100, null, null, null),
    ('customers', 'lead_score', 'int', false, null, null, 0, 100),
    ('customers', 'birth_date', 'date', false, null, null, null, null),
    ('customers', 'contacted', 'boolean', false, null, null, null, null),
    ('customers', 'next_follow_up_at', 'timestamptz', false, null, null, null, null),
    ('contacts', 'id', 'uuid', false, null, null, null, null),
    ('contacts', 'customer', 'customer', true, 320, null, null, null),
    ('contacts', 'first_name', 'text', true, 100, null, null, null),
    ('contacts', 'last_name', 'text', false, 100, null, null, null),
    ('contacts', 'email', 'email', false, 320, null, null, null),
    ('contacts', 'phone', 'text', false, 50, null, null, null),
    ('contacts', 'mobile', 'text', false, 50, null, null, null),
    ('contacts', 'title', 'text', false, 200, null, null, null),
    ('contacts', 'department', 'text', false, 200, null, null, null),
    ('contacts', 'status', 'enum', false, null, array['active', 'inactive', 'bounced'], null, null)
  ) f (entity, field, kind, required, max_length, options, min_value, max_value)
  where f.entity = import_fields.entity
$$;

-- Header names a file may use for a field besides its own name (lower case, spaces as underscores).
create or replace function crm_private.import_aliases(entity text) returns table (alias text, field text)
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select a.alias, a.field from (values
    ('customers', 'owner_id', 'owner'), ('customers', 'owner_email', 'owner'), ('customers', 'owner_username', 'owner'),
    ('customers', 'e_mail', 'email'), ('contacts', 'e_mail', 'email'),
    ('contacts', 'customer_id', 'customer'), ('contacts', 'customer_email', 'customer')
  ) a (entity, alias, field)
  where a.entity = import_aliases.entity
$$;

create or replace function crm_private.is_timestamptz(v text) returns boolean
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  perform v::timestamptz;
  return v ~ '^\d{4}-\d{2}-\d{2}';
exception when others then
  return false;
end
$$;

-- Starting an import ----------------------------------------------------------------------------------
-- Called by the server as the owner with the importer's claims set: checks the permission, maps the
-- header to fields and creates the job and its staging table. Returns {id, staging, columns}.
create or replace function crm_private.import_create(entity text, file_name text, on_duplicate text, on_error text, header text[])
  returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  mapped text[] := '{}';
  h text;
  norm text;
  field text;
  unknown text[] := '{}';
  missing text;
  dup text;
  job crm.import_jobs;
  staging text;
  org uuid := crm.current_org_id();
begin
  if crm.current_user_id() is null or org is null then
    perform crm_private.raise('CRUNA', 'Sign in to an organization first.');
  end if;
  if entity not in ('customers', 'contacts') then
    perform crm_private.raise('CRNFD', format('Importing %s is not available.', entity), 'entity');
  end if;
  if entity = 'customers' then
    perform crm_private.require_permission('customers:create');
  elsif not (crm.has_permission('customers:update_all') or crm.has_permission('customers:update_team') or crm.has_permission('customers:update_own')) then
    perform crm_private.raise('CRFBD', 'You need a customers:update_* permission to import contacts.');
  end if;
  if on_duplicate not in ('skip', 'update', 'create') then
    perform crm_private.raise('CRVAL', 'onDuplicate is skip, update or create.', 'onDuplicate');
  end if;
  if on_error not in ('abort', 'skip_rows') then
    perform crm_private.raise('CRVAL', 'onError is abort or skip_rows.', 'onError');
  end if;
  if coalesce(cardinality(header), 0) = 0 or cardinality(header) > 200 then
    perform crm_private.raise('CRVAL', 'The file needs a header row with 1 to 200 columns.', 'file');
  end if;
  foreach h in array header loop
    norm := regexp_replace(lower(btrim(coalesce(h, ''))), '[\s-]+', '_', 'g');
    -- camelCase headers (as the GraphQL API names fields): nextFollowUpAt → next_follow_up_at
    if btrim(coalesce(h, '')) ~ '^[a-z]+([A-Z][a-z0-9]*)+$' then
      norm := lower(regexp_replace(btrim(h), '([A-Z])', '_\1', 'g'));
    end if;
    norm := regexp_replace(norm, '^(customfields|custom_fields|custom|cf)\.', 'custom_fields.');
    field := null;
    if norm like 'custom_fields.%' then
      if exists (select 1 from crm.custom_field_definitions d where d.organization_id = org and d.entity = rtrim(import_create.entity, 's')
                   and d.key = substr(norm, 15)) then
        field := norm;
      end if;
    elsif norm in ('organization_id', 'created_at', 'updated_at', 'created_by', 'deleted_at', 'search_vector', 'is_primary', 'row_id') then
      field := '';  -- read-only columns of an export: accepted and ignored
    else
      select f.field into field from crm_private.import_fields(entity) f where f.field = norm;
      if field is null then
        select a.field into field from crm_private.import_aliases(entity) a where a.alias = norm;
      end if;
    end if;
    if field is null then
      unknown := unknown || coalesce(nullif(btrim(h), ''), '(empty)');
    end if;
    mapped := mapped || coalesce(field, '');
  end loop;
  if cardinality(unknown) > 0 then
    perform crm_private.raise('CRVAL', format('Unknown columns: %s.', array_to_string(unknown, ', ')), 'file',
      format('Columns of %s: %s, and custom_fields.<key> for custom fields.', entity,
             (select string_agg(f.field, ', ') from crm_private.import_fields(entity) f)));
  end if;
  select string_agg(m, ', ') into dup from (select m from unnest(mapped) m where m <> '' group by m having count(*) > 1) x;
  if dup is not null then
    perform crm_private.raise('CRVAL', format('More than one column maps to: %s.', dup), 'file');
  end if;
  if on_duplicate <> 'update' then
    select string_agg(f.field, ', ') into missing from crm_private.import_fields(entity) f
     where f.required and not (f.field = any (mapped));
    if missing is not null then
      perform crm_private.raise('CRVAL', format('Missing required columns: %s.', missing), 'file');
    end if;
  end if;
  insert into crm.import_jobs (organization_id, entity, file_name, on_duplicate, on_error, columns, created_by)
  values (org, entity, left(file_name, 255), on_duplicate, on_error, mapped, crm.current_user_id())
  returning * into job;
  staging := 'import_staging_' || replace(job.id::text, '-', '');
  execute format('create unlogged table crm_private.%I (row_number bigint generated always as identity primary key, %s)',
                 staging, (select string_agg(format('c_%s text', i), ', ') from generate_series(1, cardinality(header)) i));
  execute format('alter table crm_private.%I enable row level security', staging);
  execute format('create policy no_access on crm_private.%I using (false)', staging);
  return jsonb_build_object('id', job.id, 'staging', staging, 'columns', to_jsonb(mapped));
end
$$;

-- The staging table of a job (named after it).
create or replace function crm_private.import_staging(job uuid) returns text
  language sql immutable
  set search_path = pg_catalog, public, pg_temp
as $$
  select 'import_staging_' || replace(job::text, '-', '')
$$;

create or replace function crm_private.import_drop_staging(job uuid) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  execute format('drop table if exists crm_private.%I', crm_private.import_staging(job));
end
$$;

-- A failed import: status, message, staging dropped.
create or replace function crm_private.import_fail(job uuid, message text) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
begin
  update crm.import_jobs set status = 'failed', error = left(message, 2000), finished_at = now() where id = job;
  perform crm_private.import_drop_staging(job);
end
$$;

-- Validation ------------------------------------------------------------------------------------------
-- The condition under which a value is wrong, as SQL over `v` (the trimmed cell, null when empty),
-- giving the message; null when a value of that kind cannot be wrong.
create or replace function crm_private.import_check_sql(kind text, required boolean, max_length int, options text[],
                                                       min_value numeric, max_value numeric, org uuid)
  returns text
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select format('case when v is null then %s %s end',
    case when required then quote_literal('Required.') else 'null' end,
    case kind
      when 'text' then format('when length(v) > %s then %L', max_length, format('At most %s characters.', max_length))
      when 'email' then format($f$when v !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' or length(v) > 320 then 'Not a valid e-mail address.'$f$)
      when 'url' then format($f$when v !~* '^https?://' or length(v) > %s then 'Not an http(s) URL.'$f$, coalesce(max_length, 2000))
      when 'enum' then format('when lower(v) <> all (%L::text[]) then %L', options, 'One of: ' || array_to_string(options, ', ') || '.')
      when 'uuid' then $f$when v !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then 'Not an id (UUID).'$f$
      when 'int' then format($f$when v !~ '^[+-]?\d{1,10}$' then 'Not a whole number.' when v::bigint not between %s and %s then %L$f$,
                             min_value, max_value, format('Between %s and %s.', min_value, max_value))
      when 'numeric' then format($f$when v !~ '^[+-]?(\d{1,15}(\.\d*)?|\.\d+)$' then 'Not a number.' when v::numeric not between %s and %s then %L$f$,
                                 min_value, max_value, format('Between %s and %s.', min_value, max_value))
      when 'date' then $f$when v !~ '^\d{4}-\d{2}-\d{2}$' or not crm_private.is_date(v) then 'Not a date (YYYY-MM-DD).'$f$
      when 'timestamptz' then $f$when not crm_private.is_timestamptz(v) then 'Not a date and time (ISO 8601, e.g. 2025-03-01T09:00:00Z).'$f$
      when 'boolean' then $f$when lower(v) not in ('true', 'false', 'yes', 'no', 'y', 'n', 't', 'f', '1', '0') then 'Not true or false.'$f$
      when 'member' then format($f$when not exists (select 1 from crm.organization_memberships m join crm.users u on u.id = m.user_id
                                      where m.organization_id = %L and m.is_active
                                        and (u.username = v::citext or u.email = v::citext or m.user_id::text = lower(v)))
                               then 'No active member with this username, e-mail or id.'$f$, org)
      when 'customer' then format('when length(v) > %s then %L', max_length, 'Not a customer id or e-mail address.')
      when 'cf_text' then $f$when length(v) > 1000 then 'At most 1000 characters.'$f$
      when 'cf_number' then $f$when v !~ '^[+-]?(\d{1,15}(\.\d*)?|\.\d+)$' then 'Not a number.'$f$
      when 'cf_date' then $f$when v !~ '^\d{4}-\d{2}-\d{2}$' or not crm_private.is_date(v) then 'Not a date (YYYY-MM-DD).'$f$
      when 'cf_boolean' then $f$when lower(v) not in ('true', 'false', 'yes', 'no', 'y', 'n', 't', 'f', '1', '0') then 'Not true or false.'$f$
      when 'cf_select' then format('when not (%L::jsonb @> to_jsonb(v)) then %L', to_jsonb(options), 'One of: ' || array_to_string(options, ', ') || '.')
      when 'cf_multiselect' then format($f$when exists (select 1 from unnest(string_to_array(v, ';')) o where not (%L::jsonb @> to_jsonb(btrim(o))))
                                         then %L$f$, to_jsonb(options), 'Values separated by ";", each one of: ' || array_to_string(options, ', ') || '.')
      else ''
    end)
$$;

-- The typed value of a cell, as SQL over `v`.
create or replace function crm_private.import_value_sql(kind text, org uuid) returns text
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select case kind
    when 'text' then 'v'
    when 'customer' then 'v'
    when 'url' then 'v'
    when 'email' then 'v::citext'
    when 'enum' then 'lower(v)'
    when 'uuid' then 'v::uuid'
    when 'int' then 'v::int'
    when 'numeric' then 'v::numeric'
    when 'date' then 'v::date'
    when 'timestamptz' then 'v::timestamptz'
    when 'boolean' then $f$(lower(v) in ('true', 'yes', 'y', 't', '1'))$f$
    when 'member' then format($f$(select m.user_id from crm.organization_memberships m join crm.users u on u.id = m.user_id
                                  where m.organization_id = %L and (u.username = v::citext or u.email = v::citext or m.user_id::text = lower(v))
                                  order by (m.user_id::text = lower(v)) desc limit 1)$f$, org)
    when 'cf_text' then 'to_jsonb(v)'
    when 'cf_select' then 'to_jsonb(v)'
    when 'cf_date' then 'to_jsonb(v)'
    when 'cf_number' then 'to_jsonb(v::numeric)'
    when 'cf_boolean' then $f$to_jsonb(lower(v) in ('true', 'yes', 'y', 't', '1'))$f$
    when 'cf_multiselect' then $f$(select jsonb_agg(btrim(o)) from unnest(string_to_array(v, ';')) o where btrim(o) <> '')$f$
  end
$$;

-- The file's columns with what they hold: position, field, kind and rules.
create or replace function crm_private.import_columns(job crm.import_jobs)
  returns table (pos int, field text, kind text, required boolean, max_length int, options text[], min_value numeric, max_value numeric)
  language sql stable
  set search_path = pg_catalog, public, pg_temp
as $$
  select c.pos::int, c.field, f.kind, f.required, f.max_length, f.options, f.min_value, f.max_value
    from unnest(job.columns) with ordinality c (field, pos)
    join crm_private.import_fields(job.entity) f on f.field = c.field
  union all
  select c.pos::int, c.field, 'cf_' || d.field_type, d.is_required and job.on_duplicate <> 'update', null,
         array(select jsonb_array_elements_text(d.options)), null, null
    from unnest(job.columns) with ordinality c (field, pos)
    join crm.custom_field_definitions d on d.organization_id = job.organization_id and d.entity = rtrim(job.entity, 's')
                                        and 'custom_fields.' || d.key = c.field
$$;

-- Every value checked, one set-based statement per column; duplicates within the file (by id and by
-- e-mail) reported against the later row. Returns the number of rows with errors.
create or replace function crm_private.import_validate(job crm.import_jobs) returns int
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  c record;
  staging text := crm_private.import_staging(job.id);
  n int;
begin
  delete from crm.import_errors where import_job_id = job.id;
  for c in select * from crm_private.import_columns(job) loop
    execute format(
      $q$insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message, value)
         select $1, $2, s.row_number, $3, x.msg, left(y.v, 200)
           from crm_private.%I s
           cross join lateral (select nullif(btrim(s.%I), '') as v) y
           cross join lateral (select %s as msg) x
          where x.msg is not null$q$,
      staging, 'c_' || c.pos,
      crm_private.import_check_sql(c.kind, c.required, c.max_length, c.options, c.min_value, c.max_value, job.organization_id))
      using job.organization_id, job.id, c.field;
  end loop;
  for c in select * from crm_private.import_columns(job) where field in ('id', 'email') loop
    execute format(
      $q$insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message, value)
         select $1, $2, d.row_number, $3, 'Same ' || $3 || ' as row ' || d.first_row || '.', left(d.v, 200)
           from (select s.row_number, btrim(s.%I) as v,
                        first_value(s.row_number) over (partition by lower(btrim(s.%I)) order by s.row_number) as first_row
                   from crm_private.%I s where nullif(btrim(s.%I), '') is not null) d
          where d.row_number <> d.first_row$q$,
      'c_' || c.pos, 'c_' || c.pos, staging, 'c_' || c.pos)
      using job.organization_id, job.id, c.field;
  end loop;
  select count(distinct row_number) into n from crm.import_errors where import_job_id = job.id;
  return n;
end
$$;

-- pg_temp.import_rows: the rows without errors, typed, one column per field of the entity (null when
-- the file has no such column), plus custom_fields (jsonb of the custom columns present) and the
-- working columns the apply step fills in.
create or replace function crm_private.import_build_rows(job crm.import_jobs) returns void
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  cols text;
  cf text;
begin
  select string_agg(
           coalesce(
             (select format('(select %s from (select nullif(btrim(s.%I), '''') as v) z) as %I',
                            crm_private.import_value_sql(f.kind, job.organization_id), 'c_' || c.pos, f.field)
                from crm_private.import_columns(job) c where c.field = f.field),
             format('null::%s as %I',
                    case f.kind when 'uuid' then 'uuid' when 'member' then 'uuid' when 'email' then 'citext' when 'int' then 'int'
                                when 'numeric' then 'numeric' when 'date' then 'date' when 'timestamptz' then 'timestamptz'
                                when 'boolean' then 'boolean' else 'text' end, f.field)),
           ', ' order by f.field)
    into cols
    from crm_private.import_fields(job.entity) f;
  select coalesce('jsonb_strip_nulls(jsonb_build_object(' || string_agg(
           format('%L, (select %s from (select nullif(btrim(s.%I), '''') as v) z)', substr(c.field, 15),
                  crm_private.import_value_sql(c.kind, job.organization_id), 'c_' || c.pos), ', ') || '))',
                  'null::jsonb')
    into cf
    from crm_private.import_columns(job) c where c.kind like 'cf\_%';
  if to_regclass('pg_temp.import_rows') is not null then
    drop table pg_temp.import_rows;
  end if;
  execute format(
    $q$create temp table import_rows on commit drop as
       select s.row_number, %s, %s as custom_fields,
              null::uuid as existing_id, null::uuid as candidate_id, null::uuid as match_id, null::uuid as customer_id, null::text as action,
              null::text as error_column, null::text as error
         from crm_private.%I s
        where not exists (select 1 from crm.import_errors e where e.import_job_id = $1 and e.row_number = s.row_number)$q$,
    cols, cf, crm_private.import_staging(job.id))
    using job.id;
  create index on pg_temp.import_rows (row_number);
  analyze pg_temp.import_rows;
  grant select, update on pg_temp.import_rows to crm_user;
end
$$;

-- Running an import ------------------------------------------------------------------------------------
-- Validates and applies a staged import in the caller's transaction: the server runs it inline for
-- small files and the imports:run job for large ones. The owner runs it; the apply step switches to
-- crm_user with the importer's claims. Returns the job's counts.
create or replace function crm_private.import_run(job_id uuid) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  job crm.import_jobs;
  invalid int;
  result jsonb;
begin
  select * into job from crm.import_jobs where id = job_id for update;
  if job.id is null or job.status not in ('queued', 'running', 'receiving') then
    raise exception 'Import % cannot run (status %).', job_id, coalesce(job.status, 'missing') using errcode = 'CRSTA';
  end if;
  perform set_config('jwt.claims.sub', job.created_by::text, true);
  perform set_config('jwt.claims.org', job.organization_id::text, true);
  perform set_config('jwt.claims.sid', '', true);
  perform set_config('cairn.request_id', 'import:' || job.id, true);
  execute format('select count(*) from crm_private.%I', crm_private.import_staging(job.id)) into job.total_rows;
  invalid := crm_private.import_validate(job);
  perform crm_private.import_build_rows(job);
  execute format('select crm_private.import_apply_%s($1, $2)', job.entity) into result using job, invalid;
  -- Back as the owner: the errors found while applying join the report.
  insert into crm.import_errors (organization_id, import_job_id, row_number, column_name, message)
  select job.organization_id, job.id, r.row_number, r.error_column, r.error from pg_temp.import_rows r where r.error is not null;
  update crm.import_jobs x set
    status = case when (result->>'applied')::boolean then 'completed' else 'failed' end,
    total_rows = job.total_rows,
    error_rows = (select count(distinct e.row_number) from crm.import_errors e where e.import_job_id = job.id),
    created_rows = (result->>'created')::int,
    updated_rows = (result->>'updated')::int,
    skipped_rows = (result->>'skipped')::int,
    error = case when not (result->>'applied')::boolean then 'Rows have errors; nothing was imported (onError: abort).' end,
    started_at = coalesce(x.started_at, now()),
    finished_at = now()
   where x.id = job.id
  returning * into job;
  perform crm_private.import_drop_staging(job.id);
  perform crm_private.notify(job.organization_id, array[job.created_by], 'import_finished',
    format('Import of %s %s', job.entity, case job.status when 'completed' then 'finished' else 'failed' end),
    format('%s rows: %s created, %s updated, %s skipped, %s with errors.', job.total_rows, job.created_rows, job.updated_rows,
           job.skipped_rows, job.error_rows),
    'import_job', job.id, null, jsonb_build_object('importJobId', job.id),
    'import:' || job.id);
  return jsonb_build_object('id', job.id, 'status', job.status, 'totalRows', job.total_rows, 'errorRows', job.error_rows,
                            'createdRows', job.created_rows, 'updatedRows', job.updated_rows, 'skippedRows', job.skipped_rows);
end
$$;

-- Customers: match by id, else e-mail, among the customers the importer can see; check what the
-- importer may do (create: customers:create, and only customers they own unless customers:update_all;
-- update: the update scope); then insert and update set-based.
--
-- Matching by e-mail happens as the owner first (citext equality is not leakproof, so under RLS it
-- could not use the index), giving candidate ids; the importer's RLS then decides, by id, which
-- candidates they can see. Between the two set_config('role') calls the function runs as crm_user:
-- only crm.* and pg_temp.* objects and plain variables are used there.
create or replace function crm_private.import_apply_customers(job crm.import_jobs, invalid int) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  has_col text[] := job.columns;
  created int := 0;
  updated int := 0;
  skipped int := 0;
  sets text;
  me uuid := crm.current_user_id();
  update_all boolean := crm.has_permission('customers:update_all');
  updatable uuid[] := crm.visible_owner_ids('customers', 'update');
begin
  -- As the owner: the SET list of updates (columns present in the file) and the e-mail candidates.
  select string_agg(case
           when f.field = 'owner' then 'owner_id = coalesce(r.owner, c.owner_id)'
           else format('%I = coalesce(r.%I, c.%I)', f.field, f.field, f.field) end, ', ')
    into sets
    from crm_private.import_fields('customers') f
   where f.field = any (has_col) and f.field <> 'id';
  if exists (select 1 from unnest(has_col) x where x like 'custom_fields.%') then
    sets := concat_ws(', ', sets, 'custom_fields = c.custom_fields || coalesce(r.custom_fields, ''{}'')');
  end if;
  update pg_temp.import_rows r set candidate_id = c.id from crm.customers c
   where r.id is null and r.email is not null
     and c.organization_id = job.organization_id and c.deleted_at is null and c.email = r.email;
  analyze pg_temp.import_rows;

  perform set_config('role', 'crm_user', true);
  update pg_temp.import_rows r set existing_id = c.id from crm.customers c where c.id = coalesce(r.id, r.candidate_id);
  update pg_temp.import_rows r set error_column = 'id', error = 'No customer you can see has this id.'
   where r.id is not null and r.existing_id is null;
  update pg_temp.import_rows r set error_column = 'email', error = 'A customer with this e-mail address already exists (you may not see it).'
   where r.error is null and r.candidate_id is not null and r.existing_id is null;
  update pg_temp.import_rows r set action = case
      when r.existing_id is null then 'create'
      when job.on_duplicate = 'skip' then 'skip'
      when job.on_duplicate = 'update' then 'update'
      else 'duplicate' end
   where r.error is null;
  update pg_temp.import_rows r set error_column = 'email', error = 'A customer with this e-mail address already exists.'
   where r.action = 'duplicate';
  update pg_temp.import_rows r set error_column = 'name', error = 'Required for new customers.'
   where r.action = 'create' and r.name is null;
  update pg_temp.import_rows r set error_column = 'owner', error = 'You may only import customers you own (customers:update_all needed).'
   where r.action in ('create', 'update') and r.error is null and r.owner is not null and r.owner <> me
     and not update_all and not (r.action = 'update' and r.owner = any (updatable));
  update pg_temp.import_rows r set error_column = 'id', error = 'You may not change this customer.'
    from crm.customers c
   where r.action = 'update' and r.error is null and c.id = r.existing_id
     and not update_all and not (c.owner_id = any (updatable));
  update pg_temp.import_rows r set error_column = 'custom_fields.' || d.key, error = 'Required.'
    from crm.custom_field_definitions d
   where r.action = 'create' and r.error is null and d.entity = 'customer' and d.is_required
     and not (coalesce(r.custom_fields, '{}'::jsonb) ? d.key);
  if job.on_error = 'abort' and (invalid > 0 or exists (select 1 from pg_temp.import_rows where error is not null)) then
    perform set_config('role', 'none', true);
    return jsonb_build_object('applied', false, 'created', 0, 'updated', 0, 'skipped', 0);
  end if;
  select count(*) into skipped from pg_temp.import_rows where action = 'skip' and error is null;
  -- A customer created meanwhile with the same e-mail address fails the whole import (23505): the
  -- unique index is the final word, and nothing is half-applied.
  insert into crm.customers (kind, name, email, phone, status, owner_id, industry, company_size, website, annual_revenue,
                             employee_count, lead_source, lead_score, birth_date, contacted, next_follow_up_at, custom_fields)
  select coalesce(r.kind, 'company'), r.name, r.email, r.phone, coalesce(r.status, 'lead'), coalesce(r.owner, me),
         r.industry, r.company_size, r.website, r.annual_revenue, r.employee_count, r.lead_source, coalesce(r.lead_score, 0),
         r.birth_date, coalesce(r.contacted, false), r.next_follow_up_at, coalesce(r.custom_fields, '{}'::jsonb)
    from pg_temp.import_rows r
   where r.action = 'create' and r.error is null
   order by r.row_number;
  get diagnostics created = row_count;
  if sets is not null then
    execute format('update crm.customers c set %s from pg_temp.import_rows r
                     where r.action = ''update'' and r.error is null and c.id = r.existing_id', sets);
    get diagnostics updated = row_count;
  end if;
  perform set_config('role', 'none', true);
  return jsonb_build_object('applied', true, 'created', created, 'updated', updated, 'skipped', skipped);
end
$$;

-- Contacts: the customer (id or e-mail) must be one the importer can see and change; existing
-- contacts are matched by id, else by e-mail within that customer. Candidates by e-mail are found as
-- the owner, then kept only when the importer can see them (as for customers).
create or replace function crm_private.import_apply_contacts(job crm.import_jobs, invalid int) returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  has_col text[] := job.columns;
  created int := 0;
  updated int := 0;
  skipped int := 0;
  sets text;
  update_all boolean := crm.has_permission('customers:update_all');
  updatable uuid[] := crm.visible_owner_ids('customers', 'update');
  uuid_re text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
begin
  select string_agg(format('%I = coalesce(r.%I, ct.%I)', f.field, f.field, f.field), ', ')
    into sets
    from crm_private.import_fields('contacts') f
   where f.field = any (has_col) and f.field not in ('id', 'customer');
  if exists (select 1 from unnest(has_col) x where x like 'custom_fields.%') then
    sets := concat_ws(', ', sets, 'custom_fields = ct.custom_fields || coalesce(r.custom_fields, ''{}'')');
  end if;
  -- As the owner: the customer named by e-mail (or id), and a contact with the row's e-mail there.
  update pg_temp.import_rows r set candidate_id = c.id from crm.customers c
   where r.customer !~* uuid_re and c.organization_id = job.organization_id and c.deleted_at is null and c.email = r.customer::citext;
  update pg_temp.import_rows r set candidate_id = r.customer::uuid where r.customer ~* uuid_re;
  update pg_temp.import_rows r set match_id = ct.id from crm.contacts ct
   where r.id is null and r.email is not null and r.candidate_id is not null
     and ct.organization_id = job.organization_id and ct.customer_id = r.candidate_id and ct.deleted_at is null and ct.email = r.email;
  analyze pg_temp.import_rows;

  perform set_config('role', 'crm_user', true);
  update pg_temp.import_rows r set existing_id = ct.id, customer_id = ct.customer_id
    from crm.contacts ct where ct.id = coalesce(r.id, r.match_id);
  update pg_temp.import_rows r set error_column = 'id', error = 'No contact you can see has this id.'
   where r.id is not null and r.existing_id is null;
  update pg_temp.import_rows r set customer_id = c.id from crm.customers c
   where r.customer_id is null and r.error is null and c.id = r.candidate_id;
  update pg_temp.import_rows r set error_column = 'customer', error = 'No customer you can see has this id or e-mail address.'
   where r.error is null and r.customer_id is null;
  update pg_temp.import_rows r set error_column = 'customer', error = 'You may not change this customer''s contacts.'
    from crm.customers c
   where r.error is null and c.id = r.customer_id and not update_all and not (c.owner_id = any (updatable));
  update pg_temp.import_rows r set action = case
      when r.existing_id is null or job.on_duplicate = 'create' then 'create'
      when job.on_duplicate = 'skip' then 'skip'
      else 'update' end
   where r.error is null;
  update pg_temp.import_rows r set error_column = 'first_name', error = 'Required for new contacts.'
   where r.action = 'create' and r.first_name is null;
  update pg_temp.import_rows r set error_column = 'custom_fields.' || d.key, error = 'Required.'
    from crm.custom_field_definitions d
   where r.action = 'create' and r.error is null and d.entity = 'contact' and d.is_required
     and not (coalesce(r.custom_fields, '{}'::jsonb) ? d.key);
  if job.on_error = 'abort' and (invalid > 0 or exists (select 1 from pg_temp.import_rows where error is not null)) then
    perform set_config('role', 'none', true);
    return jsonb_build_object('applied', false, 'created', 0, 'updated', 0, 'skipped', 0);
  end if;
  select count(*) into skipped from pg_temp.import_rows where action = 'skip' and error is null;
  insert into crm.contacts (customer_id, first_name, last_name, email, phone, mobile, title, department, status, custom_fields)
  select r.customer_id, r.first_name, coalesce(r.last_name, ''), r.email, r.phone, r.mobile, r.title, r.department,
         coalesce(r.status, 'active'), coalesce(r.custom_fields, '{}'::jsonb)
    from pg_temp.import_rows r
   where r.action = 'create' and r.error is null
   order by r.row_number;
  get diagnostics created = row_count;
  if sets is not null then
    execute format('update crm.contacts ct set %s from pg_temp.import_rows r
                     where r.action = ''update'' and r.error is null and ct.id = r.existing_id', sets);
    get diagnostics updated = row_count;
  end if;
  perform set_config('role', 'none', true);
  return jsonb_build_object('applied', true, 'created', created, 'updated', updated, 'skipped', skipped);
end
$$;

-- Housekeeping for the integrations: staging tables of imports that never finished, old import jobs,
-- read notifications, and delivered or failed webhook events past retention.
create or replace function crm_private.prune_integrations(retention interval default interval '30 days') returns jsonb
  language plpgsql volatile
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  j record;
  staged int := 0;
  imports bigint;
  notifications bigint;
  events bigint;
begin
  for j in select id from crm.import_jobs
            where status in ('receiving', 'failed', 'completed', 'queued') and created_at < now() - interval '1 day'
              and to_regclass('crm_private.' || crm_private.import_staging(id)) is not null loop
    perform crm_private.import_drop_staging(j.id);
    update crm.import_jobs set status = 'failed', error = coalesce(error, 'Abandoned.'), finished_at = coalesce(finished_at, now())
     where id = j.id and status in ('receiving', 'queued');
    staged := staged + 1;
  end loop;
  delete from crm.import_jobs where created_at < now() - retention;
  get diagnostics imports = row_count;
  delete from crm.notifications where read_at < now() - retention * 3;
  get diagnostics notifications = row_count;
  delete from crm.webhook_events ev where ev.created_at < now() - retention
     and not exists (select 1 from crm.webhook_deliveries d where d.organization_id = ev.organization_id and d.event_id = ev.id
                      and d.status in ('pending', 'retrying'));
  get diagnostics events = row_count;
  return jsonb_build_object('staging_tables', staged, 'import_jobs', imports, 'notifications', notifications, 'webhook_events', events);
end
$$;
