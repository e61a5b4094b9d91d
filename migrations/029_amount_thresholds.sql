-- Amount thresholds, shares of a limit and progressive billing (docs/alerts.md, docs/billing.md
-- "Progressive billing").
--
-- usage_thresholds gains measure 'amount': a line on the period's running amount (its usage
-- charges priced as the period close prices them), with no metric (metric_code null).
-- `percent`: the share of a limit the threshold was created with (value = limit * percent /
-- 100, computed then and kept, like the aggregation); null for an absolute value.
-- `invoice_on_cross` (amount thresholds only): crossing it writes an invoice request for the
-- period so far, in the usage batch's transaction.
alter table usage_thresholds drop constraint usage_thresholds_measure_check;
alter table usage_thresholds add constraint usage_thresholds_measure_check
    check (measure in ('quantity_sum', 'event_count', 'quantity_max', 'latest_quantity', 'amount'));
alter table usage_thresholds alter column metric_code drop not null;
alter table usage_thresholds add column percent numeric check (percent > 0);
alter table usage_thresholds add column invoice_on_cross boolean not null default false;
alter table usage_thresholds add constraint usage_thresholds_metric_of_measure
    check ((measure = 'amount') = (metric_code is null) and (not invoice_on_cross or measure = 'amount'));
-- What the ingest path probes for amount thresholds: those of a batch's subscriptions.
create index usage_thresholds_amount on usage_thresholds (tenant_id, subscription_id)
    where deleted_at is null and measure = 'amount';

-- What threshold invoices charged in a period: one row per invoice request written by a
-- crossing (keyed by the crossing: at most one per threshold and period). The period's close
-- (and an immediate cancel's final usage) subtracts their sum as one progressive_billed line,
-- so the period's requests together charge what one invoice would have.
create table progressive_invoices (
    tenant_id uuid not null,
    subscription_id uuid not null,
    period_start timestamptz not null,
    threshold_id uuid not null,
    invoice_request_id uuid not null,
    amount numeric not null check (amount > 0),
    created_at timestamptz not null default now(),
    primary key (tenant_id, subscription_id, period_start, threshold_id),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id) on delete cascade,
    foreign key (tenant_id, threshold_id) references usage_thresholds (tenant_id, id) on delete cascade
);

select enable_tenant_isolation('progressive_invoices');
grant select, insert on progressive_invoices to billing_app;
