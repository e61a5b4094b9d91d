-- DeleteTestClock removes a clock's subscriptions with what hangs on them; the discounts
-- (migration 018) and the subscription credit grants with their ledger (migration 019) came
-- after the function (migration 021), so their foreign keys refused the delete. A
-- customer-wide grant belongs to no subscription and stays.
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
    delete from credit_entries e using credit_grants g
     where e.tenant_id = t and g.tenant_id = t and e.grant_id = g.id and g.subscription_id = any(subs);
    delete from credit_grants where tenant_id = t and subscription_id = any(subs);
    delete from subscriptions where tenant_id = t and id = any(subs);
    delete from test_clocks where tenant_id = t and id = p_clock;
    return coalesce(array_length(subs, 1), 0);
end $$;
