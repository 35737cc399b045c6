"""Benchmarks of pydatatask against a bare asyncio loop and pydatatask 0.4.7.

Run ``python -m benchmarks --help``. This package holds the runner (``__main__``), one
module per scenario (``scenarios/``) and the scripts run inside the 0.4.7 virtualenv
(``baseline_047/``). Nothing here imports pydatatask at import time: every measurement
runs in a fresh subprocess, which imports what it measures itself.

The helpers below are what a measuring subprocess (a *worker*) uses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ("RESULT_PREFIX", "REPO_ROOT", "rss_mb", "peak_rss_mb", "reset_peak_rss", "emit", "worker_main")

#: a worker prints its result as one line: RESULT_PREFIX + JSON
RESULT_PREFIX = "BENCH-RESULT "
REPO_ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since start or the last reset)."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS counter (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def emit(metrics: dict[str, Any]) -> None:
    """Print the worker's result line."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(metrics) + "\n")
    sys.stdout.flush()


def worker_main(run: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point of a scenario module run as ``python -m``: ``SERIES PARAMS_JSON``.

    With ``PDT_BENCH_PROFILE=1`` the worker passes ``profile=True`` in the params; the
    scenario wraps its timed part in cProfile and returns the top entries.
    """
    series, params = sys.argv[1], json.loads(sys.argv[2])
    if os.environ.get("PDT_BENCH_PROFILE") == "1":
        params["profile"] = True
    t0 = time.perf_counter()
    metrics = run(series, params)
    metrics.setdefault("worker_seconds", time.perf_counter() - t0)
    emit(metrics)
