-- outbox partitioned by month of created_at, so published rows can be retained N days by
-- dropping whole months (docs/operations.md, "Usage partitions and retention"), and one
-- partition-creating function for both partitioned tables.
--
-- The primary key gains created_at (PostgreSQL requires the partition key in it); ids stay
-- unique by their identity sequence, which continues where the old table's stopped. Nothing
-- looks an outbox row up by (tenant_id, id) alone but the relay's functions, which go by id
-- through the partial index of unpublished rows (a few rows per partition).
--
-- Upgrade: the rows are moved in this migration's transaction, as 032 does for usage.

alter table outbox rename to outbox_unpartitioned;
alter index outbox_pkey rename to outbox_unpartitioned_pkey;
alter index outbox_unpublished rename to outbox_unpartitioned_unpublished;
alter index outbox_parked rename to outbox_unpartitioned_parked;
drop trigger outbox_notify on outbox_unpartitioned;

create table outbox (
    tenant_id     uuid not null,
    id            bigint generated always as identity,
    stream        text not null,
    key           bytea,
    payload       bytea not null,
    headers       jsonb not null default '{}'::jsonb,
    created_at    timestamptz not null default now(),
    published_at  timestamptz,
    parked_at     timestamptz,
    park_reason   text,
    park_error    text,
    constraint outbox_park_reason_short check (park_reason is null or length(park_reason) <= 40),
    primary key (tenant_id, id, created_at)
) partition by range (created_at);
create index outbox_unpublished on outbox (id) where published_at is null;
create index outbox_parked on outbox (stream, key, id) where parked_at is not null and published_at is null;
create table outbox_default partition of outbox default;
select enable_tenant_isolation('outbox_default');

-- The monthly partition of `p_parent` (usage_events by period_start, outbox by created_at)
-- for [p_month, p_month + 1 month), UTC; see usage_partition_ensure (032) for the locks.
-- Only those two tables: it runs with the owner's rights.
create function time_partition_ensure(p_parent text, p_month date) returns boolean
    language plpgsql security definer set search_path = public, pg_temp as $$
declare
    col text := case p_parent when 'usage_events' then 'period_start' when 'outbox' then 'created_at' end;
    lo timestamptz := (date_trunc('month', p_month::timestamp) at time zone 'UTC');
    hi timestamptz := ((date_trunc('month', p_month::timestamp) + interval '1 month') at time zone 'UTC');
    name text := p_parent || '_p' || to_char(p_month, 'YYYY_MM');
    dflt text := p_parent || '_default';
begin
    if col is null then
        raise exception 'time_partition_ensure: % is not a time-partitioned table', p_parent;
    end if;
    if to_regclass(name) is not null then
        return false;
    end if;
    perform set_config('lock_timeout', '10s', true);
    execute format('lock table %I in access exclusive mode', dflt);
    if to_regclass(name) is not null then
        return false;
    end if;
    execute format('create table %I (like %I including defaults including constraints)', name, p_parent);
    execute format('insert into %I overriding system value select * from %I where %I >= $1 and %I < $2',
                   name, dflt, col, col) using lo, hi;
    execute format('delete from %I where %I >= $1 and %I < $2', dflt, col, col) using lo, hi;
    execute format('alter table %I attach partition %I for values from (%L) to (%L)', p_parent, name, lo, hi);
    perform enable_tenant_isolation(name::regclass);
    return true;
end $$;
revoke all on function time_partition_ensure(text, date) from public;
grant execute on function time_partition_ensure(text, date) to billing_worker;

-- 032's function, now one of the two callers.
create or replace function usage_partition_ensure(p_month date) returns boolean
    language sql security definer set search_path = public, pg_temp as $$
    select time_partition_ensure('usage_events', p_month)
$$;

select time_partition_ensure('outbox', m)
  from (select distinct (date_trunc('month', created_at at time zone 'UTC'))::date as m from outbox_unpartitioned
        union
        select (date_trunc('month', now() at time zone 'UTC') + n * interval '1 month')::date
          from generate_series(0, 3) as n) months;

insert into outbox (tenant_id, id, stream, key, payload, headers, created_at, published_at, parked_at, park_reason,
                    park_error) overriding system value
select tenant_id, id, stream, key, payload, headers, created_at, published_at, parked_at, park_reason, park_error
  from outbox_unpartitioned;
-- New ids continue after the moved ones (the relay's position is an id).
select setval(pg_get_serial_sequence('outbox', 'id'), max(id)) from outbox_unpartitioned having max(id) is not null;
drop table outbox_unpartitioned;

create trigger outbox_notify after insert on outbox for each statement execute function outbox_notify();

select enable_tenant_isolation('outbox');
-- Added, never changed, by the API and worker roles (migration 025); the relay's functions mark.
grant select, insert on outbox to billing_app;
