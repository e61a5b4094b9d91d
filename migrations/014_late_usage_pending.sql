-- Late usage still to bill, one row per subscription that has some: what the billing run's
-- late-usage reads start from, instead of every late event ever stored.
--
-- Before, the late-usage pass of canceled subscriptions read the whole partial index
-- usage_events_late of the tenant (billed events included, each probed in
-- late_usage_billed) once per shard execution, and a chunk read every late event a
-- subscription ever had: a cost that grew with the history, not with what is left to bill.
--
-- The usage batch that stores a late event inserts its subscription here, in the same
-- statement (so a late event is never without its row); the transaction that bills late
-- events (store.billing.mark_late_billed) deletes the rows of the subscriptions left with
-- none unbilled. Both hold the subscription's row locked (the batch FOR KEY SHARE, the run
-- FOR UPDATE, which conflict), so a row is never deleted while an event for it is being
-- stored. Not part of the audit trail: late_usage_billed stays the record of what was billed.
create table late_usage_pending (
    tenant_id        uuid not null,
    subscription_id  uuid not null,
    since            timestamptz not null default now(),
    primary key (tenant_id, subscription_id)
);

-- What is unbilled now (one pass over the late events, at upgrade time).
insert into late_usage_pending (tenant_id, subscription_id)
select distinct e.tenant_id, e.subscription_id
  from usage_events e
 where e.late
   and not exists (select 1 from late_usage_billed b where b.tenant_id = e.tenant_id and b.event_id = e.event_id);

select enable_tenant_isolation('late_usage_pending'::regclass);
grant select, insert, delete on late_usage_pending to billing_app;
