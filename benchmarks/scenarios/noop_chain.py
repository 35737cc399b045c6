"""No-op tick over 100k keys, two-task chain (a -> b), everything done, in memory.

``ours`` times one ``await pipeline.figures(full=False)`` (a scheduler tick) in a fresh process (listings, the done
records read once, ready sets); ``0.4.7`` times one ``pipeline.update()`` on the same
data (its ready computation and launch phase, which finds nothing); ``bare`` times the
hand-written set arithmetic. Target: >= 5x faster than 0.4.7.
"""

from __future__ import annotations

from typing import Any

from . import Options, Point, ScenarioResult, Verdict, ratio
from .noop_scaling import run_tick

NAME = "noop_chain"
TITLE = "no-op tick, two-task chain, all done (memory)"


def points(opts: Options) -> list[Point]:
    n = 10_000 if opts.quick else 100_000
    series = ["ours", "bare"] + (["0.4.7"] if opts.with_047 else [])
    return [Point(f"{n} keys", n, {"n": n, "chain": 2}, series)]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "0.4.7"), res.median(p, "ours"))
    return [
        Verdict(">= 5x faster than 0.4.7", "n/a" if r is None else f"{r:.2f}x", None if r is None else r >= 5)
    ]


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    return run_tick(series, params)


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
