"""Which failures of a batch are retried, and how long the runner waits before the next try."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from consumers.dlq import DeadLetterDeliveryError
from consumers.strategy import Backpressure

# Not the strategy's fault and likely to pass: back off and retry the same batch. Any other
# exception from a strategy is a bug, and stops the runner.
_RETRIABLE: tuple[type[BaseException], ...] = (
    Backpressure,
    DeadLetterDeliveryError,
    OSError,  # includes ConnectionError and TimeoutError (asyncio's too)
    asyncpg.PostgresConnectionError,  # class 08, includes ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # client-side: connection closed or being released
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
)


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, _RETRIABLE)


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: `initial_s` doubling up to `max_s`, each wait cut by up to a
    fifth at random so that replicas failing together do not retry together."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def raw_delay(self, attempt: int) -> float:
        """The wait before retry `attempt` (1, 2, ...), without jitter."""
        return min(self.max_s, self.initial_s * 2 ** (attempt - 1))

    def delay(self, attempt: int, exc: BaseException | None = None,
              jitter: Callable[[float, float], float] = random.uniform) -> float:
        delay = self.raw_delay(attempt) * jitter(0.8, 1.0)
        if isinstance(exc, Backpressure) and exc.retry_after_s:
            delay = max(delay, exc.retry_after_s)
        return delay
