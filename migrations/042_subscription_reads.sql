-- GetSubscription, ListSubscriptions and GetUsage in one statement each, so one round trip
-- (billing/store/subscription_reads.py) instead of a transaction's BEGIN, three or four
-- reads and COMMIT: under sustained ingestion every round trip waits for a core.
--
-- read_enter() (migration 040, which CheckEntitlement's statement calls too) does in its
-- caller's implicit transaction what the BEGIN of the other calls' transactions does
-- (billing/store/db.py TenantConnection): the key check (as api_keys_live, migration 031: SQLSTATE 28000 for a revoked or
-- unknown key), then the tenant and its token set with set_config(..., true), which end with
-- the statement (a function's SET clause restores only the settings it names, so these
-- outlive read_enter's return and hold for the queries of its caller).
-- Every function here is SECURITY INVOKER (the default): its queries run as the caller, so
-- row-level security filters them exactly as it does the API's other queries; a
-- subscription of another tenant is no row at all.
--
-- p_key_hashes: the API keys of the call (the tenant token comes through the first, as in
-- store/db.py); empty for a caller that enters with a token it holds (p_token).

-- One subscription (p_id) or a page of them (p_id null: the filters and keyset of
-- store/subscriptions.list_page), each with its plan's code, its pending plan's code (null
-- when the plan is not found: the caller says NOT_FOUND as before) and its test clock.
create function subscription_read(p_tenant uuid, p_key_hashes bytea[], p_token text, p_id uuid,
                                  p_status text, p_customer_id text, p_plan_id uuid, p_after_at timestamptz,
                                  p_after_id uuid, p_limit integer)
    returns table (id uuid, customer_id text, plan_id uuid, status text, created_at timestamptz,
                   start_at timestamptz, billing_anchor timestamptz, trial_days integer,
                   current_period_start timestamptz, current_period_end timestamptz, trial_end timestamptz,
                   cancel_at_period_end boolean, canceled_at timestamptz, paused_at timestamptz,
                   pause_resumes_at timestamptz, pending_plan_id uuid, pending_change_at timestamptz,
                   metadata jsonb, period_fee_from timestamptz, time_zone text, test_clock_id uuid,
                   plan_code text, pending_plan_code text)
    language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
    perform public.read_enter(p_tenant, p_key_hashes, p_token);
    if p_id is not null then
        return query
            select s.id, s.customer_id, s.plan_id, s.status, s.created_at, s.start_at, s.billing_anchor,
                   s.trial_days, s.current_period_start, s.current_period_end, s.trial_end,
                   s.cancel_at_period_end, s.canceled_at, s.paused_at, s.pause_resumes_at, s.pending_plan_id,
                   s.pending_change_at, s.metadata, s.period_fee_from, s.time_zone, s.test_clock_id,
                   (select p.code from public.plans p where p.tenant_id = s.tenant_id and p.id = s.plan_id),
                   (select p.code from public.plans p where p.tenant_id = s.tenant_id and p.id = s.pending_plan_id)
              from public.subscriptions s
             where s.tenant_id = p_tenant and s.id = p_id;
        return;
    end if;
    return query
        select s.id, s.customer_id, s.plan_id, s.status, s.created_at, s.start_at, s.billing_anchor,
               s.trial_days, s.current_period_start, s.current_period_end, s.trial_end,
               s.cancel_at_period_end, s.canceled_at, s.paused_at, s.pause_resumes_at, s.pending_plan_id,
               s.pending_change_at, s.metadata, s.period_fee_from, s.time_zone, s.test_clock_id,
               (select p.code from public.plans p where p.tenant_id = s.tenant_id and p.id = s.plan_id),
               (select p.code from public.plans p where p.tenant_id = s.tenant_id and p.id = s.pending_plan_id)
          from public.subscriptions s
         where s.tenant_id = p_tenant
           and (p_status is null or s.status = p_status)
           and (p_customer_id is null or s.customer_id = p_customer_id)
           and (p_plan_id is null or s.plan_id = p_plan_id)
           and (p_after_at is null or (s.created_at, s.id) < (p_after_at, p_after_id))
         order by s.created_at desc, s.id desc
         limit p_limit;
end $$;
revoke all on function subscription_read(uuid, bytea[], text, uuid, text, text, uuid, timestamptz, uuid, integer)
    from public;
grant execute on function subscription_read(uuid, bytea[], text, uuid, text, text, uuid, timestamptz, uuid, integer)
    to billing_app, billing_worker;

-- GetUsage: the subscription, then its usage totals (kind 'total') and its late events by
-- metric (kind 'late', as store/usage.late_usage counts them) of one period: p_period_start,
-- or (null) the current period. One row per total or late metric, each carrying the
-- subscription's columns; one row with a null kind when there is neither; no row: no such
-- subscription.
create function usage_read(p_tenant uuid, p_key_hashes bytea[], p_token text, p_subscription uuid,
                           p_period_start timestamptz)
    returns table (id uuid, customer_id text, plan_id uuid, status text, created_at timestamptz,
                   start_at timestamptz, billing_anchor timestamptz, trial_days integer,
                   current_period_start timestamptz, current_period_end timestamptz, trial_end timestamptz,
                   cancel_at_period_end boolean, canceled_at timestamptz, paused_at timestamptz,
                   pause_resumes_at timestamptz, pending_plan_id uuid, pending_change_at timestamptz,
                   metadata jsonb, period_fee_from timestamptz, time_zone text,
                   kind text, metric_code text, period_end timestamptz, quantity_sum numeric,
                   event_count bigint, quantity_max numeric, latest_quantity numeric, billed_count bigint)
    language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
    perform public.read_enter(p_tenant, p_key_hashes, p_token);
    return query
        select s.id, s.customer_id, s.plan_id, s.status, s.created_at, s.start_at, s.billing_anchor,
               s.trial_days, s.current_period_start, s.current_period_end, s.trial_end,
               s.cancel_at_period_end, s.canceled_at, s.paused_at, s.pause_resumes_at, s.pending_plan_id,
               s.pending_change_at, s.metadata, s.period_fee_from, s.time_zone, r.kind, r.metric_code,
               r.period_end, r.quantity_sum, r.event_count, r.quantity_max, r.latest_quantity, r.billed_count
          from public.subscriptions s
          left join lateral (
                select 'total'::text as kind, u.metric_code, u.period_end, u.quantity_sum, u.event_count,
                       u.quantity_max, u.latest_quantity, null::bigint as billed_count
                  from public.usage_totals u
                 where u.tenant_id = s.tenant_id and u.subscription_id = s.id
                   and u.period_start = coalesce(p_period_start, s.current_period_start)
                union all
                select 'late'::text, e.metric_code, null::timestamptz, sum(e.quantity), count(*), null::numeric,
                       null::numeric, count(b.event_id)
                  from public.usage_events e
                  left join public.late_usage_billed b on b.tenant_id = e.tenant_id and b.event_id = e.event_id
                 where e.tenant_id = s.tenant_id and e.subscription_id = s.id and e.late
                   and e.period_start = coalesce(p_period_start, s.current_period_start)
                 group by e.metric_code
          ) r on true
         where s.tenant_id = p_tenant and s.id = p_subscription;
end $$;
revoke all on function usage_read(uuid, bytea[], text, uuid, timestamptz) from public;
grant execute on function usage_read(uuid, bytea[], text, uuid, timestamptz) to billing_app, billing_worker;
