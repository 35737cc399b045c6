"""The file workload for pydatatask (this checkout), the driver the peers are compared with.

Usage: ``python ours_files.py ROOT CONCURRENCY`` (with ``PYTHONPATH`` set to the
checkout): the ``file_jobs`` pipeline over ``ROOT``: ``FileRepository`` in (``ROOT/in``)
and out (``ROOT/out``), one ``FunctionTask`` at ``concurrency=CONCURRENCY``,
``Pipeline(state_dir=ROOT/state)`` (a YAML done record and a claim per job, atomic and
durable writes: the defaults). Run again over the same ``ROOT``, every key is done and
nothing runs: the no-op run.

Prints ``BENCH-RESULT {json}``: the run's seconds (``pipeline.run()``, after the
imports), the import time, the number of jobs run and this process's peak RSS.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _driver (-I adds no script folder)
from _driver import report, started  # noqa: E402


def main() -> None:
    root, concurrency = Path(sys.argv[1]), int(sys.argv[2])
    t0 = time.perf_counter()
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import FileRepository
    from pydatatask.task import FunctionTask

    import_s = time.perf_counter() - t0

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(root / "in", ".txt")},
        outputs={"dst": FileRepository(root / "out", ".txt")},
        concurrency=concurrency,
    )
    pipeline = Pipeline([task], state_dir=root / "state")
    started()
    t1 = time.perf_counter()
    summary = asyncio.run(pipeline.run())
    seconds = time.perf_counter() - t1
    if not summary.ok:
        raise SystemExit(f"the run did not succeed: {summary.as_dict()}")
    report({"seconds": seconds, "import_seconds": import_s, "ran": summary.succeeded})


if __name__ == "__main__":
    main()
