-- Messaging, part 4: the message queue (seed 000's MessageQueue, made safe), the local providers'
-- outboxes, and the functions the messages:send worker task claims and records with.
-- docs/campaigns.md#delivery-guarantees.

-- A high-volume table (the fan-out writes a row per recipient): organization_id has no foreign key of
-- its own, the composite keys to the customer and the campaign tie a message to its organization (and
-- delete it with them); indexes are the ones the queue, the keys and the policies need.
create table if not exists crm.messages (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null default crm.current_org_id(),
  customer_id uuid,
  contact_id uuid,
  channel text not null constraint messages_channel_check check (channel in ('email', 'sms')),
  kind text not null default 'marketing' constraint messages_kind_check check (kind in ('marketing', 'transactional')),
  recipient text not null constraint messages_recipient_length check (length(recipient) between 3 and 320),
  subject text constraint messages_subject_length check (length(subject) <= 1000),
  body text not null,
  status text not null default 'pending'
    constraint messages_status_check check (status in ('pending', 'sending', 'sent', 'delivered', 'failed', 'bounced', 'cancelled')),
  scheduled_for timestamptz not null default now(),
  sent_at timestamptz,
  delivered_at timestamptz,
  opened_at timestamptz,
  clicked_at timestamptz,
  bounced_at timestamptz,
  attempts int not null default 0,
  next_attempt_at timestamptz,
  lease_expires_at timestamptz,
  claimed_at timestamptz,
  error_message text constraint messages_error_message_length check (length(error_message) <= 2000),
  provider text,
  provider_message_id text,
  campaign_id uuid,
  template_id uuid,
  automation text constraint messages_automation_check check (automation in ('birthday', 'inactivity', 'welcome', 'notice')),
  dedupe_key text constraint messages_dedupe_key_length check (length(dedupe_key) <= 300),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint messages_organization_id_id_key unique (organization_id, id),
  constraint messages_customer_fkey foreign key (organization_id, customer_id) references crm.customers (organization_id, id) on delete cascade,
  constraint messages_contact_fkey foreign key (organization_id, contact_id) references crm.contacts (organization_id, id) on delete set null (contact_id),
  constraint messages_campaign_fkey foreign key (organization_id, campaign_id) references crm.campaigns (organization_id, id) on delete cascade,
  constraint messages_template_fkey foreign key (organization_id, template_id) references crm.message_templates (organization_id, id) on delete set null (template_id)
);
-- At most one message per customer per campaign: the fan-out's guarantee under concurrent executions.
create unique index if not exists messages_campaign_customer_unique on crm.messages (organization_id, campaign_id, customer_id)
  where campaign_id is not null;
-- Automations: once per key (birthday: customer and year; inactivity: customer and episode; welcome: customer).
create unique index if not exists messages_dedupe_key_unique on crm.messages (organization_id, dedupe_key) where dedupe_key is not null;
create index if not exists messages_organization_id_customer_id_idx on crm.messages (organization_id, customer_id);
-- Partial: most messages have neither (campaign messages name their template through the campaign).
drop index if exists crm.messages_organization_id_contact_id_idx;
drop index if exists crm.messages_organization_id_template_id_idx;
create index if not exists messages_organization_id_contact_id_partial_idx on crm.messages (organization_id, contact_id) where contact_id is not null;
create index if not exists messages_organization_id_template_id_partial_idx on crm.messages (organization_id, template_id) where template_id is not null;
alter table crm.messages drop constraint if exists messages_organization_id_fkey;
drop index if exists crm.messages_organization_id_status_idx;
drop index if exists crm.messages_organization_id_claimed_at_idx;
-- The worker's queue: due pending messages, and leases to reconcile.
create index if not exists messages_due_idx on crm.messages (scheduled_for) where status = 'pending';
create index if not exists messages_sending_idx on crm.messages (lease_expires_at) where status = 'sending';
create index if not exists messages_provider_message_id_idx on crm.messages (provider_message_id) where provider_message_id is not null;
comment on table crm.messages is E'@behavior -insert -update -delete\nThe message queue: every e-mail and SMS a campaign, an automation or another module queued, rendered, with its delivery state: pending → sending → sent → delivered, or failed, bounced, cancelled. Sent by the messages:send worker task.';
comment on column crm.messages.status is 'pending (waiting for its time, the rate limit or quiet hours) → sending (handed to the provider under a lease) → sent → delivered; failed (permanent error or retries used up), bounced, cancelled (opted out or suppressed before sending, campaign deleted).';
comment on column crm.messages.attempts is 'Provider calls made so far (transient errors are retried with exponential backoff).';
comment on column crm.messages.provider_message_id is 'The provider''s id of the accepted message (SES MessageId, SMS provider id, local-…).';
comment on column crm.messages.lease_expires_at is E'@behavior -*';
comment on column crm.messages.claimed_at is E'@behavior -*';
comment on column crm.messages.dedupe_key is E'@behavior -*';
comment on constraint messages_campaign_fkey on crm.messages is E'@fieldName campaign\n@foreignFieldName messages';

alter table crm.messages enable row level security;
drop policy if exists messages_select on crm.messages;
create policy messages_select on crm.messages for select
  using (organization_id = (select crm.current_org_id()) and (select crm.has_permission('campaigns:read')));
grant select on crm.messages to crm_user;

drop trigger if exists _100_updated_at on crm.messages;
create trigger _100_updated_at before update on crm.messages for each row execute function crm_private.tg_set_updated_at();

-- campaign_contacts.message_id has no foreign key: messages go only with their campaign or customer,
-- which take the recipient row with them.
alter table crm.campaign_contacts drop constraint if exists campaign_contacts_message_fkey;

-- Messages claimed per organization and minute: the send rate's counter.
create table if not exists crm_private.send_counters (
  organization_id uuid not null,
  minute timestamptz not null,
  claimed int not null default 0,
  primary key (organization_id, minute)
);
alter table crm_private.send_counters enable row level security;
drop policy if exists no_access on crm_private.send_counters;
create policy no_access on crm_private.send_counters using (false);

-- The local providers' outboxes (development and tests): what "left the machine". The idempotency
-- key (the message id) makes a repeated hand-over a no-op, and lets the worker reconcile a message
-- whose send it did not record.
alter table crm_private.email_outbox add column if not exists idempotency_key text;
alter table crm_private.email_outbox add column if not exists html text;
alter table crm_private.email_outbox add column if not exists headers jsonb;
create unique index if not exists email_outbox_idempotency_key_unique on crm_private.email_outbox (idempotency_key) where idempotency_key is not null;

create table if not exists crm_private.sms_outbox (
  id bigint generated always as identity primary key,
  idempotency_key text,
  to_number text not null,
  body text not null,
  created_at timestamptz not null default now()
);
create unique index if not exists sms_outbox_idempotency_key_unique on crm_private.sms_outbox (idempotency_key) where idempotency_key is not null;
alter table crm_private.sms_outbox enable row level security;
drop policy if exists no_access on crm_private.sms_outbox;
create policy no_access on crm_private.sms_outbox using (false);

-- Claiming ----------------------------------------------------------------------------------------------
-- Run by the worker (as the owner) in its own short transaction:
-- 1. cancels due marketing messages whose recipient opted out or was suppressed since queuing;
-- 2. locks up to `batch` due pending messages (FOR UPDATE SKIP LOCKED: workers never take the same
--    row), of active campaigns only, outside the organization's quiet hours and within its send rate
--    for the current minute;
-- 3. marks them sending with a lease, counts the attempt, and returns them with their link tokens.
create or replace function crm_private.claim_messages(batch int, lease_seconds int)
  returns table (id uuid, organization_id uuid, channel text, kind text, recipient text, subject text, body text, attempts int,
                 unsubscribe_token text, open_token text, click_token text, public_url text)
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
  delete from crm_private.send_counters c where c.minute < date_trunc('minute', now()) - interval '1 hour';
  return query
  with held as (
    -- Organizations in their quiet hours now, or past this minute's send rate: their messages wait.
    select s.organization_id
      from crm.messaging_settings s
      left join crm_private.send_counters k on k.organization_id = s.organization_id and k.minute = date_trunc('minute', now())
     where coalesce(k.claimed, 0) >= s.send_rate_per_minute
        or (s.quiet_hours_start is not null
            and (select case when s.quiet_hours_start <= s.quiet_hours_end
                             then h >= s.quiet_hours_start and h < s.quiet_hours_end
                             else h >= s.quiet_hours_start or h < s.quiet_hours_end end
                   from extract(hour from now() at time zone crm_private.org_timezone(s.organization_id)) h))
  ), candidates as (
    select m.id, m.organization_id, m.scheduled_for,
           crm.may_receive(m.organization_id, m.customer_id, m.channel, m.recipient) as ok
      from crm.messages m
     where m.status = 'pending' and m.scheduled_for <= now() and (m.next_attempt_at is null or m.next_attempt_at <= now())
       and m.organization_id not in (select h.organization_id from held h)
       and (m.campaign_id is null or exists (select 1 from crm.campaigns c where c.organization_id = m.organization_id and c.id = m.campaign_id
                                                and c.status = 'active' and c.deleted_at is null))
     order by m.scheduled_for
     limit batch
       for update of m skip locked
  ), cancelled as (
    -- Opted out or suppressed since it was queued: never sent.
    update crm.messages m set status = 'cancelled', error_message = 'The recipient opted out or is suppressed.'
      from candidates c where m.id = c.id and not c.ok
    returning m.id, m.organization_id, m.campaign_id, m.customer_id
  ), cancelled_contacts as (
    update crm.campaign_contacts cc set status = 'skipped', skip_reason = 'Opted out or suppressed.'
      from cancelled x
     where x.campaign_id is not null and cc.organization_id = x.organization_id and cc.campaign_id = x.campaign_id
       and cc.customer_id = x.customer_id and cc.status = 'queued'
    returning 1
  ), orgs as (
    select o.organization_id,
           coalesce(s.send_rate_per_minute, 6000)
             - coalesce((select k.claimed from crm_private.send_counters k
                          where k.organization_id = o.organization_id and k.minute = date_trunc('minute', now())), 0) as allowance,
           case when s.quiet_hours_start is null then false
                else (select case when s.quiet_hours_start <= s.quiet_hours_end
                                  then h >= s.quiet_hours_start and h < s.quiet_hours_end
                                  else h >= s.quiet_hours_start or h < s.quiet_hours_end end
                        from extract(hour from now() at time zone crm_private.org_timezone(o.organization_id)) h) end as quiet
      from (select distinct c.organization_id from candidates c where c.ok) o
      left join crm.messaging_settings s on s.organization_id = o.organization_id
  ), picked as (
    select c.id, c.organization_id
      from (select c.*, row_number() over (partition by c.organization_id order by c.scheduled_for) as n from candidates c where c.ok) c
      join orgs o on o.organization_id = c.organization_id
     where not o.quiet and c.n <= o.allowance
     order by c.scheduled_for
     limit batch
  ), counted as (
    insert into crm_private.send_counters (organization_id, minute, claimed)
    select p.organization_id, date_trunc('minute', now()), count(*) from picked p group by p.organization_id
    on conflict (organization_id, minute) do update set claimed = crm_private.send_counters.claimed + excluded.claimed
    returning 1
  ), keys as (
    select k.secret, k.public_url from crm_private.messaging_keys k
  ), claimed as (
    update crm.messages m
       set status = 'sending', attempts = m.attempts + 1, claimed_at = now(),
           lease_expires_at = now() + make_interval(secs => lease_seconds), next_attempt_at = null
      from picked p, keys k
     where m.id = p.id
    returning m.id, m.organization_id, m.channel, m.kind, m.recipient, m.subject, m.body, m.attempts,
              crm_private.sign_message('unsubscribe', m.id, k.secret) as unsubscribe_token, crm_private.sign_message('open', m.id, k.secret) as open_token,
              crm_private.sign_message('click', m.id, k.secret) as click_token, k.public_url
  )
  select * from claimed;
end
$$;

-- Messages whose lease ran out while sending (the worker died between claiming and recording): the
-- worker asks the provider about each (reconciliation by idempotency key) before it sends anything.
create or replace function crm_private.expired_leases(batch int)
  returns table (id uuid, channel text, provider text, attempts int)
  language sql volatile
  set search_path = pg_catalog, pg_temp
as $$
  select m.id, m.channel, m.provider, m.attempts from crm.messages m
   where m.status = 'sending' and m.lease_expires_at < now()
   order by m.lease_expires_at
   limit batch
     for update skip locked
$$;

-- Records the outcomes of a batch in one statement per outcome, and moves the campaign recipients.
-- outcomes: [{"id", "outcome": "sent" | "retry" | "failed" | "released", "provider", "providerMessageId", "error", "retryInMs"}]
create or replace function crm_private.record_message_outcomes(outcomes jsonb, max_attempts int) returns int
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  n int;
begin
  with o as (
    select x.id, x.outcome, x.provider, x."providerMessageId" as provider_message_id, left(x.error, 2000) as error, x."retryInMs" as retry_in_ms
      from jsonb_to_recordset(outcomes) as x(id uuid, outcome text, provider text, "providerMessageId" text, error text, "retryInMs" bigint)
  ), updated as (
    update crm.messages m
       set status = case
                      when o.outcome = 'sent' then 'sent'
                      when o.outcome = 'released' then 'pending'
                      when o.outcome = 'retry' and m.attempts < max_attempts then 'pending'
                      else 'failed' end,
           sent_at = case when o.outcome = 'sent' then coalesce(m.sent_at, now()) else m.sent_at end,
           provider = coalesce(o.provider, m.provider),
           provider_message_id = coalesce(o.provider_message_id, m.provider_message_id),
           error_message = case when o.outcome = 'sent' then null when o.outcome = 'released' then m.error_message else o.error end,
           next_attempt_at = case when o.outcome = 'retry' and m.attempts < max_attempts
                                  then now() + make_interval(secs => coalesce(o.retry_in_ms, 0) / 1000.0) end,
           attempts = case when o.outcome = 'released' then greatest(m.attempts - 1, 0) else m.attempts end,
           lease_expires_at = null
      from o
     where m.id = o.id and m.status = 'sending'
    returning m.id, m.organization_id, m.campaign_id, m.customer_id, m.status, m.sent_at
  ), contacts as (
    update crm.campaign_contacts cc
       set status = case when u.status = 'sent' then 'sent' else 'failed' end,
           sent_at = case when u.status = 'sent' then u.sent_at else cc.sent_at end,
           failed_at = case when u.status = 'failed' then now() else cc.failed_at end
      from updated u
     where u.campaign_id is not null and u.status in ('sent', 'failed')
       and cc.organization_id = u.organization_id and cc.campaign_id = u.campaign_id and cc.customer_id = u.customer_id and cc.status = 'queued'
    returning 1
  )
  select count(*) into n from updated;
  return n;
end
$$;
