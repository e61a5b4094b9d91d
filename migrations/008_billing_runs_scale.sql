-- Billing runs, second part: late usage billed exactly once, run shards.
-- (007 is the proration migration.)

-- Late usage: an event stored with late = true (its period was billed when it arrived) is
-- billed by the next invoice request of its subscription, as a late_usage line naming its
-- original period. This table is THE record that it was: one row per billed late event
-- (primary key: billed once), inserted in the transaction that writes the invoice request.
-- Insert-only, like every billing record; usage_events stays as it was received.
create table late_usage_billed (
    tenant_id           uuid not null,
    event_id            text not null,
    subscription_id     uuid not null,
    invoice_request_id  uuid not null,
    run_id              uuid not null,
    billed_at           timestamptz not null default now(),
    primary key (tenant_id, event_id)
);

-- What a billed period was billed under, so that late usage is priced by the plan of its
-- own period (null for periods billed before this migration: the current plan is used).
alter table billed_periods add column plan_id uuid;
alter table billed_periods add column trial boolean not null default false;

-- Shards: a run is split into shard_count shards (by a hash of the subscription id), one
-- run request each, executed in parallel by the billing consumers of the group. The run is
-- completed when every shard is.
alter table billing_runs add column shard_count integer not null default 1
    check (shard_count between 1 and 1024);
create table billing_run_shards (
    tenant_id    uuid not null,
    run_id       uuid not null,
    shard        integer not null,
    status       text not null default 'running' check (status in ('running', 'completed')),
    subscriptions_due     bigint not null default 0,
    subscriptions_billed  bigint not null default 0,
    -- which billing consumer executed it last (host/pid/instance), for operators
    executed_by  text not null default '',
    started_at   timestamptz not null default now(),
    finished_at  timestamptz,
    primary key (tenant_id, run_id, shard),
    foreign key (tenant_id, run_id) references billing_runs (tenant_id, id),
    check (shard >= 0)
);

select enable_tenant_isolation(t) from unnest(array['late_usage_billed', 'billing_run_shards']::regclass[]) as t;
grant select, insert on late_usage_billed to billing_app;
grant select, insert, update on billing_run_shards to billing_app;

-- Subscriptions: a billing run advances every due subscription's period, i.e. updates
-- current_period_start/end of each row once per period. With an index on
-- current_period_end (subscriptions_due) every such update is a non-HOT update that
-- inserts into all six indexes of the table; without it, and with room left on each page
-- (fillfactor), the advance is a HOT update that touches the heap page only. The run finds
-- due subscriptions by walking the primary key in id windows instead (billing/store/billing.py,
-- id_window), which reads each id of the tenant once per run.
drop index subscriptions_due;
alter table subscriptions set (fillfactor = 85);
