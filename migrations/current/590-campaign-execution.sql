-- Messaging, part 5: recipients, executeCampaign (the fan-out), metrics, engagement (unsubscribe,
-- opens, clicks, provider notifications), lifecycle automations and enqueue_message for other
-- modules. docs/campaigns.md.

-- Wakes the sender: one messages:send job now (a job key, so a burst of executions queues one), or a
-- job at a later time for a scheduled campaign. The worker's crontab also runs messages:send every minute.
create or replace function crm_private.wake_sender(at timestamptz default null) returns void
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  if at is null or at <= now() then
    perform crm_private.add_job('messages:send', '{}'::jsonb, job_key := 'messages:send', max_attempts := 5);
  else
    perform crm_private.add_job('messages:send', '{}'::jsonb, run_at := at, max_attempts := 5);
  end if;
end
$$;

-- Recipients ------------------------------------------------------------------------------------------
create or replace function crm_private.campaign_for_change(campaign uuid) returns crm.campaigns
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns;
begin
  perform crm_private.require_permission('campaigns:update');
  select * into c from crm.campaigns x where x.id = campaign and x.organization_id = crm.current_org_id() and x.deleted_at is null;
  if c.id is null then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'campaign_id';
  end if;
  if c.status in ('completed', 'cancelled') then
    raise exception 'The campaign is %: its recipients can no longer change.', c.status using errcode = 'CRSTA', column = 'campaign_id';
  end if;
  return c;
end
$$;

create or replace function crm.add_campaign_recipients(campaign_id uuid, customer_ids uuid[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  n int;
begin
  if cardinality(customer_ids) > 10000 then
    raise exception 'At most 10,000 customers at a time; use a segment for more.' using errcode = 'CRVAL', column = 'customer_ids';
  end if;
  if exists (select 1 from unnest(customer_ids) i where not exists (
       select 1 from crm.customers x where x.organization_id = c.organization_id and x.id = i and x.deleted_at is null
          and (crm.has_permission('customers:read_all') or x.owner_id = any (crm.visible_owner_ids('customers'))))) then
    raise exception 'A customer was not found.' using errcode = 'CRNFD', column = 'customer_ids';
  end if;
  insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
  select c.organization_id, c.id, i, 'manual', 'pending' from (select distinct unnest(customer_ids) as i) u
  on conflict on constraint campaign_contacts_customer_unique do update set status = 'pending', added_at = now()
   where crm.campaign_contacts.status = 'removed';
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.add_campaign_recipients(uuid, uuid[]) is 'Adds customers to a campaign''s recipients by hand (pending until executeCampaign). Needs campaigns:update.';
grant execute on function crm.add_campaign_recipients(uuid, uuid[]) to crm_user;

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
    on conflict (organization_id, campaign_id, customer_id) do nothing$q$, crm.segment_sql(f))
    using f, c.id, c.organization_id;
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.add_campaign_segment(uuid, uuid) is 'Adds the customers a segment selects now to a campaign''s recipients (pending). Needs campaigns:update.';
grant execute on function crm.add_campaign_segment(uuid, uuid) to crm_user;

create or replace function crm.remove_campaign_recipients(campaign_id uuid, customer_ids uuid[]) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  c crm.campaigns := crm_private.campaign_for_change(campaign_id);
  n int;
begin
  -- A queued message not yet handed to a provider is cancelled with it.
  update crm.messages m set status = 'cancelled', error_message = 'Removed from the campaign.'
   where m.organization_id = c.organization_id and m.campaign_id = c.id and m.customer_id = any (customer_ids) and m.status = 'pending';
  insert into crm.campaign_contacts (organization_id, campaign_id, customer_id, source, status)
  select c.organization_id, c.id, i, 'manual', 'removed' from (select distinct unnest(customer_ids) as i) u
   where exists (select 1 from crm.customers x where x.organization_id = c.organization_id and x.id = u.i)
  on conflict on constraint campaign_contacts_customer_unique do update set status = 'removed'
   where crm.campaign_contacts.status in ('pending', 'skipped', 'queued')
     and not exists (select 1 from crm.messages m where m.organization_id = crm.campaign_contacts.organization_id
                        and m.id = crm.campaign_contacts.message_id and m.status <> 'cancelled');
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function crm.remove_campaign_recipients(uuid, uuid[]) is 'Removes customers from a campaign (also a segment''s members: they stay out when it executes); a message already handed to a provider cannot be taken back. Needs campaigns:update.';
grant execute on function crm.remove_campaign_recipients(uuid, uuid[]) to crm_user;

-- The fan-out --------------------------------------------------------------------------------------------
-- executeCampaign: one INSERT … SELECT from the recipients (the segment's members now, plus those added
-- by hand, minus those removed) into crm.messages, rendered per recipient, skipping anyone without an
-- address, opted out or suppressed; each customer at most once per campaign (the unique index
-- messages_campaign_customer_unique; concurrent executions also wait for each other on the campaign row),
-- so executing again after a pause queues only those not queued yet.
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
    cond := crm.segment_sql(f);
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
comment on function crm.execute_campaign(uuid, timestamptz) is 'Queues the campaign''s messages (one INSERT … SELECT): to its segment''s members and the recipients added by hand, once per customer, skipping anyone opted out, suppressed or without an address; rendered from the template. scheduledFor: send later (default now). Activates a planned or paused campaign; executing again queues only customers not queued yet. Needs campaigns:execute.';
grant execute on function crm.execute_campaign(uuid, timestamptz) to crm_user;

-- Metrics -----------------------------------------------------------------------------------------------
drop type if exists crm.campaign_performance cascade;
create type crm.campaign_performance as (
  campaign_id uuid,
  recipients int,
  skipped int,
  queued int,
  sent int,
  delivered int,
  opened int,
  clicked int,
  bounced int,
  failed int,
  unsubscribed int,
  conversions int,
  attributed_revenue numeric,
  actual_cost numeric,
  cost_per_conversion numeric,
  roi numeric,
  conversion_window_days int
);
comment on type crm.campaign_performance is 'A campaign''s metrics, computed from its messages, recipients and the recipients'' orders (docs/campaigns.md#metrics).';
comment on column crm.campaign_performance.queued is 'Messages queued (every message the campaign created, whatever became of it).';
comment on column crm.campaign_performance.sent is 'Messages a provider accepted.';
comment on column crm.campaign_performance.conversions is 'Paid orders by recipients placed within conversionWindowDays after their message was sent.';
comment on column crm.campaign_performance.attributed_revenue is 'What those orders brought in (paid minus refunded).';
comment on column crm.campaign_performance.cost_per_conversion is 'actualCost / conversions (empty without conversions).';
comment on column crm.campaign_performance.roi is '(attributedRevenue − actualCost) / actualCost (empty while actualCost is 0).';

create or replace function crm_private.campaign_performance(org uuid, campaign uuid) returns crm.campaign_performance
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  with c as (
    select x.id, x.actual_cost,
           coalesce(x.conversion_window_days, (select s.conversion_window_days from crm.messaging_settings s where s.organization_id = org), 7) as win
      from crm.campaigns x where x.organization_id = org and x.id = campaign
  ), m as (
    select count(*)::int as queued,
           count(*) filter (where x.sent_at is not null)::int as sent,
           count(*) filter (where x.delivered_at is not null)::int as delivered,
           count(*) filter (where x.opened_at is not null)::int as opened,
           count(*) filter (where x.clicked_at is not null)::int as clicked,
           count(*) filter (where x.status = 'bounced')::int as bounced,
           count(*) filter (where x.status = 'failed')::int as failed
      from crm.messages x where x.organization_id = org and x.campaign_id = campaign
  ), r as (
    select count(*) filter (where cc.status <> 'removed')::int as recipients,
           count(*) filter (where cc.status = 'skipped')::int as skipped,
           count(*) filter (where cc.unsubscribed_at is not null)::int as unsubscribed
      from crm.campaign_contacts cc where cc.organization_id = org and cc.campaign_id = campaign
  ), conv as (
    select count(distinct o.id)::int as conversions, coalesce(sum(o.paid_amount - o.refunded_amount), 0) as revenue
      from crm.messages x
      join c on true
      join crm.orders o on o.organization_id = org and o.customer_id = x.customer_id
                       and o.ordered_at >= x.sent_at and o.ordered_at < x.sent_at + make_interval(days => c.win)
                       and o.status in ('paid', 'partially_paid')
     where x.organization_id = org and x.campaign_id = campaign and x.sent_at is not null
  )
  select c.id, r.recipients, r.skipped, m.queued, m.sent, m.delivered, m.opened, m.clicked, m.bounced, m.failed, r.unsubscribed,
         conv.conversions, conv.revenue, c.actual_cost,
         case when conv.conversions > 0 then round(c.actual_cost / conv.conversions, 2) end,
         case when c.actual_cost > 0 then round((conv.revenue - c.actual_cost) / c.actual_cost, 4) end,
         c.win
    from c, m, r, conv
$$;

create or replace function crm.campaign_metrics(campaign_id uuid) returns crm.campaign_performance
  language plpgsql stable security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  result crm.campaign_performance;
begin
  perform crm_private.require_permission('campaigns:read');
  result := crm_private.campaign_performance(crm.current_org_id(), campaign_id);
  if result.campaign_id is null or not exists (select 1 from crm.campaigns x where x.organization_id = crm.current_org_id()
                                                  and x.id = campaign_metrics.campaign_id and x.deleted_at is null) then
    raise exception 'No such campaign.' using errcode = 'CRNFD', column = 'campaign_id';
  end if;
  return result;
end
$$;
comment on function crm.campaign_metrics(uuid) is 'A campaign''s metrics: queued, sent, delivered, opened, clicked, bounced, unsubscribed, conversions, attributed revenue, cost per conversion and ROI — computed from the data. Needs campaigns:read.';
grant execute on function crm.campaign_metrics(uuid) to crm_user;

create or replace function crm.campaigns_metrics(c crm.campaigns) returns crm.campaign_performance
  language sql stable
  set search_path = pg_catalog, pg_temp
as $$
  select crm.campaign_metrics(c.id)
$$;
comment on function crm.campaigns_metrics(crm.campaigns) is 'The campaign''s metrics (as campaignMetrics).';
grant execute on function crm.campaigns_metrics(crm.campaigns) to crm_user;

-- Engagement (called by the public HTTP endpoints, as the owner) ------------------------------------------
-- Rank of a recipient's state: a later event never moves it back (opened after clicked stays clicked).
create or replace function crm_private.contact_state_rank(status text) returns int
  language sql immutable
as $$
  select case status when 'pending' then 0 when 'skipped' then 0 when 'removed' then 0 when 'queued' then 1 when 'failed' then 2
                     when 'sent' then 3 when 'delivered' then 4 when 'opened' then 5 when 'clicked' then 6
                     when 'bounced' then 7 when 'unsubscribed' then 8 else 0 end
$$;

create or replace function crm_private.advance_contact(org uuid, message uuid, state text, at timestamptz default now()) returns void
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  update crm.campaign_contacts cc
     set status = case when crm_private.contact_state_rank(state) > crm_private.contact_state_rank(cc.status) then state else cc.status end,
         delivered_at = case when state = 'delivered' then coalesce(cc.delivered_at, at) else cc.delivered_at end,
         opened_at = case when state in ('opened', 'clicked') then coalesce(cc.opened_at, at) else cc.opened_at end,
         clicked_at = case when state = 'clicked' then coalesce(cc.clicked_at, at) else cc.clicked_at end,
         bounced_at = case when state = 'bounced' then coalesce(cc.bounced_at, at) else cc.bounced_at end,
         unsubscribed_at = case when state = 'unsubscribed' then coalesce(cc.unsubscribed_at, at) else cc.unsubscribed_at end
    from crm.messages m
   where m.id = message and m.organization_id = org and m.campaign_id is not null
     and cc.organization_id = m.organization_id and cc.campaign_id = m.campaign_id and cc.customer_id = m.customer_id
$$;

-- The unsubscribe page: records the opt-out of the message's customer on its channel. Returns the
-- organization's name and the channel for the confirmation page (null: unknown or forged token).
create or replace function crm_private.unsubscribe(token text, apply boolean default true)
  returns table (organization_name text, channel text, already boolean)
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('unsubscribe', token);
  m crm.messages;
  was boolean;
begin
  select * into m from crm.messages x where x.id = mid;
  if m.id is null then
    return;
  end if;
  was := exists (select 1 from crm.consents k where k.organization_id = m.organization_id and k.customer_id = m.customer_id
                    and k.channel = m.channel and k.contact_id is null and k.status = 'opted_out');
  if apply and not was and m.customer_id is not null then
    perform crm_private.record_consent(m.organization_id, m.customer_id, null, m.channel, false, 'unsubscribe link');
    perform crm_private.advance_contact(m.organization_id, m.id, 'unsubscribed');
    update crm.messages x set status = 'cancelled', error_message = 'The recipient unsubscribed.'
     where x.organization_id = m.organization_id and x.customer_id = m.customer_id and x.channel = m.channel
       and x.status = 'pending' and x.kind = 'marketing';
  end if;
  return query select o.name, m.channel, was from crm.organizations o where o.id = m.organization_id;
end
$$;

create or replace function crm_private.record_open(token text) returns boolean
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('open', token);
  org uuid;
begin
  update crm.messages x set opened_at = coalesce(x.opened_at, now()) where x.id = mid returning x.organization_id into org;
  if org is null then
    return false;
  end if;
  perform crm_private.advance_contact(org, mid, 'opened');
  return true;
end
$$;

-- A click: the target must be a link of the message itself (no open redirect).
create or replace function crm_private.record_click(token text, url text) returns boolean
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  mid uuid := crm_private.verify_message_token('click', token);
  org uuid;
begin
  if url is null or url !~* '^https?://' then
    return false;
  end if;
  update crm.messages x set clicked_at = coalesce(x.clicked_at, now()), opened_at = coalesce(x.opened_at, now())
   where x.id = mid and (position('href="' || url || '"' in x.body) > 0
                         or position('href="' || replace(url, '&', '&amp;') || '"' in x.body) > 0)
  returning x.organization_id into org;
  if org is null then
    return false;
  end if;
  perform crm_private.advance_contact(org, mid, 'clicked');
  return true;
end
$$;

-- A provider notification about a message it accepted (SES through SNS): delivered, bounce (permanent:
-- the address is suppressed) or complaint (suppressed). Also reconciles a message whose send was not
-- recorded (status sending): the provider accepted it, so it is sent. Returns the messages touched.
create or replace function crm_private.record_provider_event(provider_message_id text, event text, permanent boolean,
                                                             addresses text[], detail text, message_id uuid default null)
  returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  m crm.messages;
  n int := 0;
begin
  for m in select * from crm.messages x
            where (x.provider_message_id = record_provider_event.provider_message_id and record_provider_event.provider_message_id is not null)
               or x.id = record_provider_event.message_id
            for update loop
    n := n + 1;
    if m.status = 'sending' then
      update crm.messages x set status = 'sent', sent_at = now(), provider_message_id = coalesce(x.provider_message_id, record_provider_event.provider_message_id),
                                lease_expires_at = null where x.id = m.id;
      update crm.campaign_contacts cc set status = 'sent', sent_at = now()
       where cc.organization_id = m.organization_id and cc.campaign_id = m.campaign_id and cc.customer_id = m.customer_id
         and cc.status in ('queued', 'failed');
    end if;
    if event = 'delivery' then
      update crm.messages x set status = case when x.status in ('sent', 'sending') then 'delivered' else x.status end,
                                delivered_at = coalesce(x.delivered_at, now()) where x.id = m.id;
      perform crm_private.advance_contact(m.organization_id, m.id, 'delivered');
    elsif event = 'bounce' and permanent then
      update crm.messages x set status = 'bounced', bounced_at = coalesce(x.bounced_at, now()), error_message = left(detail, 2000) where x.id = m.id;
      perform crm_private.advance_contact(m.organization_id, m.id, 'bounced');
      insert into crm.suppressions (organization_id, channel, address, reason, note, created_by)
      select m.organization_id, m.channel, a, 'hard_bounce', left(detail, 1000), null
        from unnest(coalesce(addresses, array[m.recipient])) a
      on conflict (organization_id, channel, address) do nothing;
    elsif event = 'complaint' then
      insert into crm.suppressions (organization_id, channel, address, reason, note, created_by)
      select m.organization_id, m.channel, a, 'complaint', left(detail, 1000), null
        from unnest(coalesce(addresses, array[m.recipient])) a
      on conflict (organization_id, channel, address) do nothing;
      if m.customer_id is not null then
        perform crm_private.record_consent(m.organization_id, m.customer_id, null, m.channel, false, 'complaint');
      end if;
      perform crm_private.advance_contact(m.organization_id, m.id, 'unsubscribed');
    end if;
  end loop;
  return n;
end
$$;

-- Queuing a message from a template for a set of customers (automations) -------------------------------
-- Renders like the fan-out; once per dedupe key; honours consent and suppression. Returns how many
-- were queued.
create or replace function crm_private.queue_template_messages(org uuid, template uuid, automation text, customer_ids uuid[],
                                                               dedupe_keys text[], scheduled_for timestamptz default null)
  returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  t crm.message_templates;
  n int;
begin
  select * into t from crm.message_templates x where x.organization_id = org and x.id = template;
  if t.id is null or cardinality(customer_ids) = 0 then
    return 0;
  end if;
  with keys as (
    select k.secret, k.public_url from crm_private.messaging_keys k
  ), targets as (
    select u.customer_id, u.dedupe_key, gen_random_uuid() as message_id
      from unnest(customer_ids, dedupe_keys) as u(customer_id, dedupe_key)
  ), prepared as (
    select tg.*, x.name, x.level_id, pc.id as contact_id, pc.first_name, pc.last_name,
           case when t.channel = 'email' then coalesce(x.email::text, pc.email::text) else coalesce(x.phone, pc.mobile, pc.phone) end as address
      from targets tg
      join crm.customers x on x.organization_id = org and x.id = tg.customer_id and x.deleted_at is null
      left join crm.contacts pc on pc.organization_id = org and pc.customer_id = x.id and pc.is_primary and pc.deleted_at is null
  ), inserted as (
    insert into crm.messages (id, organization_id, customer_id, contact_id, channel, kind, recipient, subject, body, scheduled_for,
                              template_id, automation, dedupe_key)
    select p.message_id, org, p.customer_id, p.contact_id, t.channel, 'marketing', p.address,
           crm_private.render_text(t.subject, false, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name, null),
           crm_private.render_body(t.body, t.channel, v.first_name, v.last_name, l.name::text, coalesce(b.balance_after, 0), o.name,
                                   k.public_url || '/unsubscribe/' || crm_private.sign_message('unsubscribe', p.message_id, k.secret)),
           coalesce(scheduled_for, now()), t.id, automation, p.dedupe_key
      from prepared p
      cross join keys k
      join crm.organizations o on o.id = org
      cross join lateral (select coalesce(p.first_name, split_part(p.name, ' ', 1)) as first_name,
                                 coalesce(nullif(p.last_name, ''), nullif(substr(p.name, length(split_part(p.name, ' ', 1)) + 2), ''), '') as last_name) v
      left join crm.customer_levels l on l.organization_id = org and l.id = p.level_id
      left join lateral (select lg.balance_after from crm.loyalty_ledger lg
                          where lg.organization_id = org and lg.customer_id = p.customer_id order by lg.id desc limit 1) b on true
     where crm.may_receive(org, p.customer_id, t.channel, p.address)
    on conflict (organization_id, dedupe_key) where messages.dedupe_key is not null do nothing
    returning 1
  )
  select count(*) into n from inserted;
  if n > 0 then
    perform crm_private.wake_sender(scheduled_for);
  end if;
  return n;
end
$$;

-- For other modules (finance's overdue notices, …): queue one e-mail or SMS to a customer, with your
-- own subject and body (already rendered; e-mail bodies are HTML), honouring consent and the
-- suppression list like every send path. Returns the message id, or null when the customer may not
-- receive it (no address, opted out, suppressed) or `key` (a dedupe key: once per key) was used before.
drop function if exists crm_private.enqueue_message(uuid, uuid, text, text, text, text, text, timestamptz);
create or replace function crm_private.enqueue_message(org uuid, customer uuid, channel text, subject text, body text,
                                                       key text default null, kind text default 'transactional',
                                                       scheduled_for timestamptz default null)
  returns uuid
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  address text := crm.recipient_address(org, customer, enqueue_message.channel);
  mid uuid;
begin
  if not crm.may_receive(org, customer, enqueue_message.channel, address) then
    return null;
  end if;
  insert into crm.messages as x (organization_id, customer_id, channel, kind, recipient, subject, body, scheduled_for, automation, dedupe_key)
  values (org, customer, enqueue_message.channel, enqueue_message.kind, address, enqueue_message.subject, enqueue_message.body,
          coalesce(enqueue_message.scheduled_for, now()), 'notice', enqueue_message.key)
  on conflict (organization_id, dedupe_key) where x.dedupe_key is not null do nothing
  returning x.id into mid;
  if mid is not null then
    perform crm_private.wake_sender(enqueue_message.scheduled_for);
  end if;
  return mid;
end
$$;

-- Lifecycle automations -----------------------------------------------------------------------------------
-- Welcome: queued in the transaction that creates the customer (a statement trigger: an import of
-- 10,000 customers is one insert).
create or replace function crm_private.tg_welcome_messages() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  s record;
begin
  for s in select ms.organization_id, ms.welcome_template_id, array_agg(n.id) as ids
             from crm.messaging_settings ms
             join new_rows n on n.organization_id = ms.organization_id
            where ms.welcome_enabled and ms.welcome_template_id is not null
            group by ms.organization_id, ms.welcome_template_id loop
    perform crm_private.queue_template_messages(s.organization_id, s.welcome_template_id, 'welcome', s.ids,
                                                array(select 'welcome:' || i::text from unnest(s.ids) i));
  end loop;
  return null;
end
$$;
drop trigger if exists _350_welcome_message on crm.customers;
create trigger _350_welcome_message after insert on crm.customers referencing new table as new_rows
  for each statement execute function crm_private.tg_welcome_messages();

-- Birthday: customers whose birthday is today in the organization's time zone, once per year. A
-- 29 February birthday is celebrated on 28 February in years without one.
-- Inactivity: customers who bought before but have no paid order for inactivity_days; once per
-- episode (the episode is named by the last paid order: a new purchase starts a new one).
-- Run by the daily tenant jobs (crm_jobs below, as the organization's system principal); queuing
-- needs the owner (the queue and the signing key are not the caller's), hence SECURITY DEFINER with an
-- explicit check of the caller. Returns the messages queued.
create or replace function crm.run_message_automation(automation text, as_of timestamptz default null) returns int
  language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  org uuid := crm.current_org_id();
  s crm.messaging_settings;
  at timestamptz := coalesce(as_of, now());
  today date := (coalesce(as_of, now()) at time zone crm_private.org_timezone(crm.current_org_id()))::date;
  leap boolean;
  ids uuid[];
  keys text[];
begin
  if org is null or not (crm.current_user_id() = crm.system_principal_id(org) or crm.has_permission('settings:manage')) then
    raise exception 'Automations run as the organization''s system principal.' using errcode = 'CRFBD';
  end if;
  select * into s from crm.messaging_settings x where x.organization_id = org;
  if s.id is null then
    return 0;
  end if;
  if automation = 'birthday' then
    if not s.birthday_enabled or s.birthday_template_id is null then
      return 0;
    end if;
    leap := extract(day from (date_trunc('year', today) + interval '2 months' - interval '1 day')) = 29;
    select array_agg(c.id), array_agg('birthday:' || c.id::text || ':' || extract(year from today)::text) into ids, keys
      from crm.customers c
     where c.organization_id = org and c.deleted_at is null and c.birth_date is not null
       and ((extract(month from c.birth_date) = extract(month from today) and extract(day from c.birth_date) = extract(day from today))
            or (not leap and extract(month from c.birth_date) = 2 and extract(day from c.birth_date) = 29
                and extract(month from today) = 2 and extract(day from today) = 28));
    return crm_private.queue_template_messages(org, s.birthday_template_id, 'birthday', coalesce(ids, '{}'), coalesce(keys, '{}'));
  elsif automation = 'inactivity' then
    if not s.inactivity_enabled or s.inactivity_template_id is null then
      return 0;
    end if;
    select array_agg(l.customer_id), array_agg('inactivity:' || l.customer_id::text || ':' || l.order_id::text) into ids, keys
      from (select distinct on (o.customer_id) o.customer_id, o.id as order_id, o.ordered_at
              from crm.orders o
             where o.organization_id = org and o.status in ('paid', 'partially_paid')
             order by o.customer_id, o.ordered_at desc, o.id desc) l
      join crm.customers c on c.organization_id = org and c.id = l.customer_id and c.deleted_at is null
     where l.ordered_at < at - make_interval(days => s.inactivity_days);
    return crm_private.queue_template_messages(org, s.inactivity_template_id, 'inactivity', coalesce(ids, '{}'), coalesce(keys, '{}'));
  end if;
  raise exception 'Unknown automation "%"; birthday or inactivity.', automation using errcode = 'CRVAL', column = 'automation';
end
$$;
comment on function crm.run_message_automation(text, timestamptz) is E'@behavior -*\nQueues the birthday or inactivity messages due today (the daily tenant jobs call it).';
grant execute on function crm.run_message_automation(text, timestamptz) to crm_user;

create or replace function crm_jobs.send_birthday_messages(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.run_message_automation('birthday', (payload->>'asOf')::timestamptz)::bigint
$$;
grant execute on function crm_jobs.send_birthday_messages(jsonb) to crm_user;

create or replace function crm_jobs.send_inactivity_messages(payload jsonb default '{}'::jsonb) returns bigint
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select crm.run_message_automation('inactivity', (payload->>'asOf')::timestamptz)::bigint
$$;
grant execute on function crm_jobs.send_inactivity_messages(jsonb) to crm_user;

-- Reference guards (a caller's write may only point at rows the caller can see).
select crm_private.guard_references('crm.campaigns');
select crm_private.guard_references('crm.consents');
-- The queue's tables are written only by the owner's functions (crm_user has no insert or update
-- grant on them), so their guard is skipped without a call per row (the fan-out writes 100,000).
drop trigger if exists _950_references_visible on crm.campaign_contacts;
create trigger _950_references_visible before insert or update on crm.campaign_contacts
  for each row when (current_user = 'crm_user') execute function crm_private.tg_references_visible();
drop trigger if exists _950_references_visible on crm.messages;
create trigger _950_references_visible before insert or update on crm.messages
  for each row when (current_user = 'crm_user') execute function crm_private.tg_references_visible();
select crm_private.guard_references('crm.messaging_settings');
