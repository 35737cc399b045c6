"""Tasks: what runs for each key, and the links that decide when."""

from __future__ import annotations

from .base import JobContext, JobOutcome, Task
from .hooks import EVENTS, Event, Hooks
from .inprocess import ExecutorTask, InProcessTask
from .links import Link, LinkKind
from .records import JobState, make_record
from .retry import RetryPolicy

__all__ = (
    "Task",
    "JobContext",
    "JobOutcome",
    "InProcessTask",
    "ExecutorTask",
    "Link",
    "LinkKind",
    "JobState",
    "RetryPolicy",
    "Hooks",
    "Event",
    "EVENTS",
    "make_record",
)
