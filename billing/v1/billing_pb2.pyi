import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IntervalUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERVAL_UNIT_UNSPECIFIED: _ClassVar[IntervalUnit]
    INTERVAL_UNIT_DAY: _ClassVar[IntervalUnit]
    INTERVAL_UNIT_WEEK: _ClassVar[IntervalUnit]
    INTERVAL_UNIT_MONTH: _ClassVar[IntervalUnit]
    INTERVAL_UNIT_YEAR: _ClassVar[IntervalUnit]

class BillingTiming(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BILLING_TIMING_UNSPECIFIED: _ClassVar[BillingTiming]
    BILLING_TIMING_IN_ADVANCE: _ClassVar[BillingTiming]
    BILLING_TIMING_IN_ARREARS: _ClassVar[BillingTiming]

class PlanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_STATUS_UNSPECIFIED: _ClassVar[PlanStatus]
    PLAN_STATUS_ACTIVE: _ClassVar[PlanStatus]
    PLAN_STATUS_ARCHIVED: _ClassVar[PlanStatus]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_UNIQUE_COUNT: _ClassVar[Aggregation]
    AGGREGATION_LATEST: _ClassVar[Aggregation]
    AGGREGATION_WEIGHTED_SUM: _ClassVar[Aggregation]

class PricingModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICING_MODEL_UNSPECIFIED: _ClassVar[PricingModel]
    PRICING_MODEL_PER_UNIT: _ClassVar[PricingModel]
    PRICING_MODEL_PACKAGE: _ClassVar[PricingModel]
    PRICING_MODEL_GRADUATED: _ClassVar[PricingModel]
    PRICING_MODEL_VOLUME: _ClassVar[PricingModel]
    PRICING_MODEL_PERCENTAGE: _ClassVar[PricingModel]
    PRICING_MODEL_DYNAMIC: _ClassVar[PricingModel]

class PackageRounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACKAGE_ROUNDING_UNSPECIFIED: _ClassVar[PackageRounding]
    PACKAGE_ROUNDING_UP: _ClassVar[PackageRounding]
    PACKAGE_ROUNDING_DOWN: _ClassVar[PackageRounding]

class SubscriptionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIPTION_STATUS_UNSPECIFIED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_PENDING: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_TRIALING: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_ACTIVE: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_PAUSED: _ClassVar[SubscriptionStatus]
    SUBSCRIPTION_STATUS_CANCELED: _ClassVar[SubscriptionStatus]

class CancelMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_MODE_UNSPECIFIED: _ClassVar[CancelMode]
    CANCEL_MODE_IMMEDIATELY: _ClassVar[CancelMode]
    CANCEL_MODE_AT_PERIOD_END: _ClassVar[CancelMode]

class ChangeTiming(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_TIMING_UNSPECIFIED: _ClassVar[ChangeTiming]
    CHANGE_TIMING_IMMEDIATELY: _ClassVar[ChangeTiming]
    CHANGE_TIMING_AT_PERIOD_END: _ClassVar[ChangeTiming]

class ProrationBehavior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRORATION_BEHAVIOR_UNSPECIFIED: _ClassVar[ProrationBehavior]
    PRORATION_BEHAVIOR_NEXT_INVOICE: _ClassVar[ProrationBehavior]
    PRORATION_BEHAVIOR_INVOICE_NOW: _ClassVar[ProrationBehavior]
    PRORATION_BEHAVIOR_NONE: _ClassVar[ProrationBehavior]

class SeriesGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERIES_GRANULARITY_UNSPECIFIED: _ClassVar[SeriesGranularity]
    SERIES_GRANULARITY_HOUR: _ClassVar[SeriesGranularity]
    SERIES_GRANULARITY_DAY: _ClassVar[SeriesGranularity]

class BillingRunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BILLING_RUN_STATUS_UNSPECIFIED: _ClassVar[BillingRunStatus]
    BILLING_RUN_STATUS_PENDING: _ClassVar[BillingRunStatus]
    BILLING_RUN_STATUS_RUNNING: _ClassVar[BillingRunStatus]
    BILLING_RUN_STATUS_COMPLETED: _ClassVar[BillingRunStatus]
    BILLING_RUN_STATUS_FAILED: _ClassVar[BillingRunStatus]

class FeatureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_KIND_UNSPECIFIED: _ClassVar[FeatureKind]
    FEATURE_KIND_BOOLEAN: _ClassVar[FeatureKind]
    FEATURE_KIND_STATIC: _ClassVar[FeatureKind]
    FEATURE_KIND_METERED: _ClassVar[FeatureKind]

class LimitMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_MODE_UNSPECIFIED: _ClassVar[LimitMode]
    LIMIT_MODE_HARD: _ClassVar[LimitMode]
    LIMIT_MODE_SOFT: _ClassVar[LimitMode]

class DiscountKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCOUNT_KIND_UNSPECIFIED: _ClassVar[DiscountKind]
    DISCOUNT_KIND_PERCENTAGE: _ClassVar[DiscountKind]
    DISCOUNT_KIND_FIXED_AMOUNT: _ClassVar[DiscountKind]

class TestClockStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEST_CLOCK_STATUS_UNSPECIFIED: _ClassVar[TestClockStatus]
    TEST_CLOCK_STATUS_READY: _ClassVar[TestClockStatus]
    TEST_CLOCK_STATUS_ADVANCING: _ClassVar[TestClockStatus]
INTERVAL_UNIT_UNSPECIFIED: IntervalUnit
INTERVAL_UNIT_DAY: IntervalUnit
INTERVAL_UNIT_WEEK: IntervalUnit
INTERVAL_UNIT_MONTH: IntervalUnit
INTERVAL_UNIT_YEAR: IntervalUnit
BILLING_TIMING_UNSPECIFIED: BillingTiming
BILLING_TIMING_IN_ADVANCE: BillingTiming
BILLING_TIMING_IN_ARREARS: BillingTiming
PLAN_STATUS_UNSPECIFIED: PlanStatus
PLAN_STATUS_ACTIVE: PlanStatus
PLAN_STATUS_ARCHIVED: PlanStatus
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_COUNT: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_UNIQUE_COUNT: Aggregation
AGGREGATION_LATEST: Aggregation
AGGREGATION_WEIGHTED_SUM: Aggregation
PRICING_MODEL_UNSPECIFIED: PricingModel
PRICING_MODEL_PER_UNIT: PricingModel
PRICING_MODEL_PACKAGE: PricingModel
PRICING_MODEL_GRADUATED: PricingModel
PRICING_MODEL_VOLUME: PricingModel
PRICING_MODEL_PERCENTAGE: PricingModel
PRICING_MODEL_DYNAMIC: PricingModel
PACKAGE_ROUNDING_UNSPECIFIED: PackageRounding
PACKAGE_ROUNDING_UP: PackageRounding
PACKAGE_ROUNDING_DOWN: PackageRounding
SUBSCRIPTION_STATUS_UNSPECIFIED: SubscriptionStatus
SUBSCRIPTION_STATUS_PENDING: SubscriptionStatus
SUBSCRIPTION_STATUS_TRIALING: SubscriptionStatus
SUBSCRIPTION_STATUS_ACTIVE: SubscriptionStatus
SUBSCRIPTION_STATUS_PAUSED: SubscriptionStatus
SUBSCRIPTION_STATUS_CANCELED: SubscriptionStatus
CANCEL_MODE_UNSPECIFIED: CancelMode
CANCEL_MODE_IMMEDIATELY: CancelMode
CANCEL_MODE_AT_PERIOD_END: CancelMode
CHANGE_TIMING_UNSPECIFIED: ChangeTiming
CHANGE_TIMING_IMMEDIATELY: ChangeTiming
CHANGE_TIMING_AT_PERIOD_END: ChangeTiming
PRORATION_BEHAVIOR_UNSPECIFIED: ProrationBehavior
PRORATION_BEHAVIOR_NEXT_INVOICE: ProrationBehavior
PRORATION_BEHAVIOR_INVOICE_NOW: ProrationBehavior
PRORATION_BEHAVIOR_NONE: ProrationBehavior
SERIES_GRANULARITY_UNSPECIFIED: SeriesGranularity
SERIES_GRANULARITY_HOUR: SeriesGranularity
SERIES_GRANULARITY_DAY: SeriesGranularity
BILLING_RUN_STATUS_UNSPECIFIED: BillingRunStatus
BILLING_RUN_STATUS_PENDING: BillingRunStatus
BILLING_RUN_STATUS_RUNNING: BillingRunStatus
BILLING_RUN_STATUS_COMPLETED: BillingRunStatus
BILLING_RUN_STATUS_FAILED: BillingRunStatus
FEATURE_KIND_UNSPECIFIED: FeatureKind
FEATURE_KIND_BOOLEAN: FeatureKind
FEATURE_KIND_STATIC: FeatureKind
FEATURE_KIND_METERED: FeatureKind
LIMIT_MODE_UNSPECIFIED: LimitMode
LIMIT_MODE_HARD: LimitMode
LIMIT_MODE_SOFT: LimitMode
DISCOUNT_KIND_UNSPECIFIED: DiscountKind
DISCOUNT_KIND_PERCENTAGE: DiscountKind
DISCOUNT_KIND_FIXED_AMOUNT: DiscountKind
TEST_CLOCK_STATUS_UNSPECIFIED: TestClockStatus
TEST_CLOCK_STATUS_READY: TestClockStatus
TEST_CLOCK_STATUS_ADVANCING: TestClockStatus

class Plan(_message.Message):
    __slots__ = ("id", "code", "version", "name", "description", "currency", "interval", "interval_count", "base_fee", "billing_timing", "trial_days", "usage_charges", "status", "created_at", "archived_at", "minimum_commitment", "features")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    BASE_FEE_FIELD_NUMBER: _ClassVar[int]
    BILLING_TIMING_FIELD_NUMBER: _ClassVar[int]
    TRIAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    USAGE_CHARGES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_AT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: str
    version: int
    name: str
    description: str
    currency: str
    interval: IntervalUnit
    interval_count: int
    base_fee: str
    billing_timing: BillingTiming
    trial_days: int
    usage_charges: _containers.RepeatedCompositeFieldContainer[UsageCharge]
    status: PlanStatus
    created_at: _timestamp_pb2.Timestamp
    archived_at: _timestamp_pb2.Timestamp
    minimum_commitment: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    def __init__(self, id: _Optional[str] = ..., code: _Optional[str] = ..., version: _Optional[int] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., currency: _Optional[str] = ..., interval: _Optional[_Union[IntervalUnit, str]] = ..., interval_count: _Optional[int] = ..., base_fee: _Optional[str] = ..., billing_timing: _Optional[_Union[BillingTiming, str]] = ..., trial_days: _Optional[int] = ..., usage_charges: _Optional[_Iterable[_Union[UsageCharge, _Mapping]]] = ..., status: _Optional[_Union[PlanStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., archived_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., minimum_commitment: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("code", "kind", "value", "metric_code", "limit", "limit_mode")
    CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    kind: FeatureKind
    value: str
    metric_code: str
    limit: str
    limit_mode: LimitMode
    def __init__(self, code: _Optional[str] = ..., kind: _Optional[_Union[FeatureKind, str]] = ..., value: _Optional[str] = ..., metric_code: _Optional[str] = ..., limit: _Optional[str] = ..., limit_mode: _Optional[_Union[LimitMode, str]] = ...) -> None: ...

class UsageCharge(_message.Message):
    __slots__ = ("metric_code", "aggregation", "pricing_model", "unit_price", "package_size", "tiers", "unique_property", "max_amount", "free_units", "free_amount", "package_rounding", "zero_usage_flat_fee", "percentage_rate", "fixed_fee_per_event", "min_fee_per_event", "max_fee_per_event", "amount_property", "corrections")
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PRICING_MODEL_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FREE_UNITS_FIELD_NUMBER: _ClassVar[int]
    FREE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ROUNDING_FIELD_NUMBER: _ClassVar[int]
    ZERO_USAGE_FLAT_FEE_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_RATE_FIELD_NUMBER: _ClassVar[int]
    FIXED_FEE_PER_EVENT_FIELD_NUMBER: _ClassVar[int]
    MIN_FEE_PER_EVENT_FIELD_NUMBER: _ClassVar[int]
    MAX_FEE_PER_EVENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    metric_code: str
    aggregation: Aggregation
    pricing_model: PricingModel
    unit_price: str
    package_size: str
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    unique_property: str
    max_amount: str
    free_units: str
    free_amount: str
    package_rounding: PackageRounding
    zero_usage_flat_fee: bool
    percentage_rate: str
    fixed_fee_per_event: str
    min_fee_per_event: str
    max_fee_per_event: str
    amount_property: str
    corrections: bool
    def __init__(self, metric_code: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., pricing_model: _Optional[_Union[PricingModel, str]] = ..., unit_price: _Optional[str] = ..., package_size: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ..., unique_property: _Optional[str] = ..., max_amount: _Optional[str] = ..., free_units: _Optional[str] = ..., free_amount: _Optional[str] = ..., package_rounding: _Optional[_Union[PackageRounding, str]] = ..., zero_usage_flat_fee: _Optional[bool] = ..., percentage_rate: _Optional[str] = ..., fixed_fee_per_event: _Optional[str] = ..., min_fee_per_event: _Optional[str] = ..., max_fee_per_event: _Optional[str] = ..., amount_property: _Optional[str] = ..., corrections: _Optional[bool] = ...) -> None: ...

class Tier(_message.Message):
    __slots__ = ("up_to", "unit_price", "flat_fee")
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    FLAT_FEE_FIELD_NUMBER: _ClassVar[int]
    up_to: str
    unit_price: str
    flat_fee: str
    def __init__(self, up_to: _Optional[str] = ..., unit_price: _Optional[str] = ..., flat_fee: _Optional[str] = ...) -> None: ...

class CreatePlanRequest(_message.Message):
    __slots__ = ("request_id", "code", "name", "description", "currency", "interval", "interval_count", "base_fee", "billing_timing", "trial_days", "usage_charges", "minimum_commitment", "features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    BASE_FEE_FIELD_NUMBER: _ClassVar[int]
    BILLING_TIMING_FIELD_NUMBER: _ClassVar[int]
    TRIAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    USAGE_CHARGES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    code: str
    name: str
    description: str
    currency: str
    interval: IntervalUnit
    interval_count: int
    base_fee: str
    billing_timing: BillingTiming
    trial_days: int
    usage_charges: _containers.RepeatedCompositeFieldContainer[UsageCharge]
    minimum_commitment: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    def __init__(self, request_id: _Optional[str] = ..., code: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., currency: _Optional[str] = ..., interval: _Optional[_Union[IntervalUnit, str]] = ..., interval_count: _Optional[int] = ..., base_fee: _Optional[str] = ..., billing_timing: _Optional[_Union[BillingTiming, str]] = ..., trial_days: _Optional[int] = ..., usage_charges: _Optional[_Iterable[_Union[UsageCharge, _Mapping]]] = ..., minimum_commitment: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ...) -> None: ...

class CreatePlanResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPlanResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class ListPlansRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "include_archived", "code")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    include_archived: bool
    code: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_archived: _Optional[bool] = ..., code: _Optional[str] = ...) -> None: ...

class ListPlansResponse(_message.Message):
    __slots__ = ("plans", "next_page_token")
    PLANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plans: _containers.RepeatedCompositeFieldContainer[Plan]
    next_page_token: str
    def __init__(self, plans: _Optional[_Iterable[_Union[Plan, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ArchivePlanRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ArchivePlanResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("id", "customer_id", "plan_id", "plan_code", "status", "created_at", "start_at", "billing_anchor", "current_period_start", "current_period_end", "trial_end", "cancel_at_period_end", "canceled_at", "paused_at", "pause_resumes_at", "pending_change", "history", "metadata", "time_zone", "test_clock_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    START_AT_FIELD_NUMBER: _ClassVar[int]
    BILLING_ANCHOR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    TRIAL_END_FIELD_NUMBER: _ClassVar[int]
    CANCEL_AT_PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CANCELED_AT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_AT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_RESUMES_AT_FIELD_NUMBER: _ClassVar[int]
    PENDING_CHANGE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    TEST_CLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    plan_id: str
    plan_code: str
    status: SubscriptionStatus
    created_at: _timestamp_pb2.Timestamp
    start_at: _timestamp_pb2.Timestamp
    billing_anchor: _timestamp_pb2.Timestamp
    current_period_start: _timestamp_pb2.Timestamp
    current_period_end: _timestamp_pb2.Timestamp
    trial_end: _timestamp_pb2.Timestamp
    cancel_at_period_end: bool
    canceled_at: _timestamp_pb2.Timestamp
    paused_at: _timestamp_pb2.Timestamp
    pause_resumes_at: _timestamp_pb2.Timestamp
    pending_change: PendingPlanChange
    history: _containers.RepeatedCompositeFieldContainer[SubscriptionHistoryEntry]
    metadata: _containers.ScalarMap[str, str]
    time_zone: str
    test_clock_id: str
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., plan_code: _Optional[str] = ..., status: _Optional[_Union[SubscriptionStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., billing_anchor: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trial_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancel_at_period_end: _Optional[bool] = ..., canceled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_resumes_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pending_change: _Optional[_Union[PendingPlanChange, _Mapping]] = ..., history: _Optional[_Iterable[_Union[SubscriptionHistoryEntry, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., time_zone: _Optional[str] = ..., test_clock_id: _Optional[str] = ...) -> None: ...

class PendingPlanChange(_message.Message):
    __slots__ = ("plan_id", "plan_code", "effective_at")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_CODE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    plan_code: str
    effective_at: _timestamp_pb2.Timestamp
    def __init__(self, plan_id: _Optional[str] = ..., plan_code: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubscriptionHistoryEntry(_message.Message):
    __slots__ = ("at", "action", "actor", "from_status", "to_status", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    action: str
    actor: str
    from_status: SubscriptionStatus
    to_status: SubscriptionStatus
    details: _containers.ScalarMap[str, str]
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., from_status: _Optional[_Union[SubscriptionStatus, str]] = ..., to_status: _Optional[_Union[SubscriptionStatus, str]] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateSubscriptionRequest(_message.Message):
    __slots__ = ("request_id", "customer_id", "plan_id", "start_at", "billing_anchor", "trial_days", "activate", "metadata", "time_zone", "test_clock_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    START_AT_FIELD_NUMBER: _ClassVar[int]
    BILLING_ANCHOR_FIELD_NUMBER: _ClassVar[int]
    TRIAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    TEST_CLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    customer_id: str
    plan_id: str
    start_at: _timestamp_pb2.Timestamp
    billing_anchor: _timestamp_pb2.Timestamp
    trial_days: int
    activate: bool
    metadata: _containers.ScalarMap[str, str]
    time_zone: str
    test_clock_id: str
    def __init__(self, request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., start_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., billing_anchor: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trial_days: _Optional[int] = ..., activate: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., time_zone: _Optional[str] = ..., test_clock_id: _Optional[str] = ...) -> None: ...

class CreateSubscriptionResponse(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ...) -> None: ...

class GetSubscriptionRequest(_message.Message):
    __slots__ = ("id", "include_history")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_history: bool
    def __init__(self, id: _Optional[str] = ..., include_history: _Optional[bool] = ...) -> None: ...

class GetSubscriptionResponse(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ...) -> None: ...

class ListSubscriptionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "customer_id", "plan_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: SubscriptionStatus
    customer_id: str
    plan_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[SubscriptionStatus, str]] = ..., customer_id: _Optional[str] = ..., plan_id: _Optional[str] = ...) -> None: ...

class ListSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions", "next_page_token")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[Subscription]
    next_page_token: str
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[Subscription, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ActivateSubscriptionRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ActivateSubscriptionResponse(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ...) -> None: ...

class PauseSubscriptionRequest(_message.Message):
    __slots__ = ("request_id", "id", "resumes_at", "preview_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RESUMES_AT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    resumes_at: _timestamp_pb2.Timestamp
    preview_only: bool
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., resumes_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., preview_only: _Optional[bool] = ...) -> None: ...

class PauseSubscriptionResponse(_message.Message):
    __slots__ = ("subscription", "preview")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    preview: ChangePreview
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ..., preview: _Optional[_Union[ChangePreview, _Mapping]] = ...) -> None: ...

class ResumeSubscriptionRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ResumeSubscriptionResponse(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ...) -> None: ...

class CancelSubscriptionRequest(_message.Message):
    __slots__ = ("request_id", "id", "mode", "proration", "preview_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PRORATION_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    mode: CancelMode
    proration: ProrationBehavior
    preview_only: bool
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., mode: _Optional[_Union[CancelMode, str]] = ..., proration: _Optional[_Union[ProrationBehavior, str]] = ..., preview_only: _Optional[bool] = ...) -> None: ...

class CancelSubscriptionResponse(_message.Message):
    __slots__ = ("subscription", "preview")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    preview: ChangePreview
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ..., preview: _Optional[_Union[ChangePreview, _Mapping]] = ...) -> None: ...

class ChangePlanRequest(_message.Message):
    __slots__ = ("request_id", "id", "new_plan_id", "timing", "proration_behavior", "preview_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NEW_PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    PRORATION_BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    new_plan_id: str
    timing: ChangeTiming
    proration_behavior: ProrationBehavior
    preview_only: bool
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., new_plan_id: _Optional[str] = ..., timing: _Optional[_Union[ChangeTiming, str]] = ..., proration_behavior: _Optional[_Union[ProrationBehavior, str]] = ..., preview_only: _Optional[bool] = ...) -> None: ...

class ChangePlanResponse(_message.Message):
    __slots__ = ("subscription", "preview")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    preview: ChangePreview
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ..., preview: _Optional[_Union[ChangePreview, _Mapping]] = ...) -> None: ...

class ChangePreview(_message.Message):
    __slots__ = ("lines", "total_amount", "currency", "invoice_now")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NOW_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[InvoiceLine]
    total_amount: str
    currency: str
    invoice_now: bool
    def __init__(self, lines: _Optional[_Iterable[_Union[InvoiceLine, _Mapping]]] = ..., total_amount: _Optional[str] = ..., currency: _Optional[str] = ..., invoice_now: _Optional[bool] = ...) -> None: ...

class InvoiceLine(_message.Message):
    __slots__ = ("kind", "description", "metric_code", "quantity", "unit_price", "amount", "period_start", "period_end", "fraction", "original_period_start")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    kind: str
    description: str
    metric_code: str
    quantity: str
    unit_price: str
    amount: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    fraction: str
    original_period_start: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., description: _Optional[str] = ..., metric_code: _Optional[str] = ..., quantity: _Optional[str] = ..., unit_price: _Optional[str] = ..., amount: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fraction: _Optional[str] = ..., original_period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PreviewInvoiceRequest(_message.Message):
    __slots__ = ("subscription_id", "at")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, subscription_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InvoicePreview(_message.Message):
    __slots__ = ("invoice_request_id", "period_start", "period_end", "currency", "lines", "total_amount")
    INVOICE_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    invoice_request_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    currency: str
    lines: _containers.RepeatedCompositeFieldContainer[InvoiceLine]
    total_amount: str
    def __init__(self, invoice_request_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., currency: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[InvoiceLine, _Mapping]]] = ..., total_amount: _Optional[str] = ...) -> None: ...

class PreviewInvoiceResponse(_message.Message):
    __slots__ = ("subscription_id", "invoices")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    invoices: _containers.RepeatedCompositeFieldContainer[InvoicePreview]
    def __init__(self, subscription_id: _Optional[str] = ..., invoices: _Optional[_Iterable[_Union[InvoicePreview, _Mapping]]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("request_id", "event_id", "subscription_id", "metric_code", "quantity", "occurred_at", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    event_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at: _timestamp_pb2.Timestamp
    properties: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., event_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., metric_code: _Optional[str] = ..., quantity: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("duplicate", "event_id", "period_start", "period_end")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    event_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, duplicate: _Optional[bool] = ..., event_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageEventInput(_message.Message):
    __slots__ = ("event_id", "subscription_id", "metric_code", "quantity", "occurred_at", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at: _timestamp_pb2.Timestamp
    properties: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., metric_code: _Optional[str] = ..., quantity: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecordUsageBatchRequest(_message.Message):
    __slots__ = ("request_id", "events")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    events: _containers.RepeatedCompositeFieldContainer[UsageEventInput]
    def __init__(self, request_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UsageEventInput, _Mapping]]] = ...) -> None: ...

class UsageEventError(_message.Message):
    __slots__ = ("code", "reason", "field", "description")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    field: str
    description: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class UsageEventOutcome(_message.Message):
    __slots__ = ("index", "recorded", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    recorded: RecordUsageResponse
    error: UsageEventError
    def __init__(self, index: _Optional[int] = ..., recorded: _Optional[_Union[RecordUsageResponse, _Mapping]] = ..., error: _Optional[_Union[UsageEventError, _Mapping]] = ...) -> None: ...

class RecordUsageBatchResponse(_message.Message):
    __slots__ = ("outcomes", "recorded", "duplicates", "rejected")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[UsageEventOutcome]
    recorded: int
    duplicates: int
    rejected: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[UsageEventOutcome, _Mapping]]] = ..., recorded: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("subscription_id", "period_start", "series")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    period_start: _timestamp_pb2.Timestamp
    series: SeriesGranularity
    def __init__(self, subscription_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., series: _Optional[_Union[SeriesGranularity, str]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("subscription_id", "period_start", "period_end", "currency", "metrics", "total_amount")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    currency: str
    metrics: _containers.RepeatedCompositeFieldContainer[MetricUsage]
    total_amount: str
    def __init__(self, subscription_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., currency: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[MetricUsage, _Mapping]]] = ..., total_amount: _Optional[str] = ...) -> None: ...

class MetricUsage(_message.Message):
    __slots__ = ("metric_code", "aggregation", "quantity", "amount", "series", "late_event_count", "late_quantity_sum", "late_billed_event_count")
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    LATE_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATE_QUANTITY_SUM_FIELD_NUMBER: _ClassVar[int]
    LATE_BILLED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    metric_code: str
    aggregation: Aggregation
    quantity: str
    amount: str
    series: _containers.RepeatedCompositeFieldContainer[UsagePoint]
    late_event_count: int
    late_quantity_sum: str
    late_billed_event_count: int
    def __init__(self, metric_code: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., quantity: _Optional[str] = ..., amount: _Optional[str] = ..., series: _Optional[_Iterable[_Union[UsagePoint, _Mapping]]] = ..., late_event_count: _Optional[int] = ..., late_quantity_sum: _Optional[str] = ..., late_billed_event_count: _Optional[int] = ...) -> None: ...

class UsagePoint(_message.Message):
    __slots__ = ("at", "quantity")
    AT_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    quantity: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[str] = ...) -> None: ...

class RunBillingRequest(_message.Message):
    __slots__ = ("request_id", "idempotency_key", "as_of")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    idempotency_key: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunBillingResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: BillingRun
    def __init__(self, run: _Optional[_Union[BillingRun, _Mapping]] = ...) -> None: ...

class BillingRun(_message.Message):
    __slots__ = ("id", "idempotency_key", "status", "as_of", "created_at", "started_at", "finished_at", "subscriptions_due", "subscriptions_billed", "subscriptions_skipped", "subscriptions_failed", "failures", "totals", "test_clock_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_DUE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_BILLED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FAILED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    TEST_CLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    idempotency_key: str
    status: BillingRunStatus
    as_of: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    subscriptions_due: int
    subscriptions_billed: int
    subscriptions_skipped: int
    subscriptions_failed: int
    failures: _containers.RepeatedCompositeFieldContainer[BillingRunFailure]
    totals: _containers.RepeatedCompositeFieldContainer[CurrencyTotal]
    test_clock_id: str
    def __init__(self, id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., status: _Optional[_Union[BillingRunStatus, str]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subscriptions_due: _Optional[int] = ..., subscriptions_billed: _Optional[int] = ..., subscriptions_skipped: _Optional[int] = ..., subscriptions_failed: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[BillingRunFailure, _Mapping]]] = ..., totals: _Optional[_Iterable[_Union[CurrencyTotal, _Mapping]]] = ..., test_clock_id: _Optional[str] = ...) -> None: ...

class BillingRunFailure(_message.Message):
    __slots__ = ("subscription_id", "reason")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    reason: str
    def __init__(self, subscription_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CurrencyTotal(_message.Message):
    __slots__ = ("currency", "amount")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    currency: str
    amount: str
    def __init__(self, currency: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class GetBillingRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBillingRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: BillingRun
    def __init__(self, run: _Optional[_Union[BillingRun, _Mapping]] = ...) -> None: ...

class ListBillingRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "created_after", "created_before")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: BillingRunStatus
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[BillingRunStatus, str]] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListBillingRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[BillingRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[BillingRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Discount(_message.Message):
    __slots__ = ("id", "subscription_id", "kind", "value", "applies_to", "periods", "periods_used", "created_at", "deleted_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    APPLIES_TO_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    PERIODS_USED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    subscription_id: str
    kind: DiscountKind
    value: str
    applies_to: _containers.RepeatedScalarFieldContainer[str]
    periods: int
    periods_used: int
    created_at: _timestamp_pb2.Timestamp
    deleted_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., kind: _Optional[_Union[DiscountKind, str]] = ..., value: _Optional[str] = ..., applies_to: _Optional[_Iterable[str]] = ..., periods: _Optional[int] = ..., periods_used: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateDiscountRequest(_message.Message):
    __slots__ = ("request_id", "subscription_id", "kind", "value", "applies_to", "periods")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    APPLIES_TO_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    subscription_id: str
    kind: DiscountKind
    value: str
    applies_to: _containers.RepeatedScalarFieldContainer[str]
    periods: int
    def __init__(self, request_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., kind: _Optional[_Union[DiscountKind, str]] = ..., value: _Optional[str] = ..., applies_to: _Optional[_Iterable[str]] = ..., periods: _Optional[int] = ...) -> None: ...

class CreateDiscountResponse(_message.Message):
    __slots__ = ("discount",)
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    discount: Discount
    def __init__(self, discount: _Optional[_Union[Discount, _Mapping]] = ...) -> None: ...

class ListDiscountsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "subscription_id", "include_deleted")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    subscription_id: str
    include_deleted: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., subscription_id: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class ListDiscountsResponse(_message.Message):
    __slots__ = ("discounts", "next_page_token")
    DISCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    discounts: _containers.RepeatedCompositeFieldContainer[Discount]
    next_page_token: str
    def __init__(self, discounts: _Optional[_Iterable[_Union[Discount, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDiscountRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class DeleteDiscountResponse(_message.Message):
    __slots__ = ("discount",)
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    discount: Discount
    def __init__(self, discount: _Optional[_Union[Discount, _Mapping]] = ...) -> None: ...

class CreditGrant(_message.Message):
    __slots__ = ("id", "customer_id", "subscription_id", "currency", "granted", "applied", "expired", "voided", "remaining", "priority", "effective_at", "expires_at", "description", "status", "created_at", "voided_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    VOIDED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VOIDED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    subscription_id: str
    currency: str
    granted: str
    applied: str
    expired: str
    voided: str
    remaining: str
    priority: int
    effective_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    description: str
    status: str
    created_at: _timestamp_pb2.Timestamp
    voided_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., currency: _Optional[str] = ..., granted: _Optional[str] = ..., applied: _Optional[str] = ..., expired: _Optional[str] = ..., voided: _Optional[str] = ..., remaining: _Optional[str] = ..., priority: _Optional[int] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ..., status: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., voided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCreditGrantRequest(_message.Message):
    __slots__ = ("request_id", "subscription_id", "customer_id", "amount", "currency", "priority", "effective_at", "expires_at", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    subscription_id: str
    customer_id: str
    amount: str
    currency: str
    priority: int
    effective_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    description: str
    def __init__(self, request_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., priority: _Optional[int] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class CreateCreditGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: CreditGrant
    def __init__(self, grant: _Optional[_Union[CreditGrant, _Mapping]] = ...) -> None: ...

class ListCreditGrantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "subscription_id", "customer_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    subscription_id: str
    customer_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., subscription_id: _Optional[str] = ..., customer_id: _Optional[str] = ...) -> None: ...

class ListCreditGrantsResponse(_message.Message):
    __slots__ = ("grants", "next_page_token")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[CreditGrant]
    next_page_token: str
    def __init__(self, grants: _Optional[_Iterable[_Union[CreditGrant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VoidCreditGrantRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class TestClock(_message.Message):
    __slots__ = ("id", "name", "frozen_time", "status", "advance_to", "advance_run_id", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROZEN_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_TO_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    frozen_time: _timestamp_pb2.Timestamp
    status: TestClockStatus
    advance_to: _timestamp_pb2.Timestamp
    advance_run_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., frozen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[TestClockStatus, str]] = ..., advance_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., advance_run_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTestClockRequest(_message.Message):
    __slots__ = ("request_id", "name", "frozen_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROZEN_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    frozen_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ..., frozen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTestClockResponse(_message.Message):
    __slots__ = ("test_clock",)
    TEST_CLOCK_FIELD_NUMBER: _ClassVar[int]
    test_clock: TestClock
    def __init__(self, test_clock: _Optional[_Union[TestClock, _Mapping]] = ...) -> None: ...

class GetTestClockRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetTestClockResponse(_message.Message):
    __slots__ = ("test_clock",)
    TEST_CLOCK_FIELD_NUMBER: _ClassVar[int]
    test_clock: TestClock
    def __init__(self, test_clock: _Optional[_Union[TestClock, _Mapping]] = ...) -> None: ...

class ListTestClocksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTestClocksResponse(_message.Message):
    __slots__ = ("test_clocks", "next_page_token")
    TEST_CLOCKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    test_clocks: _containers.RepeatedCompositeFieldContainer[TestClock]
    next_page_token: str
    def __init__(self, test_clocks: _Optional[_Iterable[_Union[TestClock, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AdvanceTestClockRequest(_message.Message):
    __slots__ = ("request_id", "id", "frozen_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FROZEN_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    frozen_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., frozen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AdvanceTestClockResponse(_message.Message):
    __slots__ = ("test_clock",)
    TEST_CLOCK_FIELD_NUMBER: _ClassVar[int]
    test_clock: TestClock
    def __init__(self, test_clock: _Optional[_Union[TestClock, _Mapping]] = ...) -> None: ...

class DeleteTestClockRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class VoidCreditGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: CreditGrant
    def __init__(self, grant: _Optional[_Union[CreditGrant, _Mapping]] = ...) -> None: ...

class DeleteTestClockResponse(_message.Message):
    __slots__ = ("deleted_subscriptions",)
    DELETED_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_subscriptions: int
    def __init__(self, deleted_subscriptions: _Optional[int] = ...) -> None: ...

class CheckEntitlementRequest(_message.Message):
    __slots__ = ("subscription_id", "feature_code")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CODE_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    feature_code: str
    def __init__(self, subscription_id: _Optional[str] = ..., feature_code: _Optional[str] = ...) -> None: ...

class Entitlement(_message.Message):
    __slots__ = ("feature_code", "kind", "allowed", "value", "used", "remaining", "limit", "reason", "over_limit", "metric_code", "period_start", "period_end")
    FEATURE_CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OVER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    feature_code: str
    kind: FeatureKind
    allowed: bool
    value: str
    used: str
    remaining: str
    limit: str
    reason: str
    over_limit: bool
    metric_code: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, feature_code: _Optional[str] = ..., kind: _Optional[_Union[FeatureKind, str]] = ..., allowed: _Optional[bool] = ..., value: _Optional[str] = ..., used: _Optional[str] = ..., remaining: _Optional[str] = ..., limit: _Optional[str] = ..., reason: _Optional[str] = ..., over_limit: _Optional[bool] = ..., metric_code: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckEntitlementResponse(_message.Message):
    __slots__ = ("entitlement",)
    ENTITLEMENT_FIELD_NUMBER: _ClassVar[int]
    entitlement: Entitlement
    def __init__(self, entitlement: _Optional[_Union[Entitlement, _Mapping]] = ...) -> None: ...

class ListEntitlementsRequest(_message.Message):
    __slots__ = ("subscription_id", "page_size", "page_token")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    page_size: int
    page_token: str
    def __init__(self, subscription_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntitlementsResponse(_message.Message):
    __slots__ = ("entitlements", "next_page_token")
    ENTITLEMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entitlements: _containers.RepeatedCompositeFieldContainer[Entitlement]
    next_page_token: str
    def __init__(self, entitlements: _Optional[_Iterable[_Union[Entitlement, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Threshold(_message.Message):
    __slots__ = ("id", "subscription_id", "metric_code", "value", "recurring", "aggregation", "created_at", "deleted_at", "measure", "percent", "invoice_on_cross", "plan_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RECURRING_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ON_CROSS_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    subscription_id: str
    metric_code: str
    value: str
    recurring: bool
    aggregation: str
    created_at: _timestamp_pb2.Timestamp
    deleted_at: _timestamp_pb2.Timestamp
    measure: str
    percent: str
    invoice_on_cross: bool
    plan_id: str
    def __init__(self, id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., metric_code: _Optional[str] = ..., value: _Optional[str] = ..., recurring: _Optional[bool] = ..., aggregation: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., measure: _Optional[str] = ..., percent: _Optional[str] = ..., invoice_on_cross: _Optional[bool] = ..., plan_id: _Optional[str] = ...) -> None: ...

class CreateThresholdRequest(_message.Message):
    __slots__ = ("request_id", "subscription_id", "metric_code", "value", "once", "measure", "percent", "invoice_on_cross", "plan_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ONCE_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ON_CROSS_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    subscription_id: str
    metric_code: str
    value: str
    once: bool
    measure: str
    percent: str
    invoice_on_cross: bool
    plan_id: str
    def __init__(self, request_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., metric_code: _Optional[str] = ..., value: _Optional[str] = ..., once: _Optional[bool] = ..., measure: _Optional[str] = ..., percent: _Optional[str] = ..., invoice_on_cross: _Optional[bool] = ..., plan_id: _Optional[str] = ...) -> None: ...

class CreateThresholdResponse(_message.Message):
    __slots__ = ("threshold",)
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    threshold: Threshold
    def __init__(self, threshold: _Optional[_Union[Threshold, _Mapping]] = ...) -> None: ...

class ListThresholdsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "subscription_id", "include_deleted", "plan_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    subscription_id: str
    include_deleted: bool
    plan_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., subscription_id: _Optional[str] = ..., include_deleted: _Optional[bool] = ..., plan_id: _Optional[str] = ...) -> None: ...

class ListThresholdsResponse(_message.Message):
    __slots__ = ("thresholds", "next_page_token")
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    thresholds: _containers.RepeatedCompositeFieldContainer[Threshold]
    next_page_token: str
    def __init__(self, thresholds: _Optional[_Iterable[_Union[Threshold, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteThresholdRequest(_message.Message):
    __slots__ = ("request_id", "id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class DeleteThresholdResponse(_message.Message):
    __slots__ = ("threshold",)
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    threshold: Threshold
    def __init__(self, threshold: _Optional[_Union[Threshold, _Mapping]] = ...) -> None: ...
