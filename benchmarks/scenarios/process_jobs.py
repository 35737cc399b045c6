"""1,000 local subprocess jobs running ``true`` (through ``/bin/sh -c``).

* ``ours``: ``ProcessTask("true")`` on one ``LocalHost`` with room for ``C`` jobs at
  once (``cpus=C``, ``cpu=1``), ``concurrency=C``, inputs in memory, in-memory done
  records.
* ``bare``: ``C`` worker coroutines each running ``asyncio.create_subprocess_exec(
  "/bin/sh", "-c", "true")`` and waiting for it.

Target: >= 0.8x the bare loop's throughput. Per job the scheduler makes a job directory
(with ``in/src/`` and the input's copy: the input is not a local file) and starts the job
with ``posix_spawn`` in a process group of its own, all of it on the event loop; waits
through a pidfd; and hands the directory to a background thread that removes it (the
claims are memory of the process: no pid file is written, nothing is noted in the claim).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, profiled, ratio
from ._common import at_least, run_workers, timed_jobs

NAME = "process_jobs"
TITLE = "local subprocess jobs (`true`)"
CONCURRENCY = 8


def points(opts: Options) -> list[Point]:
    n = 50 if opts.quick else 1_000
    return [Point(f"{n} jobs", n, {"n": n, "concurrency": CONCURRENCY}, ["ours", "bare"])]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    r = ratio(res.median(p, "bare"), res.median(p, "ours"))
    return [at_least(">= 0.8x the bare subprocess loop", r, 0.8)]


def prepare(opts: Options) -> dict[str, Any] | str:
    try:
        from pydatatask.executor.local import LocalHost  # noqa: F401
        from pydatatask.task.process import ProcessTask  # noqa: F401
    except ImportError as exc:
        return f"not available yet: ProcessTask/LocalHost cannot be imported ({exc})"
    return {}


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n, conc = params["n"], params["concurrency"]
    keys = [f"k{i:07d}" for i in range(n)]
    if series == "ours":
        root = Path(tempfile.mkdtemp(prefix="pdt-bench-proc-", dir=os.environ.get("PDT_BENCH_TMP")))
        try:
            t0 = time.perf_counter()
            from pydatatask.executor.local import LocalHost
            from pydatatask.pipeline import Pipeline
            from pydatatask.repository import MemoryBlobRepository
            from pydatatask.task.process import ProcessTask

            import_s = time.perf_counter() - t0
            task = ProcessTask(
                "noop",
                "true",
                executor=LocalHost(cpus=conc, workdir=root / "jobs"),
                cpu=1,
                memory="1Mi",
                inputs={"src": MemoryBlobRepository(dict.fromkeys(keys, b"x"))},
                concurrency=conc,
            )
            pipeline = Pipeline([task])
            t1 = time.perf_counter()
            summary, prof = profiled(params, lambda: asyncio.run(pipeline.run()))
            seconds = time.perf_counter() - t1
            assert summary.succeeded == n, summary
            return {
                "seconds": seconds,
                "jobs_per_s": n / seconds,
                "import_seconds": import_s,
                "profile": prof,
            }
        finally:
            shutil.rmtree(root, ignore_errors=True)

    async def main() -> int:
        it = iter(keys)
        count = 0

        async def worker() -> None:
            nonlocal count
            for _key in it:
                proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "true")
                assert await proc.wait() == 0
                count += 1

        await run_workers(conc, worker)
        return count

    return timed_jobs(main, n)


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
