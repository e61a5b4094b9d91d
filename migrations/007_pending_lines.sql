-- Proration: invoice lines made between billing runs, and the base-fee state of the current period.
--
-- pending_lines holds lines that a mid-period change produced (proration credits and
-- charges, the used part of an in-arrears fee, a prorated first period ...). The billing run
-- puts a subscription's unbilled lines (invoice_request_id is null) into the next invoice
-- request it writes for that subscription and sets invoice_request_id in the same
-- transaction; a line written as its own invoice request at once is inserted already billed.
-- Lines are never deleted or edited otherwise (audit: what was billed stays as it was).
-- Amounts are rounded once (half-even to the minor unit) before they are stored.

create table pending_lines (
    tenant_id           uuid not null references tenants (id),
    id                  uuid not null,
    subscription_id     uuid not null,
    currency            text not null,
    -- proration_credit, proration_charge, ...
    kind                text not null,
    description         text not null,
    metric_code         text,
    quantity            numeric not null,
    unit_price          numeric not null,
    amount              numeric not null,
    period_start        timestamptz not null,
    period_end          timestamptz not null,
    -- the exact share of the period the line covers: fraction_num / fraction_den (null: not prorated)
    fraction_num        bigint,
    fraction_den        bigint,
    tier                integer,
    -- what made the line, e.g. 'change_plan:<request>' (lines of one source have deterministic ids)
    source              text not null,
    created_at          timestamptz not null default now(),
    -- null until billed: the invoice request that carries the line
    invoice_request_id  uuid,
    primary key (tenant_id, id),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id),
    check (period_start < period_end),
    check ((fraction_num is null) = (fraction_den is null)),
    check (fraction_den is null or fraction_den > 0)
);
-- "What is still to be billed for these subscriptions?" (the billing run, per chunk)
create index pending_lines_unbilled on pending_lines (tenant_id, subscription_id) where invoice_request_id is null;

-- The start of the part of the current period whose base fee is charged when the period
-- closes, set by a mid-period change, a resume or a prorated start (docs/proration.md).
-- Null: the default (the whole period for in-arrears plans and for an in-advance period no
-- run charged in advance; nothing for an in-advance period that was charged in advance).
alter table subscriptions add column period_fee_from timestamptz;

select enable_tenant_isolation('pending_lines');
grant select, insert, update on pending_lines to billing_app;
