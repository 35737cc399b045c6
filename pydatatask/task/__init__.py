"""Tasks: what runs for each key, and the links that decide when."""

from __future__ import annotations

from .base import BatchOutcome, JobContext, JobOutcome, Task
from .claims import Claim, Claims
from .fan import FanOut
from .function import FunctionTask
from .hooks import EVENTS, Event, Hooks
from .links import Link, LinkKind
from .process import ProcessTask
from .records import JobState, make_record
from .retry import RetryPolicy

__all__ = (
    "Task",
    "JobContext",
    "JobOutcome",
    "BatchOutcome",
    "FunctionTask",
    "ProcessTask",
    "FanOut",
    "Claim",
    "Claims",
    "Link",
    "LinkKind",
    "JobState",
    "RetryPolicy",
    "Hooks",
    "Event",
    "EVENTS",
    "make_record",
    "PodTask",
)


def __getattr__(name: str) -> object:
    # the pod task is imported on first use (its client library is an extra)
    if name == "PodTask":
        from .pod import PodTask

        globals()[name] = PodTask
        return PodTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
