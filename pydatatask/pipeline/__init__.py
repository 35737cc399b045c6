"""Pipelines and the scheduler."""

from __future__ import annotations

from .graph import Edge, TaskGraph
from .pipeline import Pipeline
from .scheduler import RunSummary, Scheduler, TaskFigures

__all__ = ("Pipeline", "Scheduler", "RunSummary", "TaskFigures", "TaskGraph", "Edge")
