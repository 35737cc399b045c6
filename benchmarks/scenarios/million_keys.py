"""A million keys through two chained in-memory stages, concurrency 32: wall time and peak RSS.

``ours``: ``MemoryBlobRepository`` input of N keys (8 bytes each), stage ``a`` upper-cases
into a second ``MemoryBlobRepository``, stage ``b`` reverses that into a third; both
``FunctionTask`` (async, ``concurrency=32``) with the default in-memory ``done``/``live``
repositories. Every measurement is a fresh worker process, so its peak RSS (``VmHWM``,
what ``ru_maxrss`` of the child shows its parent) is the pipeline's: the input, both
outputs, 2N job records and whatever the scheduler keeps per key-job. ``inputs_mb`` is
the RSS after the input was built, before the run (the floor no pipeline goes below).

``--size N`` runs N keys instead of 1,000,000 (quick: 5,000).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import peak_rss_mb, rss_mb
from . import Options, Point, ScenarioResult, Verdict, profiled

NAME = "million_keys"
TITLE = "1M keys x 2 chained in-memory stages, concurrency 32: wall time and peak RSS"
CONCURRENCY = 32
DEFAULT_SIZE = 1_000_000
QUICK_SIZE = 5_000
#: the targets, at 1M keys
TARGET_SECONDS = 30.0
TARGET_RSS_MB = 1024.0


def points(opts: Options) -> list[Point]:
    n = opts.size or (QUICK_SIZE if opts.quick else DEFAULT_SIZE)
    return [Point(f"{n} keys", n, {"n": n, "concurrency": CONCURRENCY}, ["ours"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    point = res.points[-1]
    seconds = res.median(point.label, "ours")
    rss = res.median(point.label, "ours", "peak_rss_mb")
    # the targets are for 1M keys; at another size the figures are printed, not judged
    at_full = point.x == DEFAULT_SIZE
    where = "" if at_full else f" (targets at 1M keys; measured at {int(point.x):,})"
    return [
        Verdict(
            f"< {TARGET_SECONDS:g} s wall{where}",
            "n/a" if seconds is None else f"{seconds:.2f} s",
            None if seconds is None or not at_full else seconds < TARGET_SECONDS,
        ),
        Verdict(
            f"< {TARGET_RSS_MB:g} MiB peak RSS{where}",
            "n/a" if rss is None else f"{rss:.0f} MiB",
            None if rss is None or not at_full else rss < TARGET_RSS_MB,
        ),
    ]


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n, conc = params["n"], params["concurrency"]
    t0 = time.perf_counter()
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import MemoryBlobRepository
    from pydatatask.task import FunctionTask

    import_s = time.perf_counter() - t0
    source = MemoryBlobRepository({f"k{i:07d}": b"abcdefgh" for i in range(n)})
    middle = MemoryBlobRepository()
    out = MemoryBlobRepository()

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    async def backwards(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key))[::-1])

    a = FunctionTask("a", upper, inputs={"src": source}, outputs={"dst": middle}, concurrency=conc)
    b = FunctionTask("b", backwards, inputs={"src": middle}, outputs={"dst": out}, concurrency=conc)
    pipeline = Pipeline([a, b])
    inputs_mb = rss_mb()
    t1 = time.perf_counter()
    summary, prof = profiled(params, lambda: asyncio.run(pipeline.run()))
    seconds = time.perf_counter() - t1
    assert summary.succeeded == 2 * n, summary
    assert out._data["k0000000"] == b"HGFEDCBA"
    return {
        "seconds": seconds,
        "jobs_per_s": 2 * n / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "inputs_mb": inputs_mb,
        "import_seconds": import_s,
        "ticks": pipeline.scheduler.ticks,
        "profile": prof,
    }


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
