-- Amount thresholds, shares of a limit, plan-level thresholds and progressive billing
-- (docs/alerts.md, docs/billing.md "Progressive billing").
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

-- Plan-level thresholds: `plan_id` instead of `subscription_id` (exactly one of the two); such
-- a threshold applies to every subscription whose current plan it is, each crossing keyed per
-- subscription and period.
alter table usage_thresholds alter column subscription_id drop not null;
alter table usage_thresholds add column plan_id uuid;
alter table usage_thresholds add constraint usage_thresholds_plan
    foreign key (tenant_id, plan_id) references plans (tenant_id, id);
alter table usage_thresholds add constraint usage_thresholds_one_scope
    check ((subscription_id is null) <> (plan_id is null));
create index usage_thresholds_by_plan on usage_thresholds (tenant_id, plan_id, metric_code)
    where deleted_at is null and plan_id is not null;
create index usage_thresholds_plan_listed on usage_thresholds (tenant_id, plan_id, created_at, id)
    where plan_id is not null;

-- A crossing names its subscription: a plan-level threshold crosses once per subscription and
-- period. The key becomes (threshold, subscription, period); rows written before are the
-- crossings of subscription thresholds, whose subscription is the threshold's.
alter table usage_threshold_crossings add column subscription_id uuid;
update usage_threshold_crossings c set subscription_id = t.subscription_id
  from usage_thresholds t where t.tenant_id = c.tenant_id and t.id = c.threshold_id;
alter table usage_threshold_crossings alter column subscription_id set not null;
alter table usage_threshold_crossings drop constraint usage_threshold_crossings_pkey;
alter table usage_threshold_crossings add primary key (tenant_id, threshold_id, subscription_id, period_start);
alter table usage_threshold_crossings add constraint usage_threshold_crossings_subscription
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id) on delete cascade;

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
