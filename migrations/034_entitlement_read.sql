-- CheckEntitlement in one statement, so one round trip (billing/store/entitlement_reads.py)
-- instead of a transaction's BEGIN, reads and COMMIT.
--
-- entitlement_read() does in its caller's implicit transaction what the BEGIN of the other
-- calls' transactions does (billing/store/db.py TenantConnection): the key
-- check (as api_keys_live, migration 031: SQLSTATE 28000 for a revoked or unknown key), then
-- the tenant and its token set with set_config(..., true), which end with the statement.
-- SECURITY INVOKER (the default): its queries run as the caller, so row-level security
-- filters them exactly as it does the API's other queries; a subscription of another tenant
-- is no row at all. One row per usage total of the subscription's current period (all its
-- metrics), or one row with a null metric when there is none; no row: no such subscription.
-- p_with_usage false (the feature is metered in no plan the API process has cached, so
-- the answer needs no usage): the subscription alone, no usage_totals read.
--
-- p_key_hashes: the API keys of the call (the tenant token comes through the first, as in
-- store/db.py); empty for a caller that enters with a token it holds (p_token).

create function entitlement_read(p_tenant uuid, p_key_hashes bytea[], p_token text, p_subscription uuid,
                                 p_with_usage boolean)
    returns table (plan_id uuid, status text, current_period_start timestamptz, current_period_end timestamptz,
                   metric_code text, quantity_sum numeric, event_count bigint, quantity_max numeric,
                   latest_quantity numeric)
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
    if not p_with_usage then
        return query
            select s.plan_id, s.status, s.current_period_start, s.current_period_end,
                   null::text, null::numeric, null::bigint, null::numeric, null::numeric
              from public.subscriptions s
             where s.tenant_id = p_tenant and s.id = p_subscription;
        return;
    end if;
    return query
        select s.plan_id, s.status, s.current_period_start, s.current_period_end,
               u.metric_code, u.quantity_sum, u.event_count, u.quantity_max, u.latest_quantity
          from public.subscriptions s
          left join public.usage_totals u
            on u.tenant_id = s.tenant_id and u.subscription_id = s.id and u.period_start = s.current_period_start
         where s.tenant_id = p_tenant and s.id = p_subscription;
end $$;
revoke all on function entitlement_read(uuid, bytea[], text, uuid, boolean) from public;
grant execute on function entitlement_read(uuid, bytea[], text, uuid, boolean) to billing_app, billing_worker;
