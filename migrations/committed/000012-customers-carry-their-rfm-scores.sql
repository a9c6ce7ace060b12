--! Previous: sha1:76c7da731c5c58b5e9f59dfd5e92b844072a15df
--! Hash: sha1:d8a9b75d5c29dc0d0450a6044422f847deabde47
--! Message: customers carry their RFM scores

--! split: 001.sql
-- The next migration, one file per concern (NNN-domain.sql). Keep it idempotent (create or replace, drop … if exists).

--! split: 500-customer-rfm-columns.sql
-- Customers carry their latest RFM scores (written by the rfm:score tenant job; read-only for the
-- API: no insert/update grant). The raw values are kept beside the 1–5 scores so a score can be
-- explained and segments can filter on either.
alter table crm.customers
  add column if not exists rfm_recency_score smallint
    constraint customers_rfm_recency_score_range check (rfm_recency_score between 1 and 5),
  add column if not exists rfm_frequency_score smallint
    constraint customers_rfm_frequency_score_range check (rfm_frequency_score between 1 and 5),
  add column if not exists rfm_monetary_score smallint
    constraint customers_rfm_monetary_score_range check (rfm_monetary_score between 1 and 5),
  add column if not exists rfm_score numeric(5, 2)
    constraint customers_rfm_score_range check (rfm_score between 0 and 5),
  add column if not exists rfm_recency_days int
    constraint customers_rfm_recency_days_range check (rfm_recency_days >= 0),
  add column if not exists rfm_order_count int
    constraint customers_rfm_order_count_range check (rfm_order_count >= 0),
  add column if not exists rfm_monetary_value numeric(16, 2),
  add column if not exists rfm_scored_at timestamptz;

create index if not exists customers_organization_id_rfm_score_idx on crm.customers (organization_id, rfm_score);

comment on column crm.customers.rfm_recency_score is 'RFM recency score, 1 (long ago) to 5 (recent); null until the first rfm:score run.';
comment on column crm.customers.rfm_frequency_score is 'RFM frequency score, 1 (few orders) to 5 (many).';
comment on column crm.customers.rfm_monetary_score is 'RFM monetary score, 1 (little spent) to 5 (much).';
comment on column crm.customers.rfm_score is 'Weighted RFM score (0–5), mapped to a customer level through customer_levels.minimum_score.';
comment on column crm.customers.rfm_recency_days is 'Days since the last counted order when last scored.';
comment on column crm.customers.rfm_order_count is 'Counted orders in the lookback window when last scored.';
comment on column crm.customers.rfm_monetary_value is 'Net amount of the counted orders in the lookback window when last scored.';
comment on column crm.customers.rfm_scored_at is 'When rfm:score last scored this customer.';
