-- Billing run shards as durable jobs. The billing consumer records a shard to execute
-- (status pending) in its batch transaction and commits its offsets at once; an executor
-- of the billing role claims the shard under a lease, executes it in transactions of its
-- own and renews the lease while it works. A crashed executor's lease runs out and any
-- executor claims the shard again, which continues with what is still due.
alter table billing_run_shards drop constraint billing_run_shards_status_check;
alter table billing_run_shards add constraint billing_run_shards_status_check
    check (status in ('pending', 'running', 'completed'));
alter table billing_run_shards add column lease_until timestamptz;
-- The run request's trace context: the execution stays in the trace of the call that asked for it.
alter table billing_run_shards add column traceparent text not null default '';
create index billing_run_shards_open on billing_run_shards (lease_until nulls first)
    where status <> 'completed';

-- The executor runs as the worker role, to which row-level security shows no tenant without
-- one set: this function gives it the shards to claim, across tenants, and nothing else.
create function billing_run_shards_claimable(p_limit integer)
    returns table (tenant_id uuid, run_id uuid, shard integer)
    language sql stable security definer set search_path = public, pg_temp as $$
    select s.tenant_id, s.run_id, s.shard from public.billing_run_shards s
     where s.status <> 'completed' and (s.lease_until is null or s.lease_until < now())
     order by s.lease_until nulls first, s.started_at
     limit p_limit
$$;
revoke all on function billing_run_shards_claimable(integer) from public;
grant execute on function billing_run_shards_claimable(integer) to billing_worker;
