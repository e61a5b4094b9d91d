-- Migration 015's trigger function, inserting the late_usage_pending rows in key order.
--
-- Two transactions of a tenant storing usage at once (BILLING_USAGE_GROUPS_IN_FLIGHT, or
-- the Kafka path beside the API) take every lock of the store statement in key order, so
-- they wait on each other in one order, never in a cycle: the event keys, the totals, and
-- here the pending rows (ON CONFLICT DO NOTHING waits on a concurrent insert of the same
-- row). `select distinct` alone may come out of a hash in any order.
create or replace function record_late_usage_pending() returns trigger language plpgsql as $$
begin
    insert into late_usage_pending (tenant_id, subscription_id)
    select distinct tenant_id, subscription_id from inserted_events where late
     order by tenant_id, subscription_id
    on conflict do nothing;
    return null;
end $$;
