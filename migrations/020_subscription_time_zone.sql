-- The IANA time zone a subscription's periods are calendar periods of (docs/time.md).
-- Existing rows keep UTC, which bills exactly as before. Validated by the service with
-- zoneinfo (the database has its own, possibly older, zone list: not used for billing).
alter table subscriptions add column time_zone text not null default 'UTC'
    check (char_length(time_zone) between 1 and 64);
