-- Outbox relay: the cross-tenant access the relay needs, and a wake-up on every insert.
--
-- The relay connects as `billing_app`, so row-level security hides every outbox row from a
-- plain SELECT (it names no tenant). These security-definer functions, owned by the
-- migration owner (who owns `outbox` and so bypasses RLS), give it exactly three things:
-- the unpublished rows in id order, setting `published_at` on rows it has published, and
-- the number of unpublished rows. Nothing else crosses tenants, and nothing ever deletes
-- an outbox row (it is part of the audit trail; retention is a later, separate decision).
--
-- search_path is pinned to `public, pg_temp` (pg_temp last), and the table is named with its
-- schema, so a temporary table of the caller can never stand in for `outbox`.
-- Depends only on 001 (the outbox table and the billing_app role).

-- Unpublished rows with id > p_after_id, in id order (ids are one global identity, so this
-- order is the order the rows were inserted across all tenants). Rows of the streams named
-- in p_skip_streams are left out (the relay passes streams it is backing off from, so that a
-- stream whose topic is missing does not fill every page). Served by the partial index
-- outbox_unpublished (id) where published_at is null.
create function outbox_pending(p_after_id bigint, p_limit integer, p_skip_streams text[] default '{}')
    returns table (tenant_id uuid, id bigint, stream text, key bytea, payload bytea, headers jsonb,
                   created_at timestamptz)
    language sql stable security definer set search_path = public, pg_temp as $$
    select o.tenant_id, o.id, o.stream, o.key, o.payload, o.headers, o.created_at
      from public.outbox o
     where o.published_at is null
       and o.id > p_after_id
       and o.stream <> all (coalesce(p_skip_streams, '{}'))
     order by o.id
     limit greatest(p_limit, 0)
$$;
revoke all on function outbox_pending(bigint, integer, text[]) from public;
grant execute on function outbox_pending(bigint, integer, text[]) to billing_app;

-- Marks rows published (only rows not yet marked: a published_at once set never moves).
-- Returns how many rows it marked.
create function outbox_mark_published(p_ids bigint[]) returns integer
    language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
    n integer;
begin
    update public.outbox set published_at = now()
     where id = any (p_ids) and published_at is null;
    get diagnostics n = row_count;
    return n;
end $$;
revoke all on function outbox_mark_published(bigint[]) from public;
grant execute on function outbox_mark_published(bigint[]) to billing_app;

-- The relay's backlog across all tenants (for ops: a gauge, an alert on growth).
create function outbox_backlog() returns bigint
    language sql stable security definer set search_path = public, pg_temp as $$
    select count(*) from public.outbox where published_at is null
$$;
revoke all on function outbox_backlog() from public;
grant execute on function outbox_backlog() to billing_app;

-- Wake the relay as soon as rows commit: NOTIFY is delivered at commit (never for a rolled
-- back insert) and repeated notifications in one transaction are folded into one. The relay
-- also polls, so a missed notification (e.g. while it reconnects) only delays, never loses.
create function outbox_notify() returns trigger
    language plpgsql set search_path = public, pg_temp as $$
begin
    perform pg_notify('outbox', '');
    return null;
end $$;
revoke all on function outbox_notify() from public;
create trigger outbox_notify after insert on outbox
    for each statement execute function outbox_notify();
