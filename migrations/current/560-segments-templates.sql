-- Messaging, part 2: segments (a filter document compiled to SQL by one function) and message
-- templates (placeholders checked on write, rendered in SQL at fan-out). docs/campaigns.md.

-- Segments ------------------------------------------------------------------------------------------
create table if not exists crm.segments (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint segments_name_length check (length(btrim(name)) between 1 and 200),
  description text constraint segments_description_length check (length(description) <= 5000),
  filter jsonb not null constraint segments_filter_object check (jsonb_typeof(filter) = 'object'),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint segments_name_unique unique (organization_id, name),
  constraint segments_organization_id_id_key unique (organization_id, id)
);
create index if not exists segments_created_by_idx on crm.segments (created_by);
comment on table crm.segments is E'A named group of customers: a filter document ({"all": [...]} or {"any": [...]} of conditions on known fields) that campaigns target. See docs/campaigns.md for the language.';
comment on column crm.segments.organization_id is E'@behavior -insert -update';
comment on column crm.segments.created_by is E'@behavior -insert -update';
comment on column crm.segments.filter is 'The filter document, checked on write: an unknown field or operator, or a value of the wrong type, is refused with VALIDATION naming its path.';

-- Templates --------------------------------------------------------------------------------------------
create table if not exists crm.message_templates (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id() references crm.organizations (id) on delete cascade,
  name text not null constraint message_templates_name_length check (length(btrim(name)) between 1 and 200),
  channel text not null constraint message_templates_channel_check check (channel in ('email', 'sms')),
  subject text constraint message_templates_subject_length check (length(subject) <= 500),
  body text not null constraint message_templates_body_length check (length(body) between 1 and 100000),
  created_by uuid default crm.current_user_id() references crm.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint message_templates_name_unique unique (organization_id, name),
  constraint message_templates_organization_id_id_key unique (organization_id, id),
  constraint message_templates_subject_valid check (channel <> 'email' or length(btrim(subject)) > 0)
);
create index if not exists message_templates_created_by_idx on crm.message_templates (created_by);
comment on table crm.message_templates is E'A message with placeholders, rendered for each recipient when a campaign or automation queues it: [FirstName], [LastName], [Level], [Points], [CompanyName], [UnsubscribeUrl]. An e-mail body is HTML (the values are escaped); every marketing e-mail gets an unsubscribe link (appended when the body has no [UnsubscribeUrl]).';
comment on column crm.message_templates.organization_id is E'@behavior -insert -update';
comment on column crm.message_templates.created_by is E'@behavior -insert -update';
comment on column crm.message_templates.subject is 'The e-mail subject (required for e-mail; placeholders allowed).';

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'messaging_settings_birthday_template_fkey') then
    alter table crm.messaging_settings add constraint messaging_settings_birthday_template_fkey foreign key (organization_id, birthday_template_id)
      references crm.message_templates (organization_id, id) on delete set null (birthday_template_id);
    alter table crm.messaging_settings add constraint messaging_settings_inactivity_template_fkey foreign key (organization_id, inactivity_template_id)
      references crm.message_templates (organization_id, id) on delete set null (inactivity_template_id);
    alter table crm.messaging_settings add constraint messaging_settings_welcome_template_fkey foreign key (organization_id, welcome_template_id)
      references crm.message_templates (organization_id, id) on delete set null (welcome_template_id);
  end if;
end
$$;
create index if not exists messaging_settings_birthday_template_idx on crm.messaging_settings (organization_id, birthday_template_id);
create index if not exists messaging_settings_inactivity_template_idx on crm.messaging_settings (organization_id, inactivity_template_id);
create index if not exists messaging_settings_welcome_template_idx on crm.messaging_settings (organization_id, welcome_template_id);
comment on constraint messaging_settings_birthday_template_fkey on crm.messaging_settings is E'@fieldName birthdayTemplate\n@foreignFieldName birthdaySettings';
comment on constraint messaging_settings_inactivity_template_fkey on crm.messaging_settings is E'@fieldName inactivityTemplate\n@foreignFieldName inactivitySettings';
comment on constraint messaging_settings_welcome_template_fkey on crm.messaging_settings is E'@fieldName welcomeTemplate\n@foreignFieldName welcomeSettings';

-- Row-level security: campaigns:read sees, campaigns:create / update / delete write.
alter table crm.segments enable row level security;
alter table crm.message_templates enable row level security;
do $$
declare
  t text;
begin
  foreach t in array array['segments', 'message_templates'] loop
    execute format('drop policy if exists %1$s_select on crm.%1$I', t);
    execute format('create policy %1$s_select on crm.%1$I for select using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:read'')))', t);
    execute format('drop policy if exists %1$s_insert on crm.%1$I', t);
    execute format('create policy %1$s_insert on crm.%1$I for insert with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:create'')))', t);
    execute format('drop policy if exists %1$s_update on crm.%1$I', t);
    execute format('create policy %1$s_update on crm.%1$I for update using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:update'')))
                    with check (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:update'')))', t);
    execute format('drop policy if exists %1$s_delete on crm.%1$I', t);
    execute format('create policy %1$s_delete on crm.%1$I for delete using (organization_id = (select crm.current_org_id()) and (select crm.has_permission(''campaigns:delete'')))', t);
    execute format('drop trigger if exists _100_updated_at on crm.%I', t);
    execute format('create trigger _100_updated_at before update on crm.%I for each row execute function crm_private.tg_set_updated_at()', t);
    execute format('drop trigger if exists _800_audit on crm.%I', t);
    execute format('create trigger _800_audit after insert or update or delete on crm.%I for each row execute function crm_private.tg_audit()', t);
  end loop;
end
$$;
grant select, delete on crm.segments, crm.message_templates to crm_user;
grant insert (name, description, filter), update (name, description, filter) on crm.segments to crm_user;
grant insert (name, channel, subject, body), update (name, channel, subject, body) on crm.message_templates to crm_user;

-- The segment compiler ------------------------------------------------------------------------------
-- Compiles a filter document into a boolean SQL expression over `c` (a row of crm.customers). Only
-- known fields and operators produce SQL, from the fixed fragments below; every value the caller wrote
-- stays in the document and is read by the expression as `$1 #>> '{path}'` — the caller's text never
-- becomes SQL text. Run the result with `execute … using filter`. Refuses anything else with VALIDATION
-- (column = the path of the offending part, e.g. filter.all.2.op).
--
-- node := {"all": [node, …]} | {"any": [node, …]} | {"not": node}
--       | {"field": <name>, "op": <operator>, "value": <value>}          (custom_field also takes "key")
create or replace function crm.segment_sql(filter jsonb, path text[] default '{}') returns text
  language plpgsql stable
  set search_path = pg_catalog, public, pg_temp
as $$
declare
  here text := array_to_string(array['filter'] || path, '.');
  keys text[];
  parts text[] := '{}';
  i int;
  field text;
  op text;
  val jsonb;
  v text;        -- SQL reading the value: ($1 #>> '{…,value}')
  k text;        -- SQL reading the key
  lhs text;
  paid constant text := $q$o.status in ('paid', 'partially_paid')$q$;
  comparison constant text[] := array['=', '!=', '>', '<', '>=', '<='];
  equality constant text[] := array['=', '!=', 'in'];
begin
  if filter is null or jsonb_typeof(filter) <> 'object' then
    raise exception 'A filter is an object: {"all": [...]}, {"any": [...]}, {"not": ...} or a condition {"field", "op", "value"}.'
      using errcode = 'CRVAL', column = here;
  end if;
  select array_agg(x order by x) into keys from jsonb_object_keys(filter) x;
  if keys = array['all'] or keys = array['any'] then
    if jsonb_typeof(filter -> keys[1]) <> 'array' or jsonb_array_length(filter -> keys[1]) = 0 then
      raise exception '"%" takes a non-empty list of conditions.', keys[1] using errcode = 'CRVAL', column = here || '.' || keys[1];
    end if;
    if jsonb_array_length(filter -> keys[1]) > 100 then
      raise exception 'At most 100 conditions in one list.' using errcode = 'CRVAL', column = here || '.' || keys[1];
    end if;
    for i in 0 .. jsonb_array_length(filter -> keys[1]) - 1 loop
      parts := parts || crm.segment_sql(filter -> keys[1] -> i, path || array[keys[1], i::text]);
    end loop;
    return '(' || array_to_string(parts, case keys[1] when 'all' then ' and ' else ' or ' end) || ')';
  elsif keys = array['not'] then
    return '(not coalesce(' || crm.segment_sql(filter -> 'not', path || array['not']) || ', false))';
  end if;
  if not (keys <@ array['field', 'key', 'op', 'value']) or not (array['field', 'op', 'value'] <@ keys) then
    raise exception 'A condition has "field", "op" and "value" (and "key" for custom_field); found %.', array_to_string(keys, ', ')
      using errcode = 'CRVAL', column = here;
  end if;
  if jsonb_typeof(filter -> 'field') <> 'string' then
    raise exception 'The field is a name.' using errcode = 'CRVAL', column = here || '.field';
  end if;
  field := filter ->> 'field';
  op := filter ->> 'op';
  val := filter -> 'value';
  v := format('($1 #>> %L)', '{' || array_to_string(path || array['value'], ',') || '}');
  k := format('($1 #>> %L)', '{' || array_to_string(path || array['key'], ',') || '}');

  if field not in ('level', 'last_purchase_days_ago', 'rfm_score', 'status', 'tag', 'order_count', 'total_spent',
                   'birthday_month', 'city', 'country', 'custom_field', 'has_consent', 'lead_score') then
    raise exception 'Unknown field. Known fields: level, last_purchase_days_ago, rfm_score, status, tag, order_count, total_spent, birthday_month, city, country, custom_field, has_consent, lead_score.'
      using errcode = 'CRVAL', column = here || '.field';
  end if;
  if (field <> 'custom_field') and keys @> array['key'] then
    raise exception 'Only custom_field takes a key.' using errcode = 'CRVAL', column = here || '.key';
  end if;
  if jsonb_typeof(filter -> 'op') is distinct from 'string' or op not in ('=', '!=', '>', '<', '>=', '<=', 'in', 'has', 'not_has') then
    raise exception 'Unknown operator. Operators: =, !=, >, <, >=, <=, in, has, not_has (by field).' using errcode = 'CRVAL', column = here || '.op';
  end if;

  -- Numeric fields ----------------------------------------------------------------------------------
  if field in ('last_purchase_days_ago', 'rfm_score', 'order_count', 'total_spent', 'lead_score', 'birthday_month') then
    if field = 'birthday_month' then
      if not (op = any (equality)) then
        raise exception 'birthday_month takes =, != or in.' using errcode = 'CRVAL', column = here || '.op';
      end if;
    elsif not (op = any (comparison)) then
      raise exception '% takes =, !=, >, <, >= or <=.', field using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op = 'in' then
      if jsonb_typeof(val) <> 'array' or jsonb_array_length(val) = 0
         or exists (select 1 from jsonb_array_elements(val) e where jsonb_typeof(e) <> 'number' or (e::text)::numeric not between 1 and 12 or (e::text)::numeric % 1 <> 0) then
        raise exception 'in takes a non-empty list of months (1–12).' using errcode = 'CRVAL', column = here || '.value';
      end if;
    elsif jsonb_typeof(val) <> 'number' then
      raise exception '% compares with a number.', field using errcode = 'CRVAL', column = here || '.value';
    elsif field = 'birthday_month' and ((val::text)::numeric not between 1 and 12 or (val::text)::numeric % 1 <> 0) then
      raise exception 'A month is 1–12.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    lhs := case field
      when 'rfm_score' then 'c.rfm_score'
      when 'lead_score' then 'c.lead_score'
      when 'birthday_month' then 'extract(month from c.birth_date)'
      when 'last_purchase_days_ago' then
        format('floor(extract(epoch from (now() - (select max(o.ordered_at) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id and %s))) / 86400)', paid)
      when 'order_count' then
        format('(select count(*) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id and %s)', paid)
      when 'total_spent' then
        'coalesce((select sum(o.paid_amount - o.refunded_amount) from crm.orders o where o.organization_id = c.organization_id and o.customer_id = c.id), 0)'
    end;
    if op = 'in' then
      return format('(%s = any (array(select jsonb_array_elements_text($1 #> %L)::numeric)))', lhs, '{' || array_to_string(path || array['value'], ',') || '}');
    end if;
    return format('(%s %s %s::numeric)', lhs, case op when '!=' then '<>' else op end, v);
  end if;

  -- Level: by name; =/!= the level itself, >/< by rank ---------------------------------------------
  if field = 'level' then
    if not (op = any (comparison)) then
      raise exception 'level takes =, !=, >, <, >= or <= (by rank).' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' or not exists (
         select 1 from crm.customer_levels l where l.organization_id = crm.current_org_id() and lower(l.name::text) = lower(val #>> '{}')) then
      raise exception 'Unknown level; use the name of one of the organization''s levels.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('((select l.rank from crm.customer_levels l where l.organization_id = c.organization_id and l.id = c.level_id) %s '
                  '(select l.rank from crm.customer_levels l where l.organization_id = c.organization_id and lower(l.name::text) = lower(%s)))',
                  case op when '!=' then '<>' else op end, v);
  end if;

  -- Tags --------------------------------------------------------------------------------------------
  if field = 'tag' then
    if op not in ('has', 'not_has') then
      raise exception 'tag takes has or not_has.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' then
      raise exception 'A tag is a name.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('(%s exists (select 1 from crm.customer_tags ct join crm.tags t on t.organization_id = ct.organization_id and t.id = ct.tag_id '
                  'where ct.organization_id = c.organization_id and ct.customer_id = c.id and lower(t.name::text) = lower(%s)))',
                  case op when 'not_has' then 'not' else '' end, v);
  end if;

  -- Consent ---------------------------------------------------------------------------------------------
  if field = 'has_consent' then
    if op not in ('=', '!=') then
      raise exception 'has_consent takes = or !=.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if jsonb_typeof(val) <> 'string' or val #>> '{}' not in ('email', 'sms') then
      raise exception 'has_consent names a channel: email or sms.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format('(%s coalesce(crm.may_receive(c.organization_id, c.id, %2$s, crm.recipient_address(c.organization_id, c.id, %2$s)), false))',
                  case op when '!=' then 'not' else '' end, v);
  end if;

  -- Text fields -------------------------------------------------------------------------------------
  if field in ('status', 'city', 'country') then
    if not (op = any (equality)) then
      raise exception '% takes =, != or in.', field using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op = 'in' then
      if jsonb_typeof(val) <> 'array' or jsonb_array_length(val) = 0 or exists (select 1 from jsonb_array_elements(val) e where jsonb_typeof(e) <> 'string') then
        raise exception 'in takes a non-empty list of texts.' using errcode = 'CRVAL', column = here || '.value';
      end if;
    elsif jsonb_typeof(val) <> 'string' then
      raise exception '% compares with a text.', field using errcode = 'CRVAL', column = here || '.value';
    end if;
    if field = 'status' and exists (
         select 1 from jsonb_array_elements(case when op = 'in' then val else jsonb_build_array(val) end) e
          where e #>> '{}' not in ('lead', 'prospect', 'customer', 'churned')) then
      raise exception 'Unknown status; use lead, prospect, customer or churned.' using errcode = 'CRVAL', column = here || '.value';
    end if;
    lhs := case field when 'status' then 'c.status' when 'city' then $q$lower(c.billing_address ->> 'city')$q$
                      else $q$lower(c.billing_address ->> 'country')$q$ end;
    if op = 'in' then
      return format('(%s = any (array(select lower(jsonb_array_elements_text($1 #> %L)))))', lhs, '{' || array_to_string(path || array['value'], ',') || '}');
    end if;
    return format('(%s %s lower(%s))', lhs, case op when '!=' then 'is distinct from' else '=' end, v);
  end if;

  -- Custom fields: {"field": "custom_field", "key": "segment", "op": "=", "value": "retail"} ----------
  if field = 'custom_field' then
    if jsonb_typeof(filter -> 'key') is distinct from 'string' or length(filter ->> 'key') not between 1 and 100 then
      raise exception 'custom_field needs the key of the custom field.' using errcode = 'CRVAL', column = here || '.key';
    end if;
    if not (op = any (comparison)) then
      raise exception 'custom_field takes =, !=, >, <, >= or <=.' using errcode = 'CRVAL', column = here || '.op';
    end if;
    if op in ('=', '!=') then
      if jsonb_typeof(val) not in ('string', 'number', 'boolean') then
        raise exception 'custom_field compares with a text, number or boolean.' using errcode = 'CRVAL', column = here || '.value';
      end if;
      return format('((c.custom_fields ->> %s) %s %s)', k, case op when '!=' then 'is distinct from' else '=' end, v);
    end if;
    if jsonb_typeof(val) <> 'number' then
      raise exception '% compares with a number.', op using errcode = 'CRVAL', column = here || '.value';
    end if;
    return format($f$((case when jsonb_typeof(c.custom_fields -> %1$s) = 'number' then (c.custom_fields ->> %1$s)::numeric end) %2$s %3$s::numeric)$f$, k, op, v);
  end if;
  raise exception 'Unknown field.' using errcode = 'CRVAL', column = here || '.field';
end
$$;
comment on function crm.segment_sql(jsonb, text[]) is E'@behavior -*\nCompiles a segment filter document to a boolean SQL expression over c (crm.customers) that reads its values from $1 (the document). docs/campaigns.md.';
grant execute on function crm.segment_sql(jsonb, text[]) to crm_user;

create or replace function crm_private.tg_segment_filter() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform crm.segment_sql(new.filter);
  return new;
end
$$;
drop trigger if exists _110_filter on crm.segments;
create trigger _110_filter before insert or update of filter on crm.segments for each row execute function crm_private.tg_segment_filter();

-- The customers a filter selects, under the caller's row-level security (a Sales Representative sees
-- only their own). A connection: totalCount is the count, the first page the preview.
drop function if exists crm.segment_preview(jsonb);
create or replace function crm.segment_preview(filter jsonb default null) returns setof crm.customers
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
begin
  if not crm.has_permission('campaigns:read') then
    raise exception 'Previewing a segment needs campaigns:read.' using errcode = 'CRFBD';
  end if;
  return query execute 'select c.* from crm.customers c where c.deleted_at is null and '
    || case when filter is null then 'true' else crm.segment_sql(filter) end || ' order by c.created_at, c.id'
    using filter;
end
$$;
comment on function crm.segment_preview(jsonb) is E'The customers a segment filter selects, among those you can see: totalCount and a first page (no filter: every customer you can see). An invalid filter is refused with VALIDATION naming the path (filter.all.0.op …).';
grant execute on function crm.segment_preview(jsonb) to crm_user;

create or replace function crm.segments_customer_count(s crm.segments) returns bigint
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  n bigint;
begin
  execute 'select count(*) from crm.customers c where c.deleted_at is null and ' || crm.segment_sql(s.filter) into n using s.filter;
  return n;
end
$$;
comment on function crm.segments_customer_count(crm.segments) is 'How many customers you can see are in the segment now.';
grant execute on function crm.segments_customer_count(crm.segments) to crm_user;

-- Templates: placeholders ---------------------------------------------------------------------------
create or replace function crm_private.tg_template_placeholders() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  unknown text;
  col text;
begin
  foreach col in array array['subject', 'body'] loop
    select string_agg(distinct '[' || m[1] || ']', ', ') into unknown
      from regexp_matches(coalesce(case col when 'subject' then new.subject else new.body end, ''), '\[([A-Za-z][A-Za-z0-9_]*)\]', 'g') m
     where m[1] not in ('FirstName', 'LastName', 'Level', 'Points', 'CompanyName', 'UnsubscribeUrl');
    if unknown is not null then
      raise exception 'Unknown placeholder %. Placeholders: [FirstName], [LastName], [Level], [Points], [CompanyName], [UnsubscribeUrl].', unknown
        using errcode = 'CRVAL', column = col;
    end if;
  end loop;
  return new;
end
$$;
drop trigger if exists _110_placeholders on crm.message_templates;
create trigger _110_placeholders before insert or update on crm.message_templates for each row execute function crm_private.tg_template_placeholders();

-- HTML-escapes a value for an e-mail body (html = true), or leaves it (SMS).
create or replace function crm_private.escape_value(value text, html boolean) returns text
  language sql immutable
as $$
  select case when html
    then replace(replace(replace(replace(replace(coalesce(value, ''), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
    else coalesce(value, '') end
$$;

-- Renders a template text for one recipient. Inlined into the fan-out (a plain SQL function).
create or replace function crm_private.render_text(tpl text, html boolean, first_name text, last_name text, level text, points int,
                                                   company text, unsubscribe_url text) returns text
  language sql immutable
as $$
  select replace(replace(replace(replace(replace(replace(tpl,
    '[FirstName]', crm_private.escape_value(first_name, html)),
    '[LastName]', crm_private.escape_value(last_name, html)),
    '[Level]', crm_private.escape_value(level, html)),
    '[Points]', coalesce(points, 0)::text),
    '[CompanyName]', crm_private.escape_value(company, html)),
    '[UnsubscribeUrl]', crm_private.escape_value(unsubscribe_url, html))
$$;

-- The body of a marketing message: rendered, and for e-mail with an unsubscribe link at the end when
-- the template has none.
create or replace function crm_private.render_body(tpl text, chan text, first_name text, last_name text, level text, points int,
                                                   company text, unsubscribe_url text) returns text
  language sql immutable
as $$
  select crm_private.render_text(
    case when chan = 'email' and position('[UnsubscribeUrl]' in tpl) = 0
         then tpl || E'\n<p style="font-size:12px">Unsubscribe: <a href="[UnsubscribeUrl]">[UnsubscribeUrl]</a></p>'
         else tpl end,
    chan = 'email', first_name, last_name, level, points, company, unsubscribe_url)
$$;
