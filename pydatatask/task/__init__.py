"""Tasks: what runs for each key, and the links that decide when."""

from __future__ import annotations

from .base import JobContext, JobOutcome, Task
from .claims import Claim, Claims
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
    "FunctionTask",
    "ProcessTask",
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
    "KubeTask",
)


def __getattr__(name: str) -> object:
    # Kubernetes tasks are imported on first use (their client library is an extra)
    if name in ("PodTask", "KubeTask"):
        from . import kube, pod

        value = getattr(pod if name == "PodTask" else kube, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
