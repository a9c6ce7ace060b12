-- References a caller sets on commerce records must point at rows the caller can see (the reference
-- guard of the hardening migration; business functions run as the owner and check for themselves).
select crm_private.guard_references(t::regclass)
  from unnest(array['crm.products', 'crm.promotions', 'crm.customer_promotions', 'crm.customer_level_changes',
                    'crm.orders', 'crm.order_items', 'crm.order_discounts', 'crm.order_events',
                    'crm.transactions', 'crm.loyalty_ledger']) t;
