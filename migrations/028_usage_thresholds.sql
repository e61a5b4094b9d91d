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
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id)
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
    primary key (tenant_id, threshold_id, period_start)
);

select enable_tenant_isolation('usage_thresholds');
select enable_tenant_isolation('usage_threshold_crossings');
grant select, insert, update on usage_thresholds to billing_app;
grant select, insert on usage_threshold_crossings to billing_app;

-- DeleteTestClock removes the thresholds of the clock's subscriptions, and their crossings, too.
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
    delete from usage_events where tenant_id = t and subscription_id = any(subs);
    delete from usage_totals where tenant_id = t and subscription_id = any(subs);
    delete from pending_lines where tenant_id = t and subscription_id = any(subs);
    delete from pause_windows where tenant_id = t and subscription_id = any(subs);
    delete from billed_periods where tenant_id = t and subscription_id = any(subs);
    delete from discounts where tenant_id = t and subscription_id = any(subs);
    delete from usage_threshold_crossings c using usage_thresholds h
     where c.tenant_id = t and h.tenant_id = t and c.threshold_id = h.id and h.subscription_id = any(subs);
    delete from usage_thresholds where tenant_id = t and subscription_id = any(subs);
    delete from credit_entries e using credit_grants g
     where e.tenant_id = t and g.tenant_id = t and e.grant_id = g.id and g.subscription_id = any(subs);
    delete from credit_grants where tenant_id = t and subscription_id = any(subs);
    delete from subscriptions where tenant_id = t and id = any(subs);
    delete from test_clocks where tenant_id = t and id = p_clock;
    return coalesce(array_length(subs, 1), 0);
end $$;
