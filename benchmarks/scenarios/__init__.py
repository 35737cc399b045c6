"""One module per scenario of issue 8.

A scenario module defines ``NAME``, ``TITLE``, ``points(opts)`` (what to measure:
sizes and the series run at each), ``verdicts(res)`` (the targets, as ratios of
medians) and, run as ``python -m benchmarks.scenarios.NAME SERIES PARAMS``, the worker
that performs one measurement in a fresh process and prints its metrics. Optional:
``prepare(opts)`` (once before the repetitions; returns extra params or a reason the
scenario is not available) and ``command(series, params)`` (a custom worker command).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = (
    "SCENARIOS",
    "Options",
    "Point",
    "Verdict",
    "Stats",
    "ScenarioResult",
    "profiled",
    "ratio",
)

#: run order; names are module names in this package
SCENARIOS = (
    "import_cost",
    "file_jobs",
    "memory_jobs",
    "million_keys",
    "noop_chain",
    "noop_scaling",
    "ready_rss",
    "s3_stage",
    "s3_shared_state",
    "s3_listing",
    "process_jobs",
    "web_page",
    "tiny_objects",
    "peer_files",
    "kube_pods",
)

T = TypeVar("T")


@dataclass
class Options:
    """What the runner was asked for."""

    quick: bool = False
    reps: int = 5
    #: objects or keys per run instead of a scenario's own size (``--size``), where it takes one
    size: int | None = None
    with_047: bool = True
    python047: str | None = None  # the 0.4.7 venv's python, once created
    services: dict[str, Any] = field(default_factory=dict)
    with_peers: bool = True  # the Luigi, Snakemake and Prefect series of peer_files
    #: peer distribution -> the python of its virtualenv, or None and why not (peer_files)
    peer_pythons: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    peer_sizes: tuple[int, ...] = (1_000, 10_000)
    peer_budget: float = 300.0  # seconds per run of one peer before it "did not finish"
    peer_reps: int = 1  # repetitions of peer_files (--peer-reps)


@dataclass
class Point:
    """One size of a scenario: a label (x value), the worker params, the series to run."""

    label: str
    x: float
    params: dict[str, Any]
    series: list[str]


@dataclass
class Stats:
    """Median and spread of one metric."""

    values: list[float]

    @property
    def median(self) -> float:
        v = sorted(self.values)
        n = len(v)
        return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


@dataclass
class Verdict:
    """One target of the issue: what was measured against it and whether it is met."""

    target: str
    value: str
    met: bool | None  # None: could not be computed (a series missing)


@dataclass
class ScenarioResult:
    """Measurements of one scenario: point label -> series -> metric -> values."""

    name: str
    points: list[Point]
    data: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # series -> why
    failures: dict[str, list[str]] = field(default_factory=dict)  # "point series" -> errors

    def stats(self, point: str, series: str, metric: str = "seconds") -> Stats | None:
        values = self.data.get(point, {}).get(series, {}).get(metric)
        return Stats(values) if values else None

    def median(self, point: str, series: str, metric: str = "seconds") -> float | None:
        s = self.stats(point, series, metric)
        return None if s is None else s.median


def bare_record(key: str, start: float, end: float, host: str) -> dict[str, Any]:
    """The job record a bare-loop baseline writes: the same fields as ours."""

    def iso(ts: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"

    return {
        "task": "upper",
        "key": key,
        "state": "succeeded",
        "success": True,
        "attempts": 1,
        "start_time": iso(start),
        "end_time": iso(end),
        "duration": round(end - start, 6),
        "host": host,
        "runner": "in-process",
        "exit_code": None,
        "error": None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def profiled(params: dict[str, Any], fn: Callable[[], T]) -> tuple[T, list[dict[str, Any]] | None]:
    """Run ``fn``; with ``params["profile"]`` under cProfile, returning the top entries by tottime."""
    if not params.get("profile"):
        return fn(), None
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({func})",
                "ncalls": ncalls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return result, rows[:25]


def _short(filename: str) -> str:
    for marker in ("/pydatatask/", "/lib/python3"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + 1 :]
    return filename
