-- Foundation: tenants, API keys, plans, audit trail, outbox, consumer offsets, idempotency.
-- Every tenant table leads its primary key with tenant_id (ready for Citus distribution)
-- and has row-level security: the application role `billing_app` sees only the rows of
-- the tenant named by the transaction-local setting `billing.tenant_id`.

create table tenants (
    id          uuid primary key,
    name        text not null check (length(name) between 1 and 200),
    created_at  timestamptz not null default now()
);

create table api_keys (
    tenant_id   uuid not null references tenants (id),
    id          uuid not null,
    -- sha256 of the whole key; the key itself is never stored.
    key_hash    bytea not null unique,
    -- the first characters, so an operator can tell keys apart without seeing them.
    key_prefix  text not null,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz,
    primary key (tenant_id, id)
);

-- A plan row is one immutable version: pricing is never edited in place; only its status
-- moves from active to archived (enforced by the trigger below).
create table plans (
    tenant_id    uuid not null references tenants (id),
    id           uuid not null,
    code         text not null,
    version      integer not null default 1,
    spec         jsonb not null,
    status       text not null default 'active' check (status in ('active', 'archived')),
    created_at   timestamptz not null default now(),
    archived_at  timestamptz,
    primary key (tenant_id, id),
    unique (tenant_id, code, version)
);
create index plans_tenant_status_created on plans (tenant_id, status, created_at, id);

create function plans_immutable() returns trigger language plpgsql as $$
begin
    if new.spec is distinct from old.spec or new.code <> old.code or new.version <> old.version
       or new.tenant_id <> old.tenant_id or new.id <> old.id or new.created_at <> old.created_at then
        raise exception 'plan % is immutable: create a new version instead', old.id;
    end if;
    if old.status = 'archived' and new.status <> 'archived' then
        raise exception 'plan % is archived for good', old.id;
    end if;
    return new;
end $$;
create trigger plans_immutable before update on plans for each row execute function plans_immutable();

-- Append-only audit trail: who changed what, when, before and after.
create table audit_events (
    tenant_id    uuid not null references tenants (id),
    id           bigint generated always as identity,
    entity_type  text not null,
    entity_id    uuid not null,
    action       text not null,
    actor        text not null,
    request_id   text,
    before       jsonb,
    after        jsonb,
    at           timestamptz not null default now(),
    primary key (tenant_id, id)
);
create index audit_events_entity on audit_events (tenant_id, entity_type, entity_id, id);

create function audit_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_events is append-only';
end $$;
create trigger audit_events_append_only before update or delete on audit_events
    for each statement execute function audit_append_only();

-- Outgoing events, written in the same transaction as the change they announce and
-- published by the outbox relay, which marks them published only after Kafka confirms.
create table outbox (
    tenant_id     uuid not null references tenants (id),
    id            bigint generated always as identity,
    -- a logical stream name (subscription_events, invoice_requests, ...); the relay maps it to a topic
    stream        text not null,
    key           bytea,
    payload       bytea not null,
    headers       jsonb not null default '{}'::jsonb,
    created_at    timestamptz not null default now(),
    published_at  timestamptz,
    primary key (tenant_id, id)
);
create index outbox_unpublished on outbox (id) where published_at is null;

-- Idempotency: the first outcome of every request_id / command_id, per tenant.
create table idempotency_keys (
    tenant_id     uuid not null references tenants (id),
    key           text not null,
    operation     text not null,
    request_hash  bytea not null,
    response      jsonb,
    created_at    timestamptz not null default now(),
    primary key (tenant_id, key)
);

-- Kafka offsets of the consumers, stored in the same transaction as their effects.
-- Not a tenant table: one partition carries many tenants.
create table consumer_offsets (
    consumer_group  text not null,
    topic           text not null,
    partition       integer not null,
    next_offset     bigint not null,
    updated_at      timestamptz not null default now(),
    primary key (consumer_group, topic, partition)
);

-- Row-level security. Not FORCEd: the owner (migrations, admin commands) bypasses it,
-- the application role never does. Every tenant table of every later migration calls this.
create function enable_tenant_isolation(p_table regclass) returns void language plpgsql as $$
begin
    execute format('alter table %s enable row level security', p_table);
    execute format(
        'create policy tenant_isolation on %s using (tenant_id = nullif(current_setting(''billing.tenant_id'', true), '''')::uuid) '
        'with check (tenant_id = nullif(current_setting(''billing.tenant_id'', true), '''')::uuid)', p_table);
end $$;
select enable_tenant_isolation(t) from unnest(array['api_keys', 'plans', 'audit_events', 'outbox',
                                                    'idempotency_keys']::regclass[]) as t;
alter table tenants enable row level security;
create policy tenant_isolation on tenants
    using (id = nullif(current_setting('billing.tenant_id', true), '')::uuid);

-- The application role: reads and writes tenant rows under RLS, appends to the audit trail.
grant usage on schema public to billing_app;
grant select on tenants to billing_app;
grant select on api_keys to billing_app;
grant select, insert, update on plans to billing_app;
grant select, insert on audit_events to billing_app;
grant select, insert, update on outbox to billing_app;
grant select, insert, update on idempotency_keys to billing_app;
grant select, insert, update on consumer_offsets to billing_app;

-- API key to tenant, before any tenant is known: the one lookup that must cross tenants,
-- so it runs as the owner and returns nothing but the tenant id of a live key.
create function authenticate_api_key(p_key_hash bytea) returns uuid
    language sql stable security definer set search_path = public as $$
    select tenant_id from api_keys where key_hash = p_key_hash and revoked_at is null
$$;
revoke all on function authenticate_api_key(bytea) from public;
grant execute on function authenticate_api_key(bytea) to billing_app;
