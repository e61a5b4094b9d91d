-- Discounts of a subscription (docs/billing.md, "The order of an invoice"): a percentage or
-- a fixed amount per period, on the whole invoice or on named charges (applies_to: metric
-- codes and/or 'base_fee'), for a number of period closes or forever (periods null).
--
-- How many closes a discount has counted is not stored: it is the number of the
-- subscription's periods billed (billed_periods, not trials) after the discount was created,
-- read in the transaction that bills the next one, so a re-run never counts twice. Both
-- that transaction and CreateDiscount lock the subscription's row.
-- DeleteDiscount sets deleted_at: the row stays, the discount applies to no later close.
create table discounts (
    tenant_id        uuid not null,
    id               uuid not null,
    subscription_id  uuid not null,
    kind             text not null check (kind in ('percentage', 'fixed_amount')),
    value            numeric not null check (value > 0),
    applies_to       text[] not null default '{}',
    periods          integer check (periods is null or periods > 0),
    created_at       timestamptz not null default now(),
    deleted_at       timestamptz,
    primary key (tenant_id, id),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id)
);
-- A chunk's read of its subscriptions' live discounts, in their order.
create index discounts_by_subscription on discounts (tenant_id, subscription_id, created_at, id);

select enable_tenant_isolation('discounts'::regclass);
grant select, insert, update on discounts to billing_app;
grant select, insert, update on discounts to billing_worker;
