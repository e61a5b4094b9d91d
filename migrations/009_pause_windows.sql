-- Pause windows: the past pauses of each subscription, so that usage that happened while it
-- was paused is never billed, even when the event arrives after the resume (the current
-- pause is subscriptions.paused_at). Written by ResumeSubscription in the transaction that
-- resumes. Insert-only.

create table pause_windows (
    tenant_id        uuid not null references tenants (id),
    subscription_id  uuid not null,
    paused_at        timestamptz not null,
    resumed_at       timestamptz not null,
    primary key (tenant_id, subscription_id, paused_at),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id),
    check (paused_at <= resumed_at)
);

select enable_tenant_isolation('pause_windows');
grant select, insert on pause_windows to billing_app;
