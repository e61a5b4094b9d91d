-- Usage thresholds and their crossings (docs/alerts.md).
--
-- usage_thresholds: a line on one metric's period quantity of one subscription, measured by
-- `measure` (the usage_totals column the plan's charge aggregates: quantity_sum,
-- event_count, quantity_max or latest_quantity, fixed when the threshold is created).
-- `recurring`: crossed at most once per period; otherwise at most once ever.
-- usage_threshold_crossings: one row per (threshold, period) crossed, written in the usage
-- batch's transaction together with the alert's outbox row; its key is what makes the alert
-- exactly-once whatever the replays (ON CONFLICT DO NOTHING). A one-off threshold's
-- crossings are keyed on the epoch instead of the period, so it fires once.
create table usage_thresholds (
    tenant_id uuid not null references tenants (id),
    id uuid not null,
    subscription_id uuid not null,
    metric_code text not null,
    measure text not null check (measure in ('quantity_sum', 'event_count', 'quantity_max', 'latest_quantity')),
    value numeric not null check (value >= 0),
    recurring boolean not null default true,
    created_at timestamptz not null default now(),
    deleted_at timestamptz,  -- DeleteThreshold: kept, with its crossings, as the record
    primary key (tenant_id, id),
    -- Subscriptions are deleted only with their test clock (delete_test_clock, migration
    -- 021): their thresholds and crossings go with them.
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id) on delete cascade
);
-- What the ingest path probes: the thresholds of a batch's subscriptions.
create index usage_thresholds_by_subscription on usage_thresholds (tenant_id, subscription_id, metric_code)
    where deleted_at is null;
-- ListThresholds: a subscription's thresholds in creation order.
create index usage_thresholds_listed on usage_thresholds (tenant_id, subscription_id, created_at, id);

create table usage_threshold_crossings (
    tenant_id uuid not null,
    threshold_id uuid not null,
    period_start timestamptz not null,
    crossed_at timestamptz not null default now(),
    primary key (tenant_id, threshold_id, period_start),
    foreign key (tenant_id, threshold_id) references usage_thresholds (tenant_id, id) on delete cascade
);

select enable_tenant_isolation('usage_thresholds');
select enable_tenant_isolation('usage_threshold_crossings');
grant select, insert, update on usage_thresholds to billing_app;
grant select, insert on usage_threshold_crossings to billing_app;
