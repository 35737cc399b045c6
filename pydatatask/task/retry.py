"""Retry policy: how often a failed job is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..durations import parse_duration
from ..errors import ConfigurationError, CorruptValueError

__all__ = ("RetryPolicy",)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed job up to ``max_attempts`` times in all.

    The delay before attempt ``n+1`` is ``backoff * factor**(n-1)``, capped at
    ``max_backoff``, then spread by ``+-jitter`` (a fraction). Only exceptions that are
    instances of ``retry_on`` are retried (process tasks retry on non-zero exit codes when
    ``retry_on`` includes :class:`~pydatatask.errors.JobError`, the default). A
    :class:`~pydatatask.errors.CorruptValueError` (a value the job read does not decode) is
    never retried: the stored data has to be fixed first.
    """

    max_attempts: int = 1
    backoff: float | str = 1.0
    factor: float = 2.0
    max_backoff: float | str = 300.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter is a fraction between 0 and 1")
        if self.factor < 1:
            raise ConfigurationError("RetryPolicy.factor must be at least 1")
        object.__setattr__(self, "backoff", parse_duration(self.backoff))
        object.__setattr__(self, "max_backoff", parse_duration(self.max_backoff))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether to try again after ``exc`` ended attempt number ``attempt`` (1-based)."""
        if isinstance(exc, CorruptValueError):
            return False
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed."""
        assert isinstance(self.backoff, float) and isinstance(self.max_backoff, float)
        base = min(self.backoff * self.factor ** (attempt - 1), self.max_backoff)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))
