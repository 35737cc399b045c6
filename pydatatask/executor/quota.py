"""Launch rates: the one limiter every executor with a ``launch_rate`` uses."""

from __future__ import annotations

import time

from ..errors import ConfigurationError

__all__ = ("LaunchRate",)


class LaunchRate:
    """At most ``rate`` launches per second, spaced evenly (no bursts).

    :meth:`ready` says whether a launch may happen now, :meth:`take` books one. ``rate``
    None means no limit. ``what`` names the owner in the error for a bad rate.
    """

    def __init__(self, rate: float | None, what: str = "executor") -> None:
        if rate is not None and not rate > 0:
            raise ConfigurationError(
                f"{what}: launch_rate must be a positive number of jobs/second, not {rate!r}"
            )
        self.rate = rate
        self._next = 0.0

    def ready(self, now: float | None = None) -> bool:
        """Whether a launch is allowed at ``now`` (``time.monotonic()`` by default)."""
        return self.rate is None or (time.monotonic() if now is None else now) >= self._next

    def take(self, now: float | None = None) -> None:
        """Book one launch at ``now``; the next one is allowed ``1/rate`` seconds later."""
        if self.rate is not None:
            now = time.monotonic() if now is None else now
            self._next = max(now, self._next) + 1.0 / self.rate

    def wait_time(self, now: float | None = None) -> float:
        """Seconds until the next launch is allowed (0 if now)."""
        if self.rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._next - now)
