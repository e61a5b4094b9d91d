-- Test clocks (docs/time.md, "Test clocks"): per tenant, a frozen time that moves only when
-- AdvanceTestClock moves it. A subscription created on a clock lives on the clock's time;
-- an advance is a billing run restricted to the clock's subscriptions (billing_runs.test_clock_id),
-- and the clock takes its new time in the transaction that completes that run.

create table test_clocks (
    tenant_id       uuid not null references tenants (id),
    id              uuid not null,
    name            text not null,
    frozen_time     timestamptz not null,
    -- ready: at frozen_time; advancing: a run to advance_to (advance_run_id) is under way
    status          text not null default 'ready' check (status in ('ready', 'advancing')),
    advance_to      timestamptz,
    advance_run_id  uuid,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    primary key (tenant_id, id),
    check ((status = 'advancing') = (advance_to is not null and advance_run_id is not null)),
    check (advance_to is null or advance_to > frozen_time)
);
create index test_clocks_list on test_clocks (tenant_id, created_at desc, id desc);

-- The clock a subscription lives on (null: real time). Never changes after creation, so a
-- run's period advance stays a HOT update (see 008) whatever indexes it has.
alter table subscriptions add column test_clock_id uuid;
alter table subscriptions add constraint subscriptions_test_clock
    foreign key (tenant_id, test_clock_id) references test_clocks (tenant_id, id);
create index subscriptions_by_test_clock on subscriptions (tenant_id, test_clock_id, id)
    where test_clock_id is not null;

-- A clock's run bills only that clock's subscriptions; every other run none of them. No
-- foreign key: a deleted clock's runs stay as the record of what was billed.
alter table billing_runs add column test_clock_id uuid;

select enable_tenant_isolation('test_clocks');
grant select, insert, update on test_clocks to billing_app;

-- DeleteTestClock removes the clock, its subscriptions and their rows. The API role has no
-- DELETE on billing records (they are insert-only); this function deletes exactly one
-- clock's data of the caller's tenant and nothing else. It runs as the owner, for whom
-- current_tenant() checks no token: so it checks the caller's tenant token itself (workers
-- may enter any tenant). Returns how many subscriptions it removed; null: no such clock.
create function delete_test_clock(p_clock uuid) returns integer
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
    delete from credit_entries e using credit_grants g
     where e.tenant_id = t and g.tenant_id = t and e.grant_id = g.id and g.subscription_id = any(subs);
    delete from credit_grants where tenant_id = t and subscription_id = any(subs);
    delete from subscriptions where tenant_id = t and id = any(subs);
    delete from test_clocks where tenant_id = t and id = p_clock;
    return coalesce(array_length(subs, 1), 0);
end $$;
revoke all on function delete_test_clock(uuid) from public;
grant execute on function delete_test_clock(uuid) to billing_app;
