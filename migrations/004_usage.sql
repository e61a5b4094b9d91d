-- Usage: raw events (kept for audit and recomputation, deduplicated by event id) and totals
-- per (subscription, metric, billing period), kept current in batches.
--
-- No foreign keys on these two hot tables: a per-row FK check cost ~20% of ingestion
-- (measured: 86 ms of 410 ms for 20,000 events). The consumer checks the tenant and every
-- subscription once per batch instead, and tenants and subscriptions are never deleted.

create table usage_events (
    tenant_id        uuid not null,
    event_id         text not null,
    subscription_id  uuid not null,
    metric_code      text not null,
    quantity         numeric not null check (quantity >= 0),
    occurred_at      timestamptz not null,
    -- the billing period the event counts in
    period_start     timestamptz not null,
    period_end       timestamptz not null,
    -- the period was already billed when the event arrived: billed in the next run as late usage
    late             boolean not null default false,
    properties       jsonb,
    received_at      timestamptz not null default now(),
    primary key (tenant_id, event_id)
);
create index usage_events_period on usage_events (tenant_id, subscription_id, metric_code, period_start);
create index usage_events_late on usage_events (tenant_id, subscription_id) where late;

create table usage_totals (
    tenant_id        uuid not null,
    subscription_id  uuid not null,
    metric_code      text not null,
    period_start     timestamptz not null,
    period_end       timestamptz not null,
    quantity_sum     numeric not null,
    event_count      bigint not null,
    quantity_max     numeric not null,
    latest_quantity  numeric not null,
    latest_at        timestamptz not null,
    latest_event_id  text not null,
    updated_at       timestamptz not null default now(),
    primary key (tenant_id, subscription_id, metric_code, period_start)
);

select enable_tenant_isolation(t) from unnest(array['usage_events', 'usage_totals']::regclass[]) as t;
grant select, insert on usage_events to billing_app;
grant select, insert, update on usage_totals to billing_app;
