"""No-op tick at 10k/100k/1M keys in memory: one readiness computation, nothing to do.

A task over N input keys whose outputs and (compact, ``{"success": True}``) done records
are all present. ``ours`` times one ``await pipeline.figures(full=False)`` (a scheduler tick) (one listing of every
repository, the done records read once, the ready sets computed) in a fresh process,
after the setup; ``bare`` times the same set arithmetic written by hand over the same
dicts. Target: growth linear, t(1M)/t(100k) <= 12. The ``chain`` parameter adds a second
task reading the first one's output (see ``noop_chain``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import peak_rss_mb, reset_peak_rss, rss_mb
from . import Options, Point, ScenarioResult, Verdict, profiled, ratio

NAME = "noop_scaling"
TITLE = "no-op tick (memory, one task, all done): one readiness computation"


def points(opts: Options) -> list[Point]:
    sizes = [10_000] if opts.quick else [10_000, 100_000, 1_000_000]
    return [Point(f"{n} keys", n, {"n": n, "chain": 1}, ["ours", "bare"]) for n in sizes]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    labels = [p.label for p in res.points]
    if "100000 keys" not in labels or "1000000 keys" not in labels:
        return [Verdict("t(1M)/t(100k) <= 12", "n/a (quick run)", None)]
    r = ratio(res.median("1000000 keys", "ours"), res.median("100000 keys", "ours"))
    return [
        Verdict("t(1M)/t(100k) <= 12", "n/a" if r is None else f"{r:.1f}", None if r is None else r <= 12)
    ]


def _keys(n: int) -> list[str]:
    return [f"k{i:07d}" for i in range(n)]


RECORD = {"success": True}


def run_tick(series: str, params: dict[str, Any]) -> dict[str, Any]:
    """Set up ``chain`` tasks over ``n`` keys, all done, then time one readiness computation."""
    n, chain = params["n"], params["chain"]
    keys = _keys(n)
    if series == "ours":
        return _ours(keys, chain, params)
    return _bare(keys, chain)


def _ours(keys: list[str], chain: int, params: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import MemoryBlobRepository, MemoryMetadataRepository
    from pydatatask.task import FunctionTask

    import_s = time.perf_counter() - t0

    async def noop(key: str) -> None:
        raise AssertionError("nothing should run")

    blobs = dict.fromkeys(keys, b"x")
    repos = [MemoryBlobRepository(blobs) for _ in range(chain + 1)]
    tasks = []
    for i in range(chain):
        done = MemoryMetadataRepository()
        # setup only (not timed): fill the dict directly instead of n deep copies
        done._data = dict.fromkeys(keys, RECORD)
        tasks.append(
            FunctionTask(f"t{i}", noop, inputs={"src": repos[i]}, outputs={"dst": repos[i + 1]}, done=done)
        )
    pipeline = Pipeline(tasks)
    base_rss = rss_mb()

    async def main() -> tuple[float, float, float]:
        reset_peak_rss()
        t1 = time.perf_counter()
        figures = await pipeline.figures(full=False)  # one scheduler tick
        first = time.perf_counter() - t1
        peak = peak_rss_mb()  # without a reset: the peak since the process started (an upper bound)
        t2 = time.perf_counter()
        await pipeline.figures(full=False)
        second = time.perf_counter() - t2
        assert all(not v.ready for v in figures.values()), "something was ready"
        assert all(len(v.recorded) == len(keys) for v in figures.values())
        return first, second, peak

    first, second, peak = asyncio.run(main())
    prof = None
    if params.get("profile"):
        _, prof = profiled(params, lambda: asyncio.run(pipeline.figures(full=False)))
    return {
        "seconds": first,
        "second_call_seconds": second,
        "import_seconds": import_s,
        "rss_before_mb": base_rss,
        "peak_rss_during_mb": peak,
        "ready_extra_mb": peak - base_rss,
        "profile": prof,
    }


def _bare(keys: list[str], chain: int) -> dict[str, Any]:
    blobs = dict.fromkeys(keys, b"x")
    repos = [dict(blobs) for _ in range(chain + 1)]
    dones = [dict.fromkeys(keys, dict(RECORD)) for _ in range(chain)]
    base_rss = rss_mb()
    reset_peak_rss()

    async def main() -> int:
        ready_total = 0
        succeeded_before: set[str] | None = None
        for i in range(chain):
            listed_in, listed_out, listed_done = set(repos[i]), set(repos[i + 1]), set(dones[i])
            succeeded = {k for k in listed_done if dones[i][k].get("success")}
            ready = listed_in - listed_out - listed_done
            if succeeded_before is not None:
                ready &= succeeded_before
            ready_total += len(ready)
            succeeded_before = succeeded
        return ready_total

    t1 = time.perf_counter()
    ready = asyncio.run(main())
    seconds = time.perf_counter() - t1
    peak = peak_rss_mb()  # without a reset: the peak since the process started (an upper bound)
    assert ready == 0
    return {
        "seconds": seconds,
        "import_seconds": 0.0,
        "rss_before_mb": base_rss,
        "peak_rss_during_mb": peak,
        "ready_extra_mb": peak - base_rss,
    }


run = run_tick

if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
