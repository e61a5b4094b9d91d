-- Prepaid credit grants (docs/billing.md, "Credits").
--
-- credit_grants: a prepaid amount for one subscription (subscription_id set) or for every
-- subscription of a customer in the grant's currency (subscription_id null). `remaining`
-- is always `amount` minus the sum of the grant's ledger rows: the writers recompute it
-- from credit_entries in the transaction that adds a row, so the two never disagree, and
-- the check keeps a grant from ever being burned below zero.
--
-- credit_entries: the ledger. One row per application (kind applied: the invoice request
-- that carries the credit line), one for the rest of an expired grant (expired) and one
-- for the rest of a voided grant (voided). Ids are deterministic (grant, kind, invoice
-- request), so a retried billing transaction cannot add a second application for the same
-- invoice request. Rows are never edited or deleted.

create table credit_grants (
    tenant_id        uuid not null references tenants (id),
    id               uuid not null,
    customer_id      text not null,
    -- null: a grant to the customer, burned by any of its subscriptions in `currency`
    subscription_id  uuid,
    currency         text not null,
    amount           numeric not null,
    -- lower burns first (docs/billing.md, "Credits": the burn-down order)
    priority         integer not null,
    effective_at     timestamptz not null,
    expires_at       timestamptz,
    description      text not null default '',
    remaining        numeric not null,
    voided_at        timestamptz,
    created_at       timestamptz not null default now(),
    primary key (tenant_id, id),
    foreign key (tenant_id, subscription_id) references subscriptions (tenant_id, id),
    check (amount > 0),
    check (remaining >= 0 and remaining <= amount),
    check (expires_at is null or expires_at > effective_at)
);
-- What a chunk of a billing run reads: the open grants of its subscriptions and customers.
create index credit_grants_open_subscription on credit_grants (tenant_id, subscription_id)
    where remaining > 0 and voided_at is null and subscription_id is not null;
create index credit_grants_open_customer on credit_grants (tenant_id, customer_id)
    where remaining > 0 and voided_at is null and subscription_id is null;
-- ListCreditGrants: newest first, filtered by subscription or customer.
create index credit_grants_listing on credit_grants (tenant_id, created_at desc, id desc);

create table credit_entries (
    tenant_id           uuid not null references tenants (id),
    id                  uuid not null,
    grant_id            uuid not null,
    kind                text not null check (kind in ('applied', 'expired', 'voided')),
    amount              numeric not null check (amount >= 0),
    -- applied: the subscription billed and its invoice request; expired: the billing that
    -- recorded the expiry (null for an expiry or void recorded outside a billing)
    subscription_id     uuid,
    invoice_request_id  uuid,
    run_id              uuid,
    occurred_at         timestamptz not null,
    created_at          timestamptz not null default now(),
    primary key (tenant_id, id),
    foreign key (tenant_id, grant_id) references credit_grants (tenant_id, id),
    check ((kind = 'applied') = (invoice_request_id is not null))
);
create index credit_entries_grant on credit_entries (tenant_id, grant_id);

select enable_tenant_isolation('credit_grants');
select enable_tenant_isolation('credit_entries');
-- billing_worker is a member of billing_app: the run executor and the command consumer
-- reach these through it.
grant select, insert, update on credit_grants to billing_app;
grant select, insert on credit_entries to billing_app;
