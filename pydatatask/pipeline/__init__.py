"""Pipelines and the scheduler."""

from __future__ import annotations

from .graph import Edge, TaskGraph
from .pipeline import Pipeline
from .scheduler import RunSummary, Scheduler, TaskView

__all__ = ("Pipeline", "Scheduler", "RunSummary", "TaskView", "TaskGraph", "Edge")
