-- usage_events partitioned by month of period_start, so that raw usage can be retained by
-- dropping whole partitions (docs/usage.md, "Partitions and retention"), and deduplicated
-- through a narrow key table instead of the table's primary key.
--
-- Why a key table: PostgreSQL requires the partition key in every unique index, so a
-- primary key (tenant_id, event_id, period_start) would let the same event id with another
-- time (another period, another partition) count twice. usage_event_ids holds one row per
-- (tenant, event id) ever stored, unpartitioned: the dedup stays exact forever, across
-- partitions. The event id is kept as md5(event_id)::uuid (16 bytes instead of the text's 37
-- or more): the index entry is about half as wide. Two distinct ids of one tenant would have
-- to collide on 128 bits for one to be dropped as a duplicate.
--
-- The raw table then needs no unique index at all: per event, a heap row and the
-- usage_events_period entry, plus the key table's narrow row and its index entry.
--
-- Upgrade: the rows are moved in this migration's transaction (ingest waits on the lock
-- for as long as the copy takes: docs/operations.md, "Upgrading to partitioned usage").

alter table usage_events rename to usage_events_unpartitioned;
alter index usage_events_pkey rename to usage_events_unpartitioned_pkey;
alter index usage_events_period rename to usage_events_unpartitioned_period;
alter index usage_events_late rename to usage_events_unpartitioned_late;
drop trigger usage_events_late_pending on usage_events_unpartitioned;

create table usage_events (
    tenant_id        uuid not null,
    event_id         text not null,
    subscription_id  uuid not null,
    metric_code      text not null,
    quantity         numeric not null,
    occurred_at      timestamptz not null,
    period_start     timestamptz not null,
    period_end       timestamptz not null,
    late             boolean not null default false,
    properties       jsonb,
    received_at      timestamptz not null default now()
) partition by range (period_start);
create index usage_events_period on usage_events (tenant_id, subscription_id, metric_code, period_start);
create index usage_events_late on usage_events (tenant_id, subscription_id) where late;
-- Anything no monthly partition covers (a test clock far in the past or future, a month the
-- maintenance has not created yet) is stored here, never refused; creating the month's
-- partition later moves its rows out (usage_partition_ensure).
create table usage_events_default partition of usage_events default;
select enable_tenant_isolation('usage_events_default');

create table usage_event_ids (
    tenant_id  uuid not null,
    event_key  uuid not null,  -- md5(event_id)::uuid
    primary key (tenant_id, event_key)
);

-- The monthly partition of usage_events holding period starts in [p_month, p_month + 1
-- month), UTC; created if missing. Idempotent. Created apart and then attached: ATTACH takes
-- a SHARE UPDATE EXCLUSIVE lock on usage_events (ingest and reads go on), CREATE ... PARTITION
-- OF an ACCESS EXCLUSIVE one. Rows of that month in the default partition are moved into it
-- first (the default partition is locked meanwhile; it holds few rows, if any). Owner's
-- rights: the scheduler (worker role) calls it to create partitions ahead; no other role may
-- create tables. lock_timeout: a pass that would queue behind a long lock gives up, and the
-- next pass tries again, rather than hold every later statement behind it.
create function usage_partition_ensure(p_month date) returns boolean
    language plpgsql security definer set search_path = public, pg_temp as $$
declare
    lo timestamptz := (date_trunc('month', p_month::timestamp) at time zone 'UTC');
    hi timestamptz := ((date_trunc('month', p_month::timestamp) + interval '1 month') at time zone 'UTC');
    name text := 'usage_events_p' || to_char(p_month, 'YYYY_MM');
begin
    if to_regclass(name) is not null then
        return false;
    end if;
    perform set_config('lock_timeout', '10s', true);
    lock table usage_events_default in access exclusive mode;
    if to_regclass(name) is not null then
        return false;
    end if;
    execute format('create table %I (like usage_events including defaults)', name);
    execute format('insert into %I select * from usage_events_default where period_start >= $1 and period_start < $2',
                   name) using lo, hi;
    delete from usage_events_default where period_start >= lo and period_start < hi;
    execute format('alter table usage_events attach partition %I for values from (%L) to (%L)', name, lo, hi);
    -- Reached through usage_events only (no role has a grant on a partition); forced RLS
    -- all the same, like every table with a tenant_id.
    perform enable_tenant_isolation(name::regclass);
    return true;
end $$;
revoke all on function usage_partition_ensure(date) from public;
grant execute on function usage_partition_ensure(date) to billing_worker;

-- The months that hold data, and this month and the next three.
select usage_partition_ensure(m)
  from (select distinct (date_trunc('month', period_start at time zone 'UTC'))::date as m from usage_events_unpartitioned
        union
        select (date_trunc('month', now() at time zone 'UTC') + n * interval '1 month')::date
          from generate_series(0, 3) as n) months;

insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at, period_start,
                          period_end, late, properties, received_at)
select tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late,
       properties, received_at
  from usage_events_unpartitioned;
insert into usage_event_ids (tenant_id, event_key)
select tenant_id, md5(event_id)::uuid from usage_events_unpartitioned
on conflict do nothing;
drop table usage_events_unpartitioned;

-- Migration 015's trigger, on the partitioned table (after the move: the moved late events
-- have their late_usage_pending rows already).
create trigger usage_events_late_pending after insert on usage_events
    referencing new table as inserted_events
    for each statement execute function record_late_usage_pending();

select enable_tenant_isolation(t) from unnest(array['usage_events', 'usage_event_ids']::regclass[]) as t;
grant select, insert on usage_events to billing_app;
grant select, insert on usage_event_ids to billing_app;

-- delete_test_clock (migration 021) as it was, and the deleted events' dedup keys with them:
-- an event id of a deleted clock may be sent again.
create or replace function delete_test_clock(p_clock uuid) returns integer
    language plpgsql security definer set search_path = public, pg_temp as $$
declare
    t uuid := nullif(pg_catalog.current_setting('billing.tenant_id', true), '')::uuid;
    subs uuid[];
begin
    if t is null then
        raise exception 'delete_test_clock: no tenant set' using errcode = 'insufficient_privilege';
    end if;
    if not (pg_catalog.pg_has_role(session_user, 'billing_worker', 'usage')
            or public.tenant_token_valid(t, pg_catalog.current_setting('billing.tenant_token', true))) then
        raise exception 'tenant % entered without a valid tenant token', t using errcode = 'insufficient_privilege';
    end if;
    perform 1 from test_clocks where tenant_id = t and id = p_clock for update;
    if not found then
        return null;
    end if;
    subs := array(select id from subscriptions where tenant_id = t and test_clock_id = p_clock for update);
    delete from late_usage_billed where tenant_id = t and subscription_id = any(subs);
    delete from late_usage_pending where tenant_id = t and subscription_id = any(subs);
    delete from usage_event_ids k using usage_events e
     where k.tenant_id = t and e.tenant_id = t and e.subscription_id = any(subs) and k.event_key = md5(e.event_id)::uuid;
    delete from usage_events where tenant_id = t and subscription_id = any(subs);
    delete from usage_totals where tenant_id = t and subscription_id = any(subs);
    delete from pending_lines where tenant_id = t and subscription_id = any(subs);
    delete from pause_windows where tenant_id = t and subscription_id = any(subs);
    delete from billed_periods where tenant_id = t and subscription_id = any(subs);
    delete from discounts where tenant_id = t and subscription_id = any(subs);
    delete from credit_entries e using credit_grants g
     where e.tenant_id = t and g.tenant_id = t and e.grant_id = g.id and g.subscription_id = any(subs);
    delete from credit_grants where tenant_id = t and subscription_id = any(subs);
    delete from subscriptions where tenant_id = t and id = any(subs);
    delete from test_clocks where tenant_id = t and id = p_clock;
    return coalesce(array_length(subs, 1), 0);
end $$;
