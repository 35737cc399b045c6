"""Retries of backend calls: one policy (:class:`Backoff`) and one loop (:meth:`Backoff.run`).

Every backend that talks to a server (S3, MongoDB, a Docker registry, the Kubernetes API)
takes ``retry=Backoff(...)`` and runs each request through :meth:`Backoff.run`, so the
settings have one name and one meaning everywhere:

``attempts``
    tries in all, the first included (``1``: no retry).
``initial``
    the wait before the first retry (seconds, or a duration such as ``"200ms"``).
``factor``
    each further wait is this many times the previous one.
``max_delay``
    no wait is longer than this (before jitter).
``jitter``
    each wait is spread by up to ``+-jitter`` of itself (a fraction from 0 to 1), so that
    many clients failing at once do not retry in step.

Which errors are worth retrying is the backend's business (a predicate it passes); so is
the message of the error raised when the retries are exhausted (a translation it passes).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .durations import parse_duration
from .errors import ConfigurationError

__all__ = ("Backoff",)

log = logging.getLogger("pydatatask.backoff")

T = TypeVar("T")


def _name(exc: BaseException) -> str:
    return type(exc).__name__


@dataclass(frozen=True)
class Backoff:
    """How often a failed backend request is tried again, and after how long.

    The wait before retry ``n`` (1-based) is ``initial * factor**(n-1)``, capped at
    ``max_delay``, then spread by ``+-jitter`` (a fraction). ``initial`` and ``max_delay``
    take seconds or durations (``"200ms"``, ``"5s"``) and read back as seconds.
    ``Backoff(attempts=1)`` turns retries off.
    """

    attempts: int = 5
    initial: float | str = 0.2
    factor: float = 2.0
    max_delay: float | str = 5.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(
                f"Backoff.attempts must be an integer of at least 1, not {self.attempts!r}"
            )
        if not 1 <= self.factor:
            raise ConfigurationError(f"Backoff.factor must be at least 1, not {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"Backoff.jitter is a fraction from 0 to 1, not {self.jitter!r}")
        object.__setattr__(self, "initial", parse_duration(self.initial))
        object.__setattr__(self, "max_delay", parse_duration(self.max_delay))

    @property
    def retries(self) -> int:
        """Retries after the first attempt (``attempts - 1``)."""
        return self.attempts - 1

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        assert isinstance(self.initial, float) and isinstance(self.max_delay, float)
        base = min(self.initial * self.factor ** (retry - 1), self.max_delay)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))

    async def run(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        transient: Callable[[Exception], bool],
        fail: Callable[[Exception, int], BaseException] | None = None,
        wait_at_least: Callable[[Exception], float | None] | None = None,
        describe: Callable[[Exception], str] = _name,
        logger: logging.Logger = log,
    ) -> T:
        """Await ``call()`` until it returns, retrying the errors ``transient`` accepts.

        A retry is logged once (at INFO, naming ``what``, ``describe(exc)`` and the wait).
        An error that is not transient, or the last attempt's, is raised as
        ``fail(exc, attempts_made)`` chained to it (``from exc``), or as itself without
        ``fail`` (or when ``fail`` returns it: an error already translated). ``wait_at_least(exc)`` may lengthen a wait (a server's ``Retry-After``).
        ``asyncio.CancelledError`` is never caught: cancelling stops the loop, waits
        included.
        """
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if attempt >= self.attempts or not transient(exc):
                    error = exc if fail is None else fail(exc, attempt)
                    if error is exc:
                        raise
                    raise error from exc
                wait = self.delay(attempt)
                if wait_at_least is not None:
                    floor = wait_at_least(exc)
                    if floor is not None:
                        wait = max(wait, floor)
                logger.info(
                    "%s failed (%s); retry %d of %d in %.2fs",
                    what,
                    describe(exc),
                    attempt,
                    self.retries,
                    wait,
                )
            attempt += 1
            await asyncio.sleep(wait)
