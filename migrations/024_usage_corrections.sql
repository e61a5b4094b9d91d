-- Usage corrections: an event of a sum charge that allows corrections, or of a weighted_sum
-- charge (a seat removed), may carry a negative quantity (docs/pricing.md). Which metric may
-- is a rule of the plan, checked at ingestion (billing/services/usage.py); the table keeps
-- what ingestion accepted. Dropping a CHECK takes a brief ACCESS EXCLUSIVE lock and
-- rewrites nothing.
alter table usage_events drop constraint usage_events_quantity_check;
