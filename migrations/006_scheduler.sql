-- The billing scheduler starts a run for every tenant on its own. It runs as the
-- application role, to which row-level security shows no tenant at all without a tenant
-- set; this security-definer function gives it the one thing it needs: the tenant ids.
create function tenant_ids() returns setof uuid
    language sql stable security definer set search_path = public, pg_temp as $$
    select id from public.tenants order by id
$$;
revoke all on function tenant_ids() from public;
grant execute on function tenant_ids() to billing_app;
