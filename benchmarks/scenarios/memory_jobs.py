"""Memory jobs at 1k/3k/10k keys: read 8 bytes, write them upper-cased, in-memory records.

* ``ours``: ``MemoryBlobRepository`` in/out, ``FunctionTask`` (``concurrency=C``), the
  default in-memory ``done``/``live`` repositories.
* ``bare``: ``C`` worker coroutines over the ready keys (input dict minus output and
  done dicts) doing the same dict reads/writes and storing the same job record per job.
* ``0.4.7``: the same pipeline written for pydatatask 0.4.7 (``baseline_047``).

``cpu_seconds`` (ours and bare): the CPU time of the timed part, which a loaded machine
disturbs less than the wall time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, bare_record, profiled, ratio
from ._common import at_least, run_workers, timed_jobs

NAME = "memory_jobs"
TITLE = "memory jobs: MemoryBlobRepository in/out, in-memory done records"
CONCURRENCY = 15  # 0.4.7 launches at most 15 jobs at once (fixed); every series uses 15


def points(opts: Options) -> list[Point]:
    sizes = [300] if opts.quick else [1_000, 3_000, 10_000]
    series = ["ours", "bare"] + (["0.4.7"] if opts.with_047 else [])
    return [Point(f"{n} jobs", n, {"n": n, "concurrency": CONCURRENCY}, series) for n in sizes]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[-1].label
    r = ratio(res.median(p, "0.4.7"), res.median(p, "ours"))
    return [at_least(f">= 2x pydatatask 0.4.7 throughput ({p})", r, 2)]


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n, conc = params["n"], params["concurrency"]
    data = {f"k{i:07d}": b"abcdefgh" for i in range(n)}
    if series == "ours":
        t0 = time.perf_counter()
        from pydatatask.pipeline import Pipeline
        from pydatatask.repository import MemoryBlobRepository
        from pydatatask.task import FunctionTask

        import_s = time.perf_counter() - t0

        async def upper(key: str, src: Any, dst: Any) -> None:
            await dst.write_bytes(key, (await src.read_bytes(key)).upper())

        out = MemoryBlobRepository()
        task = FunctionTask(
            "upper", upper, inputs={"src": MemoryBlobRepository(data)}, outputs={"dst": out}, concurrency=conc
        )
        pipeline = Pipeline([task])
        t1, c1 = time.perf_counter(), time.process_time()
        summary, prof = profiled(params, lambda: asyncio.run(pipeline.run()))
        seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
        assert summary.succeeded == n, summary
        assert out._data["k0000000"] == b"ABCDEFGH"
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "jobs_per_s": n / seconds,
            "import_seconds": import_s,
            "ticks": pipeline.scheduler.ticks,
            "profile": prof,
        }
    c1 = time.process_time()
    metrics = _bare(data, n, conc)
    metrics["cpu_seconds"] = time.process_time() - c1
    return metrics


def _bare(data: dict[str, bytes], n: int, conc: int) -> dict[str, Any]:
    host = socket.gethostname()
    out: dict[str, bytes] = {}
    done: dict[str, dict[str, Any]] = {}

    async def main() -> int:
        ready = sorted(set(data) - set(out) - set(done))
        it = iter(ready)
        count = 0

        async def worker() -> None:
            nonlocal count
            for key in it:
                start = time.time()
                out[key] = data[key].upper()
                await asyncio.sleep(0)
                end = time.time()
                done[key] = bare_record(key, start, end, host)
                count += 1

        await run_workers(conc, worker)
        return count

    return timed_jobs(main, n)


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
