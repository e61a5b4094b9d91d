-- Tenant isolation that holds against the service's own roles (docs/decisions.md, "Tenant
-- isolation against the application role"; docs/operations.md, "Database roles").
--
-- Two login roles, neither superuser, BYPASSRLS nor the owner of any table:
-- * billing_app (the gRPC API) enters a tenant only with a tenant token, which it can obtain
--   only from authenticate_api_key_token(): for the tenant of a live API key whose hash it
--   presents. Setting billing.tenant_id by itself is refused.
-- * billing_worker (Kafka consumers, scheduler, outbox relay; their messages carry the tenant
--   id by design) may enter any tenant by setting billing.tenant_id. It is a member of
--   billing_app, so every table grant made to billing_app reaches it too, and it alone may
--   call the relay's outbox functions and tenant_ids(), and use consumer_offsets.
-- Every tenant table's RLS is FORCEd; the owner's cross-tenant access (migrations, admin
-- commands, the security-definer functions below) is the explicit policy owner_all.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'billing_worker') then
        raise exception 'role billing_worker does not exist: create it first (docs/operations.md, "Database roles"): '
                        'create role billing_worker login password ''...'' in role billing_app';
    end if;
    if not pg_has_role('billing_worker', 'billing_app', 'usage') then
        raise exception 'role billing_worker must be a member of billing_app: grant billing_app to billing_worker';
    end if;
end $$;

-- The key that tenant tokens are derived from; readable by the owner only (no grant).
create table tenant_context_secret (
    only_row  boolean primary key default true check (only_row),
    secret    bytea not null
);
insert into tenant_context_secret (secret)
select decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
revoke all on tenant_context_secret from public;

-- sha256(secret || tenant id text): the tenant id has a fixed length, so no other message can
-- be made to share a digest by extension.
create function tenant_token_for(p_tenant uuid) returns text
    language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select encode(sha256(s.secret || convert_to(p_tenant::text, 'UTF8')), 'hex') from public.tenant_context_secret s
$$;
revoke all on function tenant_token_for(uuid) from public;

-- The app role's way into a tenant: the tenant of a live key, the key's id (never a part
-- of the secret key) and the tenant token; nothing for an unknown or revoked key.
create function authenticate_api_key_token(p_key_hash bytea) returns table (tenant_id uuid, key_id uuid, token text)
    language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select k.tenant_id, k.id, public.tenant_token_for(k.tenant_id)
      from public.api_keys k
     where k.key_hash = p_key_hash and k.revoked_at is null
$$;
revoke all on function authenticate_api_key_token(bytea) from public;
grant execute on function authenticate_api_key_token(bytea) to billing_app;

create function tenant_token_valid(p_tenant uuid, p_token text) returns boolean
    language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select coalesce(p_token = public.tenant_token_for(p_tenant), false)
$$;
revoke all on function tenant_token_valid(uuid, text) from public;
grant execute on function tenant_token_valid(uuid, text) to billing_app;

-- The tenant of the current transaction, as the policies see it. Policies call it as
-- `(select current_tenant())`: an initplan, run once per statement, not once per row.
-- A tenant set without a valid token by a role that is neither a worker nor the owner is an
-- error, not an empty result: a caller that bypassed the token would otherwise only see
-- nothing and not know why. search_path is pinned: it runs as its caller, whose own objects
-- must never stand in for the catalog's.
create function current_tenant() returns uuid
    language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    t uuid := nullif(pg_catalog.current_setting('billing.tenant_id', true), '')::uuid;
begin
    if t is null
       or pg_catalog.pg_has_role(current_user, 'billing_worker', 'usage')
       or public.tenant_token_valid(t, pg_catalog.current_setting('billing.tenant_token', true))
       or pg_catalog.pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c
                                                 where c.oid = 'public.tenants'::regclass), 'usage') then
        return t;
    end if;
    raise exception 'tenant % entered without a valid tenant token', t
        using errcode = 'insufficient_privilege',
              hint = 'the API role enters a tenant only through authenticate_api_key_token()';
end $$;
grant execute on function current_tenant() to public;

-- Every tenant table (tenants, and each table with a tenant_id column): the policy through
-- current_tenant(), FORCEd, and the owner's explicit policy. Later migrations call this.
create or replace function enable_tenant_isolation(p_table regclass) returns void language plpgsql as $$
declare
    col text := case when p_table = 'public.tenants'::regclass then 'id' else 'tenant_id' end;
begin
    execute format('alter table %s enable row level security', p_table);
    execute format('alter table %s force row level security', p_table);
    execute format('drop policy if exists tenant_isolation on %s', p_table);
    execute format('create policy tenant_isolation on %s using (%I = (select public.current_tenant())) '
                   'with check (%I = (select public.current_tenant()))', p_table, col, col);
    execute format('drop policy if exists owner_all on %s', p_table);
    execute format('create policy owner_all on %s to %I using (true) with check (true)',
                   p_table, (select r.rolname from pg_class c join pg_roles r on r.oid = c.relowner
                              where c.oid = p_table));
end $$;

select enable_tenant_isolation(c.oid::regclass)
  from pg_class c
 where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
   and (c.relname = 'tenants'
        or exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id'
                                                   and not a.attisdropped));

-- The relay's functions and tenant_ids(): workers only.
do $$
declare
    f regprocedure;
begin
    foreach f in array array['outbox_pending(bigint, integer, text[])', 'outbox_mark_published(bigint[])',
                             'outbox_backlog()', 'outbox_park(bigint, text, text)', 'outbox_parked_count()',
                             'tenant_ids()']::regprocedure[] loop
        execute format('revoke all on function %s from public, billing_app', f);
        execute format('grant execute on function %s to billing_worker', f);
    end loop;
end $$;

-- Kafka offsets: written by the consumers only.
revoke all on consumer_offsets from billing_app;
grant select, insert, update on consumer_offsets to billing_worker;
grant select on schema_migrations to billing_worker;
