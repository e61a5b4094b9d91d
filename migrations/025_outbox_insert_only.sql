-- Rows in the outbox are written once, by the transaction that decided them, and only the
-- relay's security-definer functions (outbox_mark_published, outbox_park, outbox_release) mark
-- them afterwards. The API role kept UPDATE from migration 001: holding its credentials and a
-- tenant's key, one could rewrite an invoice request before the relay publishes it.
revoke update, delete on outbox from billing_app;
