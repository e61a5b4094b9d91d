-- Subscriptions: current state per subscription; every change is also an audit row and an
-- outbox event, written in the same transaction.

create table subscriptions (
    tenant_id             uuid not null references tenants (id),
    id                    uuid not null,
    customer_id           text not null,
    plan_id               uuid not null,
    status                text not null check (status in ('pending', 'trialing', 'active', 'paused', 'canceled')),
    created_at            timestamptz not null,
    updated_at            timestamptz not null default now(),
    start_at              timestamptz not null,
    billing_anchor        timestamptz,
    trial_days            integer not null,
    current_period_start  timestamptz,
    current_period_end    timestamptz,
    trial_end             timestamptz,
    cancel_at_period_end  boolean not null default false,
    canceled_at           timestamptz,
    paused_at             timestamptz,
    pause_resumes_at      timestamptz,
    pending_plan_id       uuid,
    pending_change_at     timestamptz,
    metadata              jsonb not null default '{}'::jsonb,
    primary key (tenant_id, id),
    foreign key (tenant_id, plan_id) references plans (tenant_id, id),
    foreign key (tenant_id, pending_plan_id) references plans (tenant_id, id),
    check (current_period_start is null or current_period_start < current_period_end)
);
create index subscriptions_list on subscriptions (tenant_id, created_at desc, id desc);
create index subscriptions_by_status on subscriptions (tenant_id, status, created_at desc, id desc);
create index subscriptions_by_customer on subscriptions (tenant_id, customer_id, created_at desc, id desc);
create index subscriptions_by_plan on subscriptions (tenant_id, plan_id, created_at desc, id desc);
-- The billing run finds what is due by period end.
create index subscriptions_due on subscriptions (tenant_id, current_period_end) where status <> 'canceled';

select enable_tenant_isolation('subscriptions');
grant select, insert, update on subscriptions to billing_app;
