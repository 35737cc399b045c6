"""What a run has done so far, counted as it goes: the figures behind ``/metrics`` and the
live page, and the per-job log events of ``-v``.

The scheduler calls a :class:`RunMetrics` at a few points (a job changes state or ends, a
listing ends, a claim is taken over, a job cannot run). Each call adds to a few integers
and histogram buckets: no lock (the scheduler is one event loop), nothing allocated per job
beyond the counters of a task seen for the first time, so a run of 10,000 jobs pays
microseconds for it.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..task.records import JobState

if TYPE_CHECKING:
    from .scheduler import TaskFigures

__all__ = ("RunMetrics", "TaskCounters", "Histogram", "DURATION_BUCKETS", "LISTING_BUCKETS")

#: per-job log events (``-v``); the scheduler's own messages stay in ``pydatatask.scheduler``
log = logging.getLogger("pydatatask.jobs")

#: upper bounds (seconds) of the job duration histogram buckets
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
#: upper bounds (seconds) of the listing duration histogram buckets
LISTING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class Histogram:
    """Counts of observations per bucket (``le`` upper bounds, plus ``+Inf``), their sum and
    count: the Prometheus histogram, without the cumulative sums until it is rendered."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of observations <= le), ..., ("+Inf", count)]``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class TaskCounters:
    """What the jobs of one task did in this run (see :class:`RunMetrics`)."""

    __slots__ = ("succeeded", "failed", "retries", "takeovers", "errors", "durations", "base", "finished")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self.takeovers = 0
        self.errors = 0
        self.durations = Histogram(DURATION_BUCKETS)
        #: (succeeded, failed) known at the first listing of the run
        self.base = (0, 0)
        #: end times (monotonic) of the last jobs, for the throughput
        self.finished: deque[float] = deque(maxlen=1024)


class RunMetrics:
    """Counters of one scheduler run, per task.

    Each task keeps the end times of its last 1,024 jobs, for the throughput over the
    last minute.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, TaskCounters] = {}
        self.listings = Histogram(LISTING_BUCKETS)
        self.started = time.monotonic()
        self.based = False
        #: bumped at every change a viewer could see (a job starting or ending, a listing)
        self.version = 0

    def task(self, name: str) -> TaskCounters:
        """The counters of task ``name`` (made on first use)."""
        counters = self.tasks.get(name)
        if counters is None:
            counters = self.tasks[name] = TaskCounters()
        return counters

    # ---------------------------------------------------------------- scheduler hooks
    def on_listing(self, seconds: float, figures: dict[str, TaskFigures]) -> None:
        """A tick listed every repository in ``seconds``; the first one sets the base counts."""
        self.listings.observe(seconds)
        self.version += 1
        if not self.based:
            self.based = True
            for name, fig in figures.items():
                self.task(name).base = (len(fig.succeeded), len(fig.failed))

    def on_state(self, task: str, key: str, state: JobState, attempt: int) -> None:
        """A job of ``task`` on ``key`` entered ``state`` (attempt ``attempt``)."""
        self.version += 1
        if state is JobState.RETRYING:
            self.task(task).retries += 1
        elif state is not JobState.RUNNING:
            return  # the end of a job is told by on_end, with its record
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task %s: %r %s (attempt %d)",
                task,
                key,
                state.value,
                attempt,
                extra={"task": task, "key": key, "state": state.value, "attempt": attempt},
            )

    def on_end(self, task: str, key: str, record: dict[str, Any]) -> None:
        """A job ended with ``record`` (its job record)."""
        counters = self.tasks.get(task) or self.task(task)
        ok = bool(record.get("success"))
        if ok:
            counters.succeeded += 1
        else:
            counters.failed += 1
        duration = record.get("duration")
        if isinstance(duration, (int, float)):
            # Histogram.observe, inline (once per job)
            durations = counters.durations
            durations.counts[bisect.bisect_left(durations.bounds, duration)] += 1
            durations.sum += duration
            durations.count += 1
        counters.finished.append(time.monotonic())
        self.version += 1
        if log.isEnabledFor(logging.INFO):
            error = record.get("error")
            error_type = error.get("type") if isinstance(error, dict) else None
            state = "succeeded" if ok else "failed"
            log.info(
                "task %s: %r %s after %d attempt(s) in %.3fs%s",
                task,
                key,
                state,
                record.get("attempts") or 0,
                duration if isinstance(duration, (int, float)) else 0.0,
                f" ({error_type})" if error_type else "",
                extra={
                    "task": task,
                    "key": key,
                    "state": state,
                    "attempt": record.get("attempts"),
                    "duration": duration,
                    "error_type": error_type,
                    "exit_code": record.get("exit_code"),
                },
            )

    def on_takeover(self, task: str) -> None:
        """A stale claim of ``task`` (its scheduler gone) was taken over."""
        self.task(task).takeovers += 1

    def on_error(self, task: str) -> None:
        """A job of ``task`` could not run, or a backend call for it failed."""
        self.task(task).errors += 1
        self.version += 1

    # ---------------------------------------------------------------- readings
    def done(self, task: str) -> tuple[int, int]:
        """(succeeded, failed) of ``task``: those known at the start plus this run's."""
        counters = self.task(task)
        ok0, failed0 = counters.base
        return ok0 + counters.succeeded, failed0 + counters.failed

    def throughput(self, task: str, window: float = 60.0) -> float:
        """Jobs of ``task`` ended per second over the last ``window`` seconds (or since the
        start of the run, or since the oldest end time kept)."""
        finished = self.task(task).finished
        now = time.monotonic()
        since = max(now - window, self.started)
        recent = len(finished) - bisect.bisect_left(finished, since)
        if recent and recent == finished.maxlen:
            since = finished[0]
        span = now - since
        return recent / span if span > 0 else 0.0
