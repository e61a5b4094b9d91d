-- Idempotency keys kept BILLING_IDEMPOTENCY_RETENTION_DAYS days (`billing maintenance`, as the
-- owner): the oldest keys of a tenant are found through this index, a batch at a time, and
-- deleted in short transactions (row locks only). It leads with tenant_id like every key of a
-- tenant table (docs/scaling.md); within a tenant, keys arrive in time order, so inserts land
-- at the end of the tenant's range.
--
-- Upgrade: built in the migration's transaction, which blocks writes to idempotency_keys
-- while it builds (a few seconds per million keys); on a large table create it beforehand
-- with CREATE INDEX CONCURRENTLY under this name, and this statement does nothing.
create index if not exists idempotency_keys_created on idempotency_keys (tenant_id, created_at);
