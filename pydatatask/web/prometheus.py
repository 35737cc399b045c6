"""``/metrics``: the Prometheus text exposition format, version 0.0.4.

From a snapshot: ``pydatatask_jobs{task,state}`` and ``pydatatask_queue_size{task}``;
from the run going on in this process (``run --serve``): jobs ended, job durations,
retries, claim takeovers and backend errors per task, and the listing durations (of the
scheduler's ticks, or of the listings ``serve`` makes itself).
"""

from __future__ import annotations

from ..pipeline.metrics import Histogram, RunMetrics

__all__ = ("render_metrics", "CONTENT_TYPE")

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


def render_metrics(
    counts: dict[str, dict[str, int]],
    run: RunMetrics | None,
    listings: Histogram,
    queues: dict[str, int] | None = None,
) -> str:
    """The text of ``/metrics``: ``counts`` are ``{task: {state: keys}}``; ``queues`` the
    scheduler's ready queues (by default the ``ready`` count of each task)."""
    out: list[str] = []
    _head(out, "pydatatask_jobs", "gauge", "Keys of each task by job state.")
    for task, by_state in counts.items():
        for name, n in by_state.items():
            out.append(f"pydatatask_jobs{_labels(task=task, state=name)} {n}")
    _head(out, "pydatatask_queue_size", "gauge", "Keys ready and waiting for a job slot, per task.")
    for task, by_state in counts.items():
        n = queues[task] if queues is not None and task in queues else by_state.get("ready", 0)
        out.append(f"pydatatask_queue_size{_labels(task=task)} {n}")
    _head(out, "pydatatask_listing_duration_seconds", "histogram", "Time to list every repository once.")
    _histogram(out, "pydatatask_listing_duration_seconds", listings)
    if run is not None:
        tasks = sorted(run.tasks.items())
        _head(out, "pydatatask_jobs_finished_total", "counter", "Jobs ended in this run, by outcome.")
        for task, c in tasks:
            out.append(
                f"pydatatask_jobs_finished_total{_labels(task=task, outcome='succeeded')} {c.succeeded}"
            )
            out.append(f"pydatatask_jobs_finished_total{_labels(task=task, outcome='failed')} {c.failed}")
        _head(out, "pydatatask_job_duration_seconds", "histogram", "Duration of the jobs ended in this run.")
        for task, c in tasks:
            _histogram(out, "pydatatask_job_duration_seconds", c.durations, task=task)
        for metric, attr, text in (
            ("pydatatask_retries_total", "retries", "Attempts that failed and were retried after a backoff."),
            (
                "pydatatask_claim_takeovers_total",
                "takeovers",
                "Stale claims of vanished schedulers taken over.",
            ),
            (
                "pydatatask_backend_errors_total",
                "errors",
                "Jobs that could not run and failed backend calls.",
            ),
        ):
            _head(out, metric, "counter", text)
            for task, c in tasks:
                out.append(f"{metric}{_labels(task=task)} {getattr(c, attr)}")
    return "\n".join(out) + "\n"
