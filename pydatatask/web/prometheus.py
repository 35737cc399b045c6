"""``/metrics``: the Prometheus text exposition format, version 0.0.4.

From a snapshot: ``pydatatask_jobs{task,state}`` and ``pydatatask_queue_size{task}``;
from the run going on in this process (``run --serve``): jobs ended, job durations,
retries, claim takeovers and backend errors per task, and the listing durations (of the
scheduler's ticks, or of the listings ``serve`` makes itself). Served for several
pipelines, every sample also has a ``pipeline`` label (:func:`render_parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..pipeline.metrics import Histogram, RunMetrics

__all__ = ("render_metrics", "render_parts", "MetricsPart", "CONTENT_TYPE")

#: the Content-Type of the exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _head(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _histogram(out: list[str], name: str, hist: Histogram, **labels: str) -> None:
    for le, count in hist.cumulative():
        out.append(f"{name}_bucket{_labels(**labels, le=le)} {count}")
    out.append(f"{name}_sum{_labels(**labels)} {hist.sum!r}")
    out.append(f"{name}_count{_labels(**labels)} {hist.count}")


@dataclass
class MetricsPart:
    """The figures of one pipeline for ``/metrics``: ``counts`` are ``{task: {state: keys}}``;
    ``run`` the counters of the run going on in this process (``None`` for ``serve``);
    ``listings`` the listing durations; ``queues`` the scheduler's ready queues (by default
    the ``ready`` count of each task); ``labels`` added to every sample (``pipeline``
    when several pipelines are served)."""

    counts: dict[str, dict[str, int]]
    run: RunMetrics | None
    listings: Histogram
    queues: dict[str, int] | None = None
    labels: dict[str, str] = field(default_factory=dict)


def render_metrics(
    counts: dict[str, dict[str, int]],
    run: RunMetrics | None,
    listings: Histogram,
    queues: dict[str, int] | None = None,
) -> str:
    """The text of ``/metrics`` for one pipeline (see :class:`MetricsPart` for the arguments)."""
    return render_parts([MetricsPart(counts, run, listings, queues)])


def render_parts(parts: Sequence[MetricsPart]) -> str:
    """The text of ``/metrics`` for several pipelines: each metric family once (its ``HELP``
    and ``TYPE`` lines, then the samples of every part, each with the part's labels)."""
    out: list[str] = []
    _head(out, "pydatatask_jobs", "gauge", "Keys of each task by job state.")
    for p in parts:
        for task, by_state in p.counts.items():
            for name, n in by_state.items():
                out.append(f"pydatatask_jobs{_labels(**p.labels, task=task, state=name)} {n}")
    _head(out, "pydatatask_queue_size", "gauge", "Keys ready and waiting for a job slot, per task.")
    for p in parts:
        for task, by_state in p.counts.items():
            n = p.queues[task] if p.queues is not None and task in p.queues else by_state.get("ready", 0)
            out.append(f"pydatatask_queue_size{_labels(**p.labels, task=task)} {n}")
    _head(out, "pydatatask_listing_duration_seconds", "histogram", "Time to list every repository once.")
    for p in parts:
        _histogram(out, "pydatatask_listing_duration_seconds", p.listings, **p.labels)
    runs = [(p.labels, sorted(p.run.tasks.items())) for p in parts if p.run is not None]
    if not runs:
        return "\n".join(out) + "\n"
    _head(out, "pydatatask_jobs_finished_total", "counter", "Jobs ended in this run, by outcome.")
    for labels, tasks in runs:
        for task, c in tasks:
            for outcome, n in (("succeeded", c.succeeded), ("failed", c.failed)):
                out.append(
                    f"pydatatask_jobs_finished_total{_labels(**labels, task=task, outcome=outcome)} {n}"
                )
    _head(out, "pydatatask_job_duration_seconds", "histogram", "Duration of the jobs ended in this run.")
    for labels, tasks in runs:
        for task, c in tasks:
            _histogram(out, "pydatatask_job_duration_seconds", c.durations, **labels, task=task)
    for metric, attr, text in (
        ("pydatatask_retries_total", "retries", "Attempts that failed and were retried after a backoff."),
        ("pydatatask_claim_takeovers_total", "takeovers", "Stale claims of vanished schedulers taken over."),
        ("pydatatask_backend_errors_total", "errors", "Jobs that could not run and failed backend calls."),
    ):
        _head(out, metric, "counter", text)
        for labels, tasks in runs:
            for task, c in tasks:
                out.append(f"{metric}{_labels(**labels, task=task)} {getattr(c, attr)}")
    return "\n".join(out) + "\n"
