"""Quotas of an executor: how many jobs, how much CPU and memory at once, and how many
launches per second. One :class:`Quota` object per executor, shared by every task that uses
that executor; :class:`LaunchRate` is the one launch-rate limiter of the package.
"""

from __future__ import annotations

import time

from ..errors import ConfigurationError
from .base import Resources

__all__ = ("Quota", "LaunchRate")


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


class Quota:
    """What an executor admits at once: ``max_jobs`` jobs whose :class:`~pydatatask.executor.base.Resources` add up to
    at most ``max_cpu`` CPUs and ``max_memory`` bytes, started at most ``launch_rate`` per
    second. None means no limit. ``what`` names the executor in error messages."""

    def __init__(
        self,
        *,
        what: str,
        max_jobs: int | None = None,
        max_cpu: float | None = None,
        max_memory: int | None = None,
        launch_rate: float | None = None,
    ) -> None:
        if max_jobs is not None and max_jobs < 1:
            raise ConfigurationError(f"{what}: the maximum number of jobs must be at least 1")
        self.what = what
        self.max_jobs = max_jobs
        self.max_cpu = max_cpu
        self.max_memory = max_memory
        self.rate = None if launch_rate is None else LaunchRate(launch_rate, what=f"{what}: launch_rate")
        self.jobs = 0
        self.cpu = 0.0
        self.memory = 0

    def fits_at_all(self, resources: Resources) -> bool:
        """Whether a job of this size could ever be admitted."""
        return (self.max_cpu is None or resources.cpu <= self.max_cpu + 1e-9) and (
            self.max_memory is None or resources.memory <= self.max_memory
        )

    def take(self, resources: Resources) -> bool:
        """Admit one job now, or return False (full, or the launch rate says wait)."""
        if self.max_jobs is not None and self.jobs >= self.max_jobs:
            return False
        if self.max_cpu is not None and self.cpu + resources.cpu > self.max_cpu + 1e-9:
            return False
        if self.max_memory is not None and self.memory + resources.memory > self.max_memory:
            return False
        if self.rate is not None:
            if not self.rate.ready():
                return False
            self.rate.take()
        self.jobs += 1
        self.cpu += resources.cpu
        self.memory += resources.memory
        return True

    def give(self, resources: Resources) -> None:
        """Give back what :meth:`take` admitted."""
        self.jobs = max(0, self.jobs - 1)
        self.cpu = max(0.0, self.cpu - resources.cpu)
        self.memory = max(0, self.memory - resources.memory)
