-- Foreign keys a billing run paid for once per written row, for nothing the grants do not
-- guarantee already (docs/decisions.md, "No foreign keys on the billing run's writes").
--
-- Each is a per-row trigger running a locking SELECT on the referenced row: measured on a
-- chunk of 2,000 subscriptions, 12-16 ms per constraint, about a third of the database's
-- work for the chunk. What they would catch cannot happen:
-- * outbox.tenant_id, audit_events.tenant_id -> tenants: the application role cannot delete
--   a tenant (it may only select tenants), and row-level security pins every row it writes
--   to the tenant of its transaction, an authenticated one;
-- * billed_periods (tenant_id, subscription_id) -> subscriptions: the application role
--   cannot delete a subscription, and a period is marked billed only by the run that holds
--   the subscription's row locked (FOR UPDATE) in the same transaction.
-- The other foreign keys stay: they guard rows written one at a time by API calls.
alter table outbox drop constraint outbox_tenant_id_fkey;
alter table audit_events drop constraint audit_events_tenant_id_fkey;
alter table billed_periods drop constraint billed_periods_tenant_id_subscription_id_fkey;
