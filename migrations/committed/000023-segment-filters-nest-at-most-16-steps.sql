--! Previous: sha1:54ad85b20f48c4b4532c85710a5204a5b38bb40f
--! Hash: sha1:f3f0d51c489b4d3a984876aecd3c29a008e2cf51
--! Message: Segment filters nest at most 16 steps

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 740-segment-depth.sql
-- A segment filter nests at most 16 steps of all, any and not: a deeper document was compiled by
-- recursion until PostgreSQL's stack ran out, which answered INTERNAL instead of VALIDATION.
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
  -- Each level of all/any/not adds two path entries; deeper documents would only exhaust the stack.
  if cardinality(path) > 16 then
    raise exception 'A filter nests too deeply (at most 16 steps of all, any and not).' using errcode = 'CRVAL', column = here;
  end if;
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
