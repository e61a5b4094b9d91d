"""BillingService: each RPC is one service call. RPCs of later issues answer UNIMPLEMENTED
(inherited from the generated base class) until they land."""
from __future__ import annotations

from billing.api import convert
from billing.api.errors import rpc
from billing.services import plans
from billing.services.context import Caller
from billing.store.db import Database
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, db: Database):
        self.db = db

    # -- plans -------------------------------------------------------------------------

    @rpc
    async def CreatePlan(self, request: pb.CreatePlanRequest, caller: Caller) -> pb.CreatePlanResponse:
        plan = await plans.create_plan(self.db, caller, request.request_id, convert.plan_input(request))
        return pb.CreatePlanResponse(plan=convert.plan_message(plan))

    @rpc
    async def GetPlan(self, request: pb.GetPlanRequest, caller: Caller) -> pb.GetPlanResponse:
        plan = await plans.get_plan(self.db, caller, request.id)
        return pb.GetPlanResponse(plan=convert.plan_message(plan))

    @rpc
    async def ListPlans(self, request: pb.ListPlansRequest, caller: Caller) -> pb.ListPlansResponse:
        page = await plans.list_plans(self.db, caller, page_size=request.page_size, page_token=request.page_token,
                                      include_archived=request.include_archived, code=request.code)
        return pb.ListPlansResponse(plans=[convert.plan_message(p) for p in page.plans],
                                    next_page_token=page.next_page_token)

    @rpc
    async def ArchivePlan(self, request: pb.ArchivePlanRequest, caller: Caller) -> pb.ArchivePlanResponse:
        plan = await plans.archive_plan(self.db, caller, request.request_id, request.id)
        return pb.ArchivePlanResponse(plan=convert.plan_message(plan))
