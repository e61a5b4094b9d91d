"""The composition root: the settings are read once, and what the gRPC servicer and the
Kafka consumers share is built once from them and handed to both.

So both ingest paths (gRPC RecordUsage and the usage consumer) apply the same configured
limits and share one plan cache; billing/runtime.py starts the roles with these.
"""
from __future__ import annotations

from dataclasses import dataclass

from billing.config import Settings
from billing.registry import install_reader
from billing.services.paging import PageTokens
from billing.services.plans import PlanCache
from billing.services.usage import Usage, UsageLimits
from billing.services.usage_record import GroupCommit

_US_PER_S = 1_000_000


@dataclass(frozen=True)
class RunSettings:
    """How this process requests billing runs (the api's RunBilling and the scheduler)."""

    shards: int


@dataclass(frozen=True)
class Components:
    """What the entry points of one process share."""

    settings: Settings
    usage_limits: UsageLimits
    plans: PlanCache  # one cache per process: RecordUsage, GetUsage and the usage consumer
    usage: Usage
    runs: RunSettings
    page_tokens: PageTokens  # one signing key per process (BILLING_PAGE_TOKEN_SECRET, else random)


def usage_limits(settings: Settings) -> UsageLimits:
    return UsageLimits(max_future_skew_us=settings.usage_max_future_skew_s * _US_PER_S,
                       max_age_us=settings.usage_max_age_days * 86_400 * _US_PER_S)


def build(settings: Settings | None = None) -> Components:
    settings = settings if settings is not None else Settings()
    install_reader(settings)
    limits = usage_limits(settings)
    plans = PlanCache()
    usage = Usage(limits, plans)
    if settings.usage_group_commit_ms > 0:
        usage.group = GroupCommit(usage, settings.usage_group_commit_ms / 1000, settings.usage_group_commit_max,
                                  settings.usage_groups_in_flight, settings.usage_group_commit_max_events)
    return Components(settings=settings, usage_limits=limits, plans=plans, usage=usage,
                      runs=RunSettings(shards=settings.run_shards),
                      page_tokens=PageTokens(settings.page_token_secret.get_secret_value()))
