-- outbox partitioned by month of created_at, so published rows can be retained N days by
-- dropping whole months, and audit_events by month of `at`, so old months can be detached
-- and archived (docs/operations.md, "Usage partitions and retention"); one
-- partition-creating function for the three time-partitioned tables.
--
-- The primary key gains created_at (PostgreSQL requires the partition key in it); ids stay
-- unique by their identity sequence, which continues where the old table's stopped. Nothing
-- looks an outbox row up by (tenant_id, id) alone but the relay's functions, which go by id
-- through the partial index of unpublished rows (a few rows per partition).
--
-- Upgrade: the rows are moved in this migration's transaction, as 032 does for usage.

alter table audit_events rename to audit_events_unpartitioned;
alter index audit_events_pkey rename to audit_events_unpartitioned_pkey;
alter index audit_events_entity rename to audit_events_unpartitioned_entity;
drop trigger audit_events_append_only on audit_events_unpartitioned;

create table audit_events (
    tenant_id    uuid not null,
    id           bigint generated always as identity,
    entity_type  text not null,
    entity_id    uuid not null,
    action       text not null,
    actor        text not null,
    request_id   text,
    before       jsonb,
    after        jsonb,
    at           timestamptz not null default now(),
    primary key (tenant_id, id, at)
) partition by range (at);
create index audit_events_entity on audit_events (tenant_id, entity_type, entity_id, id);
create table audit_events_default partition of audit_events default;
select enable_tenant_isolation('audit_events_default');

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

-- The monthly partition of `p_parent` (usage_events by period_start, outbox by created_at,
-- audit_events by at) for [p_month, p_month + 1 month), UTC; see usage_partition_ensure
-- (032) for the locks. Only those tables: it runs with the owner's rights. Moving rows out of
-- a default partition deletes them there: the append-only trigger of audit_events is a
-- statement trigger of the partitioned table, which a partition does not inherit.
create function time_partition_ensure(p_parent text, p_month date) returns boolean
    language plpgsql security definer set search_path = public, pg_temp as $$
declare
    col text := case p_parent when 'usage_events' then 'period_start' when 'outbox' then 'created_at'
                              when 'audit_events' then 'at' end;
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

select time_partition_ensure('audit_events', m)
  from (select distinct (date_trunc('month', at at time zone 'UTC'))::date as m from audit_events_unpartitioned
        union
        select (date_trunc('month', now() at time zone 'UTC') + n * interval '1 month')::date
          from generate_series(0, 3) as n) months;

insert into audit_events (tenant_id, id, entity_type, entity_id, action, actor, request_id, before, after, at)
    overriding system value
select tenant_id, id, entity_type, entity_id, action, actor, request_id, before, after, at
  from audit_events_unpartitioned;
select setval(pg_get_serial_sequence('audit_events', 'id'), max(id)) from audit_events_unpartitioned
having max(id) is not null;
drop table audit_events_unpartitioned;

-- Append-only, as in migration 001: no row of the partitioned table is updated or deleted,
-- by any role. Retention detaches whole months (no row is deleted; the owner only).
create trigger audit_events_append_only before update or delete on audit_events
    for each statement execute function audit_append_only();
select enable_tenant_isolation('audit_events');
grant select, insert on audit_events to billing_app;

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
