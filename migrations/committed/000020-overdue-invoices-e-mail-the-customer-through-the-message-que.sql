--! Previous: sha1:cadc9240dcf3f079e92807f045ba0c7e381a5022
--! Hash: sha1:586cfc8009c4f5491259631bd6f6f268d8b9d721
--! Message: Overdue invoices e-mail the customer through the message queue

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 700-finance-overdue-email.sql
-- Overdue invoices also e-mail the customer, through the message queue of the messaging module:
-- consent and the suppression list are honoured there (crm_private.enqueue_message), the message is
-- queued in the transaction that marks the invoice (a failed run sends nothing), and its key makes it
-- once per invoice whatever happens to the status later.
create or replace function crm_private.tg_invoice_overdue_notify() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  recipients uuid[];
  org_name text;
  pay text;
begin
  select array_agg(distinct u) into recipients from (
    select c.owner_id as u from crm.customers c where c.organization_id = new.organization_id and c.id = new.customer_id and c.owner_id is not null
    union
    select m.user_id from crm.organization_memberships m
      join crm.roles r on r.id = m.role_id and r.organization_id = m.organization_id and r.is_system and r.name = 'Finance'
     where m.organization_id = new.organization_id and m.is_active) x;
  perform crm_private.notify(new.organization_id, coalesce(recipients, '{}'), 'invoice_overdue',
    format('Invoice %s is overdue', new.number),
    format('%s %s was due on %s.', new.balance, new.currency, to_char(new.due_date, 'YYYY-MM-DD')),
    'invoice', new.id, null,
    jsonb_build_object('number', new.number, 'balance', new.balance::text, 'currency', new.currency, 'dueDate', new.due_date),
    'invoice_overdue:' || new.id::text);
  select o.name into org_name from crm.organizations o where o.id = new.organization_id;
  pay := nullif(btrim(new.payment_instructions), '');
  perform crm_private.enqueue_message(new.organization_id, new.customer_id, 'email',
    format('Invoice %s is overdue', new.number),
    format('<p>Invoice %s from %s, %s %s, was due on %s and is not paid yet.</p>%s',
           crm_private.escape_value(new.number, true), crm_private.escape_value(org_name, true), new.balance, new.currency,
           to_char(new.due_date, 'YYYY-MM-DD'),
           case when pay is null then '' else '<p>' || crm_private.escape_value(pay, true) || '</p>' end),
    'invoice_overdue:' || new.id::text, 'transactional');
  return null;
end
$$;
