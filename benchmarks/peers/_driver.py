"""What every driver shares: the line that starts the clock, the result line, the peak RSS.

Standard library only. A peer's driver runs with the python of the peer's virtualenv in
isolated mode (``-I``), which puts no script directory on ``sys.path``: each driver adds
its own folder (this one, and nothing else of our checkout) before it imports this module.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PREFIX = "BENCH-RESULT "
START = "BENCH-START"


def started() -> None:
    """Tell the caller the clock starts now (its time budget counts from here)."""
    sys.stdout.write(START + "\n")
    sys.stdout.flush()


def peak_mb() -> float:
    """This process's peak resident set size (``VmHWM``), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return 0.0


def report(figures: dict[str, Any]) -> None:
    """Print the result line: ``figures`` and this process's peak RSS (``driver_peak_mb``)."""
    out = {**figures, "driver_peak_mb": peak_mb()}
    sys.stdout.write(PREFIX + json.dumps(out) + "\n")
