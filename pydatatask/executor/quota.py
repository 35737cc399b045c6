"""The one launch-rate limiter of the package: :class:`LaunchRate`, used by every executor
that has a ``launch_rate`` (its capacity of jobs, CPU and memory is a
:class:`~pydatatask.executor.base.Capacity`).
"""

from __future__ import annotations

import time

from ..errors import ConfigurationError

__all__ = ("LaunchRate",)


class LaunchRate:
    """At most ``per_second`` launches per second, spaced evenly (no bursts)."""

    def __init__(self, per_second: float, *, what: str = "launch_rate") -> None:
        if not per_second > 0:
            raise ConfigurationError(f"{what} must be a positive number of launches per second")
        self.per_second = float(per_second)
        self._next = 0.0

    def ready(self, now: float | None = None) -> bool:
        """Whether a launch is allowed now."""
        return (time.monotonic() if now is None else now) >= self._next

    def take(self, now: float | None = None) -> None:
        """Count one launch (made now)."""
        now = time.monotonic() if now is None else now
        self._next = max(now, self._next) + 1.0 / self.per_second
