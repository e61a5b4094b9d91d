-- Outbox relay: parking rows Kafka will never accept (a poison row must not stop the others).
--
-- A row the broker refuses for good (today: its message is larger than the producer's
-- `message.max.bytes` or the topic's `max.message.bytes`, even when sent alone) is *parked*:
-- it stays in the table unpublished (`published_at` null: nothing accepted is lost), with
-- `parked_at`, a short reason code and the client's error text. `outbox_pending` no longer
-- returns a parked row, nor any later row of the same stream and key (they are held, so the
-- key's order on the topic is kept); other keys and streams flow on. An operator fixes the
-- cause (raises the topic limit, say) and calls `outbox_release(ids)`: the rows are relayed
-- again, the held rows of their keys behind them, in id order. A keyless row holds only itself.
-- Depends on 001 (outbox) and 003 (the relay functions, replaced here with the same signature).

alter table outbox
    add column parked_at    timestamptz,
    add column park_reason  text,
    add column park_error   text,
    add constraint outbox_park_reason_short check (park_reason is null or length(park_reason) <= 40);

-- The few unpublished parked rows, looked up per (stream, key) by outbox_pending.
create index outbox_parked on outbox (stream, key, id) where parked_at is not null and published_at is null;

create or replace function outbox_pending(p_after_id bigint, p_limit integer, p_skip_streams text[] default '{}')
    returns table (tenant_id uuid, id bigint, stream text, key bytea, payload bytea, headers jsonb,
                   created_at timestamptz)
    language sql stable security definer set search_path = public, pg_temp as $$
    select o.tenant_id, o.id, o.stream, o.key, o.payload, o.headers, o.created_at
      from public.outbox o
     where o.published_at is null
       and o.parked_at is null
       and o.id > p_after_id
       and o.stream <> all (coalesce(p_skip_streams, '{}'))
       and (o.key is null or not exists (
               select 1 from public.outbox p
                where p.parked_at is not null and p.published_at is null
                  and p.stream = o.stream and p.key = o.key and p.id < o.id))
     order by o.id
     limit greatest(p_limit, 0)
$$;

-- Parks one unpublished row with a reason code and the error text. True if it parked it.
create function outbox_park(p_id bigint, p_reason text, p_error text) returns boolean
    language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
    n integer;
begin
    update public.outbox set parked_at = now(), park_reason = left(p_reason, 40), park_error = left(p_error, 2000)
     where id = p_id and published_at is null and parked_at is null;
    get diagnostics n = row_count;
    return n > 0;
end $$;
revoke all on function outbox_park(bigint, text, text) from public;
grant execute on function outbox_park(bigint, text, text) to billing_app;

-- Unpublished parked rows of all tenants (a gauge, an alert on > 0).
create function outbox_parked_count() returns bigint
    language sql stable security definer set search_path = public, pg_temp as $$
    select count(*) from public.outbox where parked_at is not null and published_at is null
$$;
revoke all on function outbox_parked_count() from public;
grant execute on function outbox_parked_count() to billing_app;

-- For operators (as the migration owner, not the app role): release parked rows so the relay
-- tries them again (the reason and error stay until then for the record; a row that still
-- fails is parked again). Returns how many rows it released, and wakes the relay.
create function outbox_release(p_ids bigint[]) returns integer
    language plpgsql volatile set search_path = public, pg_temp as $$
declare
    n integer;
begin
    update public.outbox set parked_at = null
     where id = any (p_ids) and parked_at is not null and published_at is null;
    get diagnostics n = row_count;
    perform pg_notify('outbox', '');
    return n;
end $$;
revoke all on function outbox_release(bigint[]) from public;
