--! Previous: sha1:c617b40371c6ff19d92933469ceb83360ecb23cc
--! Hash: sha1:54ad85b20f48c4b4532c85710a5204a5b38bb40f
--! Message: Segments select among the customers their caller sees

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 730-segments-in-caller-scope.sql
-- A segment selects among the customers its caller may see, like a hand-picked recipient list
-- (add_campaign_recipients): addCampaignSegment and executeCampaign run as the owner, so without this
-- a role holding campaigns:update or campaigns:execute but only customers:read_own reached (and could
-- count, through the filter) customers it cannot list.
create or replace function crm_private.visible_segment_sql(filter jsonb) returns text
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select '(' || crm.segment_sql(filter) || ') and ((select crm.has_permission(''customers:read_all''))'
         || ' or c.owner_id = any ((select crm.visible_owner_ids(''customers''))::uuid[]))'
$$;

create or replace function crm.add_campaign_segment(campaign_id uuid, segment_id uuid) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  f jsonb;
  n int;
begin
  select s.filter into f from crm.segments s where s.organization_id = c.organization_id and s.id = add_campaign_segment.segment_id;
  if f is null then
    raise exception 'No such segment.' using errcode = 'CRNFD', column = 'segment_id';
  end if;
  execute format($q$
    insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
    select c.organization_id, $2, c.id, 'segment', 'pending' from crm.customers c
     where c.organization_id = $3 and c.deleted_at is null and %s
    on conflict (organization_id, campaign_id, customer_id) do nothing$q$, crm_private.visible_segment_sql(f))
    using f, c.id, c.organization_id;
  get diagnostics n = row_count;
  return n;
end
$$;

create or replace function crm.execute_campaign(id uuid, scheduled_for timestamptz default null) returns crm.campaigns
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
  set work_mem = '128MB'
as $$
declare
  org uuid := crm.current_org_id();
  c crm.campaigns;
  t crm.message_templates;
  f jsonb;
  cond text := 'false';
  queued int;
begin
  perform crm_private.require_permission('campaigns:execute');
  select * into c from crm.campaigns x where x.id = execute_campaign.id and x.organization_id = org and x.deleted_at is null for update;
  if c.id is null then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'id';
  end if;
  if c.status not in ('planning', 'active', 'paused') then
    raise exception 'A % campaign cannot be executed.', c.status using errcode = 'CRSTA', column = 'status';
  end if;
  if c.type not in ('email', 'sms') then
    raise exception 'Only e-mail and SMS campaigns send messages.' using errcode = 'CRVAL', column = 'type';
  end if;
  select * into t from crm.message_templates x where x.organization_id = org and x.id = c.template_id;
  if t.id is null then
    raise exception 'The campaign needs a template.' using errcode = 'CRVAL', column = 'template_id';
  end if;
  if scheduled_for is not null and scheduled_for < now() - interval '1 minute' then
    raise exception 'scheduledFor is in the past.' using errcode = 'CRVAL', column = 'scheduled_for';
  end if;
  if c.segment_id is not null then
    select s.filter into f from crm.segments s where s.organization_id = org and s.id = c.segment_id;
    cond := crm_private.visible_segment_sql(f);
  end if;

  execute format($q$
    with keys as (
      select k.secret, k.public_url from crm_private.messaging_keys k
    ), org as (
      select o.name from crm.organizations o where o.id = $2
    ), recipients as (
      select c.id as customer_id, c.name, c.level_id, coalesce(cc.source, 'segment') as source,
             pc.id as contact_id, pc.first_name, pc.last_name,
             case when $6 = 'email' then coalesce(c.email::text, pc.email::text) else coalesce(c.phone, pc.mobile, pc.phone) end as address,
             gen_random_uuid() as message_id
        from crm.customers c
        left join crm.campaign_contacts cc on cc.organization_id = c.organization_id and cc.campaign_id = $3 and cc.customer_id = c.id
        left join crm.contacts pc on pc.organization_id = c.organization_id and pc.customer_id = c.id and pc.is_primary and pc.deleted_at is null
        where c.organization_id = $2 and c.deleted_at is null
         and ((cc.id is not null and cc.status in ('pending', 'skipped')) or (cc.id is null and %s))
    ), prepared as (
      -- crm.may_receive in set form (hash joins rather than a probe per recipient): an address, no
      -- opt-out for the channel, not suppressed.
      select r.*, r.address is not null and k.customer_id is null and s.address is null as eligible
        from recipients r
        left join (select distinct k.customer_id from crm.consents k
                    where k.organization_id = $2 and k.channel = $6 and k.status = 'opted_out') k on k.customer_id = r.customer_id
        left join (select s.address from crm.suppressions s where s.organization_id = $2 and s.channel = $6) s
          on s.address operator(public.=) r.address::public.citext
    ), inserted as (
      insert into crm.messages (id, organization_id, customer_id, contact_id, channel, kind, recipient, subject, body, scheduled_for,
                                campaign_id, template_id)
      select p.message_id, $2, p.customer_id, p.contact_id, $6, 'marketing', p.address,
             crm_private.render_text($7, false, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name, null),
             crm_private.render_body($8, $6, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name,
                                     k.public_url || '/unsubscribe/' || crm_private.sign_message('unsubscribe', p.message_id, k.secret)),
             coalesce($4, now()), $3, null
        from prepared p
        cross join keys k
        cross join org o
        cross join lateral (select coalesce(p.first_name, split_part(p.name, ' ', 1)) as first_name,
                                   coalesce(nullif(p.last_name, ''), nullif(substr(p.name, length(split_part(p.name, ' ', 1)) + 2), ''), '') as last_name) v
        left join crm.customer_levels l on l.organization_id = $2 and l.id = p.level_id
        left join lateral (select lg.balance_after from crm.loyalty_ledger lg
                            where lg.organization_id = $2 and lg.customer_id = p.customer_id order by lg.id desc limit 1) b on true
       where p.eligible
      on conflict (organization_id, campaign_id, customer_id) where campaign_id is not null do nothing
      returning id, customer_id, contact_id
    ), contacts as (
      -- New rows are the segment's members (rows added by hand exist already and keep their source).
      insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, contact_id, message_id, source, status, skip_reason, queued_at)
      select $2, $3, i.customer_id, i.contact_id, i.id, 'segment', 'queued', null, now() from inserted i
      union all
      select $2, $3, p.customer_id, p.contact_id, null, 'segment', 'skipped',
             case when p.address is null then 'No address for the channel.' else 'Opted out or suppressed.' end, null
        from prepared p
       where not p.eligible
      on conflict (organization_id, campaign_id, customer_id) do update
         set contact_id = excluded.contact_id, message_id = excluded.message_id, status = excluded.status,
             skip_reason = excluded.skip_reason, queued_at = excluded.queued_at
       where crm.campaign_contacts.status in ('pending', 'skipped')
      returning 1
    )
    select count(*) from inserted$q$, cond)
    into queued
    using f, org, c.id, scheduled_for, t.id, t.channel, t.subject, t.body;

  update crm.campaigns x set status = 'active', executed_at = now()
   where x.id = c.id and x.organization_id = org
  returning * into c;
  if queued > 0 then
    perform crm_private.wake_sender(scheduled_for);
  end if;
  return c;
end
$$;
