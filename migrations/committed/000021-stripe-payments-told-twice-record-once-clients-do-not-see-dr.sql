--! Previous: sha1:586cfc8009c4f5491259631bd6f6f268d8b9d721
--! Hash: sha1:c617b40371c6ff19d92933469ceb83360ecb23cc
--! Message: Stripe payments told twice record once; clients do not see draft invoices; clicks on escaped links

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 720-payment-and-client-fixes.sql
-- One Stripe payment can arrive as two events (payment_intent.succeeded and checkout.session.completed
-- carry the same PaymentIntent): a payment already recorded for the same provider reference on the
-- invoice is a replay too, whatever the event id.
create or replace function crm_private.record_provider_payment(org uuid, provider text, event_id text, invoice_id uuid, amount_minor bigint,
                                                               currency text, reference text)
  returns crm.invoice_payments
  language plpgsql volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  i crm.invoices;
  p crm.invoice_payments;
begin
  perform set_config('jwt.claims.org', org::text, true), set_config('jwt.claims.sub', crm.system_principal_id(org)::text, true);
  -- The invoice first, locked: replays of one payment queue here, then find the payment recorded.
  select * into i from crm.invoices x where x.organization_id = org and x.id = record_provider_payment.invoice_id for update;
  if i.id is null then
    raise exception 'No such invoice.' using errcode = 'CRNFD', column = 'invoiceId';
  end if;
  select * into p from crm.invoice_payments x
   where x.organization_id = org and x.provider = record_provider_payment.provider
     and (x.provider_event_id = event_id
          or (x.invoice_id = i.id and record_provider_payment.reference is not null and x.reference = record_provider_payment.reference))
   limit 1;
  if p.id is not null then
    return p;  -- a replay
  end if;
  if upper(currency) <> i.currency then
    raise exception 'The payment is in %, the invoice in %.', upper(currency), i.currency using errcode = 'CRVAL', column = 'currency';
  end if;
  return crm_private.invoice_payment(i, amount_minor / power(10::numeric, crm_private.currency_scale(i.currency)), 'card', reference,
                                     now(), null, null, provider, event_id);
end
$$;

-- A client principal sees its customer's invoices once they are issued: a draft is not the customer's yet.
drop policy if exists invoices_select on crm.invoices;
create policy invoices_select on crm.invoices for select
  using (organization_id = (select crm.current_org_id())
         and (((select crm.has_permission('invoices:read')) or created_by = (select crm.current_user_id()))
              and ((select crm.has_permission('customers:read_all')) or customer_id = any ((select crm.visible_customer_ids())::uuid[]))
              or ((select crm.has_permission('invoices:read_client')) and customer_id = (select crm.client_customer_id())
                  and status <> 'draft')));

-- A click redirects only to a link of that very message. The sender decodes every HTML escape of a
-- link before it signs the redirect, so the body is matched with the link escaped the same way (an
-- address holding a placeholder value such as O'Brien was refused before).
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
                         or position('href="' || replace(url, '&', '&amp;') || '"' in x.body) > 0
                         or position('href="' || crm_private.escape_value(url, true) || '"' in x.body) > 0)
  returning x.organization_id into org;
  if org is null then
    return false;
  end if;
  perform crm_private.advance_contact(org, mid, 'clicked');
  return true;
end
$$;
