-- CheckEntitlement in one statement whatever the plan and the feature's metric, for a group
-- of concurrent checks of a tenant at once (billing/store/entitlement_reads.py,
-- services/entitlement_groups.py): entitlement_read() of migration 034 read one subscription
-- and left two cases to a second read in a transaction, a plan the API process had not cached
-- yet and a metric counted from the events. entitlement_check() answers both in the same call,
-- for every subscription of p_subscriptions (each row names its subscription_id):
--
-- * p_known_plans: the plans the caller has cached. When the subscription's plan is not one
--   of them, that subscription's rows carry the plan's stored spec (plans.spec) and its
--   period's usage totals are read whatever p_with_usage says (the caller cannot know yet
--   whether the feature is metered in it).
-- * p_unique_metrics / p_unique_props (pairs): one more row each with the current period's
--   count of distinct values of the property (as store/usage.py unique_count), the property
--   in unique_property.
-- * p_gauge_metrics: one more row each with a weighted_sum metric's history for the current
--   period: its level before (the earlier periods' totals) and the period's events in time
--   order (as store/event_aggregates.py gauge_levels and gauge_changes).
--
-- Otherwise as entitlement_read(): the key check and the tenant entered for the statement's
-- own transaction, SECURITY INVOKER so row-level security filters every read, no row for no
-- such subscription; per subscription one row per usage total of the current period (one row
-- with a null metric when there is none, or when the totals are not read), and the extra rows,
-- their totals columns null. The totals are read in a lateral subquery gated by a condition on
-- the subscription alone, which PostgreSQL checks before it scans usage_totals (a one-time
-- filter): a check that needs no totals reads none. entitlement_read() stays for a server of
-- the previous version.

-- read_enter(): enter the tenant inside the caller's implicit transaction, as the BEGIN of a
-- transaction does (store/db.py): the API keys of the call checked live (the tenant token
-- comes through the first), or a token the caller holds (p_token, no keys). Its settings are
-- transaction-local, so they hold for the rest of the statement that called it. The reads of
-- migration 042 enter the same way.
create function read_enter(p_tenant uuid, p_key_hashes bytea[], p_token text) returns void
    language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
    if cardinality(p_key_hashes) > 0 then
        -- One key (every API call): authenticate_api_key_token() answers nothing for a revoked
        -- or unknown key, which is refused as api_keys_live() refuses it; more: api_keys_live().
        if cardinality(p_key_hashes) > 1 then
            perform public.api_keys_live(p_key_hashes);
        end if;
        p_token := (select a.token from public.authenticate_api_key_token(p_key_hashes[1]) a);
        if p_token is null then
            raise exception 'API key revoked or unknown' using errcode = 'invalid_authorization_specification';
        end if;
    end if;
    perform set_config('billing.tenant_id', p_tenant::text, true),
            set_config('billing.tenant_token', coalesce(p_token, ''), true);
end $$;
revoke all on function read_enter(uuid, bytea[], text) from public;
grant execute on function read_enter(uuid, bytea[], text) to billing_app, billing_worker;

create function entitlement_check(p_tenant uuid, p_key_hashes bytea[], p_token text, p_subscriptions uuid[],
                                  p_with_usage boolean, p_known_plans uuid[], p_unique_metrics text[],
                                  p_unique_props text[], p_gauge_metrics text[])
    returns table (subscription_id uuid, plan_id uuid, status text, current_period_start timestamptz,
                   current_period_end timestamptz, spec jsonb, metric_code text, quantity_sum numeric,
                   event_count bigint, quantity_max numeric, latest_quantity numeric, unique_property text,
                   unique_count bigint, gauge_level numeric, gauge_at_us bigint[], gauge_quantities numeric[])
    language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
    perform public.read_enter(p_tenant, p_key_hashes, p_token);
    return query
        select s.id, s.plan_id, s.status, s.current_period_start, s.current_period_end,
               case when s.plan_id = any(p_known_plans) then null
                    else (select p.spec from public.plans p where p.tenant_id = p_tenant and p.id = s.plan_id)
               end,
               u.metric_code, u.quantity_sum, u.event_count, u.quantity_max, u.latest_quantity,
               null::text, null::bigint, null::numeric, null::bigint[], null::numeric[]
          from public.subscriptions s
          left join lateral (
                select t.metric_code, t.quantity_sum, t.event_count, t.quantity_max, t.latest_quantity
                  from public.usage_totals t
                 where (p_with_usage or not s.plan_id = any(p_known_plans))
                   and t.tenant_id = s.tenant_id and t.subscription_id = s.id
                   and t.period_start = s.current_period_start) u on true
         where s.tenant_id = p_tenant and s.id = any(p_subscriptions);
    if cardinality(p_unique_metrics) > 0 then
        return query
            select s.id, s.plan_id, s.status, s.current_period_start, s.current_period_end, null::jsonb, m.metric,
                   null::numeric, null::bigint, null::numeric, null::numeric, m.prop,
                   (select count(distinct e.properties ->> m.prop)
                      from public.usage_events e
                     where e.tenant_id = s.tenant_id and e.subscription_id = s.id and e.metric_code = m.metric
                       and e.period_start = s.current_period_start and e.properties ? m.prop),
                   null::numeric, null::bigint[], null::numeric[]
              from public.subscriptions s
             cross join unnest(p_unique_metrics, p_unique_props) as m(metric, prop)
             where s.tenant_id = p_tenant and s.id = any(p_subscriptions) and s.current_period_start is not null;
    end if;
    if cardinality(p_gauge_metrics) > 0 then
        return query
            select s.id, s.plan_id, s.status, s.current_period_start, s.current_period_end, null::jsonb, g.metric,
                   null::numeric, null::bigint, null::numeric, null::numeric, null::text, null::bigint,
                   (select coalesce(sum(t.quantity_sum), 0)
                      from public.usage_totals t
                     where t.tenant_id = s.tenant_id and t.subscription_id = s.id and t.metric_code = g.metric
                       and t.period_start < s.current_period_start),
                   coalesce(c.at_us, '{}'), coalesce(c.quantities, '{}')
              from public.subscriptions s
             cross join unnest(p_gauge_metrics) as g(metric)
             cross join lateral (
                select array_agg((extract(epoch from e.occurred_at) * 1000000)::bigint
                                 order by e.occurred_at, e.event_id) as at_us,
                       array_agg(e.quantity order by e.occurred_at, e.event_id) as quantities
                  from public.usage_events e
                 where e.tenant_id = s.tenant_id and e.subscription_id = s.id and e.metric_code = g.metric
                   and e.period_start = s.current_period_start) c
             where s.tenant_id = p_tenant and s.id = any(p_subscriptions) and s.current_period_start is not null;
    end if;
end $$;
revoke all on function entitlement_check(uuid, bytea[], text, uuid[], boolean, uuid[], text[], text[], text[])
    from public;
grant execute on function entitlement_check(uuid, bytea[], text, uuid[], boolean, uuid[], text[], text[], text[])
    to billing_app, billing_worker;
