"""BillingService: each RPC is one service call. RPCs of later issues answer UNIMPLEMENTED
(inherited from the generated base class) until they land."""
from __future__ import annotations

from billing.api import convert, usage_batch_wire
from billing.api.errors import rpc
from billing.services import billing_runs, credits, discounts, entitlements, plans, previews, subscriptions, test_clocks, thresholds, usage_batch
from billing.services.context import Caller
from billing.services.paging import PageTokens
from billing.services.uow import Database
from billing.services.usage import Usage
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, db: Database, usage: Usage, run_shards: int, page_tokens: PageTokens | None = None):
        # Built once from the settings (billing/bootstrap.py): the usage limits and plan
        # cache shared with the usage consumer, and the shard count of the runs it requests.
        self.db = db
        self.usage = usage
        self.run_shards = run_shards
        self.tokens = page_tokens or PageTokens()
        self.entitlement_groups = entitlements.CheckGroups()  # concurrent checks of a tenant: one statement

    # -- plans -------------------------------------------------------------------------

    @rpc
    async def CreatePlan(self, request: pb.CreatePlanRequest, caller: Caller) -> pb.CreatePlanResponse:
        draft, refused = convert.plan_input(request)
        plan = await plans.create_plan(self.db, caller, request.request_id, draft, refused)
        return pb.CreatePlanResponse(plan=convert.plan_message(plan))

    @rpc
    async def GetPlan(self, request: pb.GetPlanRequest, caller: Caller) -> pb.GetPlanResponse:
        plan = await plans.get_plan(self.db, caller, request.id)
        return pb.GetPlanResponse(plan=convert.plan_message(plan))

    @rpc
    async def ListPlans(self, request: pb.ListPlansRequest, caller: Caller) -> pb.ListPlansResponse:
        page = await plans.list_plans(self.db, caller, tokens=self.tokens, page_size=request.page_size,
                                      page_token=request.page_token, include_archived=request.include_archived,
                                      code=request.code)
        return pb.ListPlansResponse(plans=[convert.plan_message(p) for p in page.plans],
                                    next_page_token=page.next_page_token)

    @rpc
    async def ArchivePlan(self, request: pb.ArchivePlanRequest, caller: Caller) -> pb.ArchivePlanResponse:
        plan = await plans.archive_plan(self.db, caller, request.request_id, request.id)
        return pb.ArchivePlanResponse(plan=convert.plan_message(plan))

    # -- subscriptions -----------------------------------------------------------------

    @rpc
    async def CreateSubscription(self, request: pb.CreateSubscriptionRequest,
                                 caller: Caller) -> pb.CreateSubscriptionResponse:
        view = await subscriptions.create_subscription(
            self.db, caller, request.request_id, customer_id=request.customer_id, plan_id=request.plan_id,
            start_at=convert.optional_time(request, "start_at"),
            billing_anchor=convert.optional_time(request, "billing_anchor"),
            trial_days=request.trial_days if request.HasField("trial_days") else None,
            activate=request.activate, metadata=dict(request.metadata), time_zone=request.time_zone,
            test_clock_id=request.test_clock_id,
        )
        return pb.CreateSubscriptionResponse(subscription=convert.subscription_message(view))

    @rpc
    async def GetSubscription(self, request: pb.GetSubscriptionRequest, caller: Caller) -> pb.GetSubscriptionResponse:
        view = await subscriptions.get_subscription(self.db, caller, request.id, request.include_history)
        return pb.GetSubscriptionResponse(subscription=convert.subscription_message(view))

    @rpc
    async def ListSubscriptions(self, request: pb.ListSubscriptionsRequest,
                                caller: Caller) -> pb.ListSubscriptionsResponse:
        page = await subscriptions.list_subscriptions(
            self.db, caller, tokens=self.tokens, page_size=request.page_size, page_token=request.page_token,
            status=convert.enum_value(pb.SubscriptionStatus, request.status, "SUBSCRIPTION_STATUS_", "status"),
            customer_id=request.customer_id, plan_id=request.plan_id,
        )
        return convert.subscription_page(page)

    @rpc
    async def ActivateSubscription(self, request: pb.ActivateSubscriptionRequest,
                                   caller: Caller) -> pb.ActivateSubscriptionResponse:
        view = await subscriptions.activate_subscription(self.db, caller, request.request_id, request.id)
        return pb.ActivateSubscriptionResponse(subscription=convert.subscription_message(view))

    @rpc
    async def PauseSubscription(self, request: pb.PauseSubscriptionRequest,
                                caller: Caller) -> pb.PauseSubscriptionResponse:
        preview = previews.ChangePreview() if request.preview_only else None
        view = await subscriptions.pause_subscription(self.db, caller, request.request_id, request.id,
                                                      convert.optional_time(request, "resumes_at"), preview=preview)
        return pb.PauseSubscriptionResponse(subscription=convert.subscription_message(view),
                                            preview=convert.change_preview(preview))

    @rpc
    async def ResumeSubscription(self, request: pb.ResumeSubscriptionRequest,
                                 caller: Caller) -> pb.ResumeSubscriptionResponse:
        view = await subscriptions.resume_subscription(self.db, caller, request.request_id, request.id)
        return pb.ResumeSubscriptionResponse(subscription=convert.subscription_message(view))

    @rpc
    async def CancelSubscription(self, request: pb.CancelSubscriptionRequest,
                                 caller: Caller) -> pb.CancelSubscriptionResponse:
        preview = previews.ChangePreview() if request.preview_only else None
        view = await subscriptions.cancel_subscription(
            self.db, caller, request.request_id, request.id,
            mode=convert.enum_value(pb.CancelMode, request.mode, "CANCEL_MODE_", "mode"),
            proration=convert.enum_value(pb.ProrationBehavior, request.proration, "PRORATION_BEHAVIOR_", "proration"),
            preview=preview,
        )
        return pb.CancelSubscriptionResponse(subscription=convert.subscription_message(view),
                                             preview=convert.change_preview(preview))

    @rpc
    async def ChangePlan(self, request: pb.ChangePlanRequest, caller: Caller) -> pb.ChangePlanResponse:
        preview = previews.ChangePreview() if request.preview_only else None
        view = await subscriptions.change_plan(
            self.db, caller, request.request_id, request.id, request.new_plan_id,
            timing=convert.enum_value(pb.ChangeTiming, request.timing, "CHANGE_TIMING_", "timing"),
            proration_behavior=convert.enum_value(pb.ProrationBehavior, request.proration_behavior,
                                                  "PRORATION_BEHAVIOR_", "proration_behavior"),
            preview=preview,
        )
        return pb.ChangePlanResponse(subscription=convert.subscription_message(view),
                                     preview=convert.change_preview(preview))

    # -- usage -------------------------------------------------------------------------

    @rpc
    async def RecordUsage(self, request: pb.RecordUsageRequest, caller: Caller) -> pb.RecordUsageResponse:
        recorded = await self.usage.record(
            self.db, caller, request_id=request.request_id, event_id=request.event_id,
            subscription_id=request.subscription_id, metric_code=request.metric_code, quantity=request.quantity,
            occurred_at=convert.optional_time(request, "occurred_at"), properties=dict(request.properties),
        )
        return pb.RecordUsageResponse(duplicate=recorded.duplicate, event_id=recorded.event_id,
                                      period_start=convert.timestamp(recorded.period_start),
                                      period_end=convert.timestamp(recorded.period_end))

    @rpc
    async def RecordUsageBatch(self, request: pb.RecordUsageBatchRequest, caller: Caller) -> bytes:
        done = await usage_batch.record_batch(self.usage, self.db, caller, request.request_id,
                                              usage_batch_wire.batch_input(request.events))
        return usage_batch_wire.encode_response(done)  # bytes: the method's serializer sends them

    @rpc
    async def GetUsage(self, request: pb.GetUsageRequest, caller: Caller) -> pb.GetUsageResponse:
        report = await self.usage.get(
            self.db, caller, subscription_id=request.subscription_id,
            period_start=convert.optional_time(request, "period_start"),
            series=convert.enum_value(pb.SeriesGranularity, request.series, "SERIES_GRANULARITY_", "series"),
        )
        return convert.usage_report(report)

    @rpc
    async def PreviewInvoice(self, request: pb.PreviewInvoiceRequest, caller: Caller) -> pb.PreviewInvoiceResponse:
        found = await previews.preview_invoice(self.db, caller, request.subscription_id,
                                               convert.optional_time(request, "at"))
        return convert.invoice_previews(found)

    # -- billing runs ------------------------------------------------------------------

    @rpc
    async def RunBilling(self, request: pb.RunBillingRequest, caller: Caller) -> pb.RunBillingResponse:
        run = await billing_runs.run_billing(self.db, caller, request.request_id, request.idempotency_key,
                                             convert.optional_time(request, "as_of"), shards=self.run_shards)
        return pb.RunBillingResponse(run=convert.billing_run_message(run))

    @rpc
    async def GetBillingRun(self, request: pb.GetBillingRunRequest, caller: Caller) -> pb.GetBillingRunResponse:
        run = await billing_runs.get_billing_run(self.db, caller, request.id)
        return pb.GetBillingRunResponse(run=convert.billing_run_message(run))

    @rpc
    async def ListBillingRuns(self, request: pb.ListBillingRunsRequest,
                              caller: Caller) -> pb.ListBillingRunsResponse:
        page = await billing_runs.list_billing_runs(
            self.db, caller, tokens=self.tokens, page_size=request.page_size, page_token=request.page_token,
            status=convert.enum_value(pb.BillingRunStatus, request.status, "BILLING_RUN_STATUS_", "status"),
            created_after=convert.optional_time(request, "created_after"),
            created_before=convert.optional_time(request, "created_before"),
        )
        return convert.billing_run_page(page)

    # -- discounts ---------------------------------------------------------------------

    @rpc
    async def CreateDiscount(self, request: pb.CreateDiscountRequest, caller: Caller) -> pb.CreateDiscountResponse:
        d = await discounts.create_discount(self.db, caller, request.request_id, request.subscription_id,
                                            convert.discount_input(request))
        return pb.CreateDiscountResponse(discount=convert.discount_message(d))

    @rpc
    async def ListDiscounts(self, request: pb.ListDiscountsRequest, caller: Caller) -> pb.ListDiscountsResponse:
        found, token = await discounts.list_discounts(
            self.db, caller, request.subscription_id, tokens=self.tokens, page_size=request.page_size,
            page_token=request.page_token, include_deleted=request.include_deleted)
        return pb.ListDiscountsResponse(discounts=[convert.discount_message(d) for d in found],
                                        next_page_token=token)

    @rpc
    async def DeleteDiscount(self, request: pb.DeleteDiscountRequest, caller: Caller) -> pb.DeleteDiscountResponse:
        d = await discounts.delete_discount(self.db, caller, request.request_id, request.id)
        return pb.DeleteDiscountResponse(discount=convert.discount_message(d))

    # -- usage thresholds --------------------------------------------------------------

    @rpc
    async def CreateThreshold(self, request: pb.CreateThresholdRequest, caller: Caller) -> pb.CreateThresholdResponse:
        t = await thresholds.create_threshold(self.db, caller, request.request_id, request.subscription_id,
                                              request.metric_code, request.value, recurring=not request.once,
                                              measure=request.measure, percent=request.percent,
                                              invoice_on_cross=request.invoice_on_cross, plan_id=request.plan_id)
        return pb.CreateThresholdResponse(threshold=convert.threshold_message(t))

    @rpc
    async def ListThresholds(self, request: pb.ListThresholdsRequest, caller: Caller) -> pb.ListThresholdsResponse:
        found, token = await thresholds.list_thresholds(
            self.db, caller, request.subscription_id, tokens=self.tokens, page_size=request.page_size,
            page_token=request.page_token, include_deleted=request.include_deleted, plan_id=request.plan_id)
        return pb.ListThresholdsResponse(thresholds=[convert.threshold_message(t) for t in found],
                                         next_page_token=token)

    @rpc
    async def DeleteThreshold(self, request: pb.DeleteThresholdRequest, caller: Caller) -> pb.DeleteThresholdResponse:
        t = await thresholds.delete_threshold(self.db, caller, request.request_id, request.id)
        return pb.DeleteThresholdResponse(threshold=convert.threshold_message(t))

    # -- credit grants -----------------------------------------------------------------

    @rpc
    async def CreateCreditGrant(self, request: pb.CreateCreditGrantRequest,
                                caller: Caller) -> pb.CreateCreditGrantResponse:
        grant = await credits.create_grant(
            self.db, caller, request.request_id, amount=request.amount, currency=request.currency,
            priority=request.priority, subscription_id=request.subscription_id, customer_id=request.customer_id,
            effective_at=convert.optional_time(request, "effective_at"),
            expires_at=convert.optional_time(request, "expires_at"), description=request.description,
        )
        return pb.CreateCreditGrantResponse(grant=convert.credit_grant_message(grant))

    @rpc
    async def ListCreditGrants(self, request: pb.ListCreditGrantsRequest,
                               caller: Caller) -> pb.ListCreditGrantsResponse:
        page = await credits.list_grants(self.db, caller, tokens=self.tokens, page_size=request.page_size,
                                         page_token=request.page_token, subscription_id=request.subscription_id,
                                         customer_id=request.customer_id)
        return pb.ListCreditGrantsResponse(grants=[convert.credit_grant_message(g) for g in page.grants],
                                           next_page_token=page.next_page_token)

    @rpc
    async def VoidCreditGrant(self, request: pb.VoidCreditGrantRequest, caller: Caller) -> pb.VoidCreditGrantResponse:
        grant = await credits.void_grant(self.db, caller, request.request_id, request.id)
        return pb.VoidCreditGrantResponse(grant=convert.credit_grant_message(grant))

    # -- test clocks -------------------------------------------------------------------

    @rpc
    async def CreateTestClock(self, request: pb.CreateTestClockRequest, caller: Caller) -> pb.CreateTestClockResponse:
        clock = await test_clocks.create_test_clock(self.db, caller, request.request_id, name=request.name,
                                                    frozen_time=convert.optional_time(request, "frozen_time"))
        return pb.CreateTestClockResponse(test_clock=convert.test_clock_message(clock))

    @rpc
    async def GetTestClock(self, request: pb.GetTestClockRequest, caller: Caller) -> pb.GetTestClockResponse:
        clock = await test_clocks.get_test_clock(self.db, caller, request.id)
        return pb.GetTestClockResponse(test_clock=convert.test_clock_message(clock))

    @rpc
    async def ListTestClocks(self, request: pb.ListTestClocksRequest, caller: Caller) -> pb.ListTestClocksResponse:
        page = await test_clocks.list_test_clocks(self.db, caller, tokens=self.tokens, page_size=request.page_size,
                                                  page_token=request.page_token)
        return pb.ListTestClocksResponse(test_clocks=[convert.test_clock_message(c) for c in page.clocks],
                                         next_page_token=page.next_page_token)

    @rpc
    async def AdvanceTestClock(self, request: pb.AdvanceTestClockRequest,
                               caller: Caller) -> pb.AdvanceTestClockResponse:
        clock = await test_clocks.advance_test_clock(self.db, caller, request.request_id, request.id,
                                                     convert.optional_time(request, "frozen_time"),
                                                     shards=self.run_shards)
        return pb.AdvanceTestClockResponse(test_clock=convert.test_clock_message(clock))

    @rpc
    async def DeleteTestClock(self, request: pb.DeleteTestClockRequest, caller: Caller) -> pb.DeleteTestClockResponse:
        removed = await test_clocks.delete_test_clock(self.db, caller, request.request_id, request.id)
        return pb.DeleteTestClockResponse(deleted_subscriptions=removed)

    # -- entitlements ------------------------------------------------------------------

    @rpc
    async def CheckEntitlement(self, request: pb.CheckEntitlementRequest,
                               caller: Caller) -> pb.CheckEntitlementResponse:
        found = await entitlements.check(self.db, caller, self.usage.plans, subscription_id=request.subscription_id,
                                         feature_code=request.feature_code, groups=self.entitlement_groups)
        return pb.CheckEntitlementResponse(entitlement=convert.entitlement_message(found))

    @rpc
    async def ListEntitlements(self, request: pb.ListEntitlementsRequest,
                               caller: Caller) -> pb.ListEntitlementsResponse:
        found = await entitlements.list_entitlements(self.db, caller, self.usage.plans,
                                                     subscription_id=request.subscription_id,
                                                     page_size=request.page_size, page_token=request.page_token)
        return pb.ListEntitlementsResponse(entitlements=[convert.entitlement_message(e) for e in found])
