"""Scenarios written for pydatatask 0.4.7, run with the python of its own virtualenv.

Usage: ``python -I bench047.py SCENARIO PARAMS_JSON`` (from a directory outside our
checkout, so ``import pydatatask`` finds 0.4.7). Prints ``BENCH-RESULT {json}`` like our
workers. Stand-alone on purpose: it must not import anything from our checkout.

0.4.7 runs a pipeline as ``while await pipeline.update(): await asyncio.sleep(1)``
(``pydatatask.main.run``); here the fixed one-second sleep is left out, which favours
0.4.7. Its launch phase runs at most 15 jobs at once (a constant in 0.4.7), so the other
series use the same concurrency. Its outputs do not inhibit a start by default; here
they do (``inhibits_start=True``), as ours do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PREFIX = "BENCH-RESULT "


def _import() -> tuple[Any, float]:
    t0 = time.perf_counter()
    import pydatatask

    return pydatatask, time.perf_counter() - t0


async def _run(pipeline: Any) -> int:
    updates = 0
    async with pipeline:
        while await pipeline.update():
            updates += 1
    return updates


def _upper_task(pdt: Any, src: Any, dst: Any, done: Any) -> Any:
    async def upper(job: str, src: Any, dst: Any) -> None:
        async with await src.open(job, "rb") as f:
            data = await f.read()
        async with await dst.open(job, "wb") as f:
            await f.write(data.upper())

    task = pdt.InProcessSyncTask("upper", done, func=upper)
    task.link("src", src, is_input=True)
    task.link("dst", dst, is_output=True, inhibits_start=True)
    return task


def file_jobs(params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    root = Path(tempfile.mkdtemp(prefix="pdt-bench-047-", dir=os.environ.get("PDT_BENCH_TMP")))
    try:
        (root / "in").mkdir()
        for i in range(n):
            (root / "in" / f"k{i:07d}.txt").write_bytes(b"abcdefgh")
        pdt, import_s = _import()
        task = _upper_task(
            pdt,
            pdt.FileRepository(root / "in", ".txt"),
            pdt.FileRepository(root / "out", ".txt"),
            pdt.YamlMetadataFileRepository(root / "state" / "done"),
        )
        pipeline = pdt.Pipeline([task], pdt.Session(), [])
        t1 = time.perf_counter()
        updates = asyncio.run(_run(pipeline))
        seconds = time.perf_counter() - t1
        assert len(os.listdir(root / "state" / "done")) == n
        assert (root / "out" / "k0000000.txt").read_bytes() == b"ABCDEFGH"
        return {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s, "ticks": updates}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def memory_jobs(params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    pdt, import_s = _import()
    out = pdt.InProcessBlobRepository()
    done = pdt.InProcessMetadataRepository()
    data = {f"k{i:07d}": b"abcdefgh" for i in range(n)}
    task = _upper_task(pdt, pdt.InProcessBlobRepository(data), out, done)
    pipeline = pdt.Pipeline([task], pdt.Session(), [])
    t1 = time.perf_counter()
    updates = asyncio.run(_run(pipeline))
    seconds = time.perf_counter() - t1
    assert len(done.data) == n and out.data["k0000000"] == b"ABCDEFGH"
    return {"seconds": seconds, "jobs_per_s": n / seconds, "import_seconds": import_s, "ticks": updates}


def noop_chain(params: dict[str, Any]) -> dict[str, Any]:
    """Two tasks a -> b over n keys in memory, all done; time one ``pipeline.update()``."""
    n, chain = params["n"], params.get("chain", 2)
    pdt, import_s = _import()
    keys = [f"k{i:07d}" for i in range(n)]

    async def noop(job: str) -> None:
        raise AssertionError("nothing should run")

    repos = [pdt.InProcessBlobRepository(dict.fromkeys(keys, b"x")) for _ in range(chain + 1)]
    tasks = []
    for i in range(chain):
        done = pdt.InProcessMetadataRepository(dict.fromkeys(keys, {"result": "success"}))
        task = pdt.InProcessSyncTask(f"t{i}", done, func=noop)
        task.link("src", repos[i], is_input=True)
        task.link("dst", repos[i + 1], is_output=True, inhibits_start=True)
        tasks.append(task)
    pipeline = pdt.Pipeline(tasks, pdt.Session(), [])

    async def main() -> tuple[float, float, bool]:
        async with pipeline:
            t1 = time.perf_counter()
            active = await pipeline.update()
            first = time.perf_counter() - t1
            t2 = time.perf_counter()
            await pipeline.update()
            return first, time.perf_counter() - t2, active

    first, second, active = asyncio.run(main())
    assert not active, "0.4.7 found something to do"
    return {"seconds": first, "second_call_seconds": second, "import_seconds": import_s}


SCENARIOS = {"file_jobs": file_jobs, "memory_jobs": memory_jobs, "noop_chain": noop_chain}


def main() -> None:
    name, params = sys.argv[1], json.loads(sys.argv[2])
    t0 = time.perf_counter()
    metrics = SCENARIOS[name](params)
    metrics["worker_seconds"] = time.perf_counter() - t0
    sys.stdout.write(PREFIX + json.dumps(metrics) + "\n")


if __name__ == "__main__":
    main()
