"""Peak RSS of the ready computation at 1M keys, beside the RSS of the bare key set.

``ours``: a task over 1M in-memory keys, all done; the peak RSS counter is reset
(``/proc/self/clear_refs``) right before one ``pipeline.figures()``; reported: the RSS
before, the peak during, and their difference (what the ready computation itself
costs). ``keyset``: the RSS growth of building a Python ``set`` of the same 1M keys.
"""

from __future__ import annotations

from typing import Any

from .. import rss_mb
from . import Options, Point, ScenarioResult, Verdict
from .noop_scaling import run_tick

NAME = "ready_rss"
TITLE = "peak RSS of one ready computation at 1M keys vs the bare key set"


def points(opts: Options) -> list[Point]:
    n = 10_000 if opts.quick else 1_000_000
    return [Point(f"{n} keys", n, {"n": n, "chain": 1}, ["ours", "keyset"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    extra = res.median(p, "ours", "ready_extra_mb")
    keyset = res.median(p, "keyset", "keyset_mb")
    if extra is None or keyset is None:
        return [Verdict("printed, with RSS of the bare key set", "n/a", None)]
    return [
        Verdict(
            "printed, with RSS of the bare key set",
            f"ready computation +{extra:.0f} MiB vs key set {keyset:.0f} MiB ({extra / keyset:.1f} key sets)",
            None,
        )
    ]


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    if series == "ours":
        return run_tick("ours", params)
    before = rss_mb()
    keys = {f"k{i:07d}" for i in range(params["n"])}
    after = rss_mb()
    assert len(keys) == params["n"]
    return {"keyset_mb": after - before, "seconds": 0.0}


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
