-- Billing runs and the periods they billed.
--
-- billed_periods is THE guarantee that a subscription period is billed once: its primary
-- key is (tenant, subscription, period start), and the run inserts the row in the same
-- transaction that writes the invoice request to the outbox and advances the subscription.
-- A resumed run, a redelivered run request or a second run at the same time meets the
-- existing row (ON CONFLICT DO NOTHING) and bills nothing again.

create table billing_runs (
    tenant_id              uuid not null references tenants (id),
    id                     uuid not null,
    idempotency_key        text not null,
    as_of                  timestamptz not null,
    status                 text not null default 'pending'
                           check (status in ('pending', 'running', 'completed', 'failed')),
    subscriptions_due      bigint not null default 0,
    subscriptions_billed   bigint not null default 0,
    subscriptions_skipped  bigint not null default 0,
    subscriptions_failed   bigint not null default 0,
    -- [{"subscription_id": ..., "reason": ...}]
    failures               jsonb not null default '[]'::jsonb,
    -- {"EUR": "123.45"}: exact decimal text per currency, the sum of the billed invoice totals
    totals                 jsonb not null default '{}'::jsonb,
    created_at             timestamptz not null default now(),
    started_at             timestamptz,
    finished_at            timestamptz,
    primary key (tenant_id, id),
    unique (tenant_id, idempotency_key)
);
create index billing_runs_list on billing_runs (tenant_id, created_at desc, id desc);

create table billed_periods (
    tenant_id           uuid not null,
    subscription_id     uuid not null,
    period_start        timestamptz not null,
    period_end          timestamptz not null,
    -- null when the period produced no invoice lines at all (a trial of an in-arrears plan)
    invoice_request_id  uuid,
    run_id              uuid not null,
    billed_at           timestamptz not null default now(),
    primary key (tenant_id, subscription_id, period_start),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id),
    check (period_start < period_end)
);
-- "Was the period that ends where the current one starts billed?" (in-advance fees)
create index billed_periods_by_end on billed_periods (tenant_id, subscription_id, period_end);

select enable_tenant_isolation(t) from unnest(array['billing_runs', 'billed_periods']::regclass[]) as t;
grant select, insert, update on billing_runs to billing_app;
grant select, insert on billed_periods to billing_app;
