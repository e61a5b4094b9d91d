-- API keys cached by the API processes (billing/services/api_keys.py).
--
-- 1. Every change that can end a key (revocation, deletion, a tenant's removal cascading to
--    its keys) notifies channel `billing_api_keys` at commit; each API process LISTENs and
--    forgets every cached key, so a revoked key is refused from the next call on (docs/api.md,
--    "Authentication"). One notification per statement: revocations are rare, the payload
--    is empty, and the cache is cleared as a whole.
-- 2. api_keys_live(): the check the API sends in the round trip that opens each transaction
--    (billing/store/db.py), so a call that reads or writes tenant data is refused even
--    before the notification arrives. SQLSTATE 28000 (invalid_authorization_specification)
--    tells the API it is a refusal, not a fault.

create function notify_api_keys_changed() returns trigger
    language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    perform pg_notify('billing_api_keys', '');
    return null;
end $$;

create trigger api_keys_changed after update or delete or truncate on api_keys
    for each statement execute function notify_api_keys_changed();

create function api_keys_live(p_key_hashes bytea[]) returns void
    language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
begin
    if (select count(*) from public.api_keys k where k.key_hash = any(p_key_hashes) and k.revoked_at is null)
       < (select count(distinct h) from unnest(p_key_hashes) h) then
        raise exception 'API key revoked or unknown' using errcode = 'invalid_authorization_specification';
    end if;
end $$;
revoke all on function api_keys_live(bytea[]) from public;
grant execute on function api_keys_live(bytea[]) to billing_app;
