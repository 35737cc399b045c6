"""100,000 objects of 100 bytes in local files, one stage, ``batch=500``, state local.

* ``ours``: ``FileRepository`` in/out, a plain ``FunctionTask`` with ``batch=500`` (one call
  per 500 keys: ``{key: bytes}`` in, ``{key: {"dst": bytes}}`` out),
  ``Pipeline(state_dir=...)``: one claim file per batch (a bundle in ``live``), a done
  re-check and a YAML job record per key, all durable as by default (``fsync`` of each
  file; the records of a batch are one bulk call, which syncs the directory once).
* ``bare``: plain asyncio doing the same reads and writes: one listing of the inputs and
  outputs, then chunks of 500 keys, each chunk in a thread: read the input, write the
  upper-cased output atomically and durably (temp file, ``fsync``, ``os.replace``, ``fsync``
  of the directory), as ours writes it. No job records, no claims: the physical limit.
* ``bare-records``: ``bare`` plus the same YAML job record per key in ``state/done``,
  durably (a figure, no target).

Target (issue 15): ours within 1.5x of the bare loop's time. Each series also reports
``cpu_seconds``, the CPU time of its timed part (all threads of the process): on a shared
machine the wall time mostly measures the wait for a core, the CPU time what was done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, bare_record, profiled, ratio
from ._common import at_most, figure, listing, run_workers, timed_count
from .file_jobs import _atomic_write

NAME = "tiny_objects"
TITLE = "tiny objects: 100,000 files of 100 bytes, one stage, batch=500, state in local files"
BATCH = 500
CONCURRENCY = 4
PAYLOAD = bytes(range(32, 132))  # 100 bytes


def points(opts: Options) -> list[Point]:
    n = opts.size or (300 if opts.quick else 100_000)
    return [
        Point(
            f"{n} objects",
            n,
            {"n": n, "batch": BATCH, "concurrency": CONCURRENCY},
            ["ours", "bare", "bare-records"],
        )
    ]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    ours, bare, records = (res.median(p, s) for s in ("ours", "bare", "bare-records"))
    r = ratio(ours, bare)
    out = [at_most("batch=500: <= 1.5x the bare loop's time", r, 1.5)]
    out.append(figure("ours / bare loop with records, time", ratio(ours, records)))
    return out


def make_inputs(root: Path, n: int) -> Path:
    src = root / "in"
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"o{i:07d}.bin").write_bytes(PAYLOAD)
    return src


# ---------------------------------------------------------------------- workers
def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    root = Path(tempfile.mkdtemp(prefix="pdt-bench-tiny-", dir=os.environ.get("PDT_BENCH_TMP")))
    try:
        make_inputs(root, n)
        if series == "ours":
            return _ours(root, n, params)
        return _bare(root, n, params, records=series == "bare-records")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _upper(keys: list[str], src: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    return {key: {"dst": src[key].upper()} for key in keys}


def _ours(root: Path, n: int, params: dict[str, Any]) -> dict[str, Any]:
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import FileRepository
    from pydatatask.task import FunctionTask

    task = FunctionTask(
        "upper",
        _upper,
        inputs={"src": FileRepository(root / "in", ".bin")},
        outputs={"dst": FileRepository(root / "out", ".bin")},
        batch=params["batch"],
        concurrency=params["concurrency"],
    )
    pipeline = Pipeline([task], state_dir=root / "state")
    t0, c0 = time.perf_counter(), time.process_time()
    summary, prof = profiled(params, lambda: asyncio.run(pipeline.run()))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = len(os.listdir(root / "state" / "upper" / "done"))
    assert summary.succeeded == n and done == n, (summary, done)
    assert (root / "out" / "o0000000.bin").read_bytes() == PAYLOAD.upper()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "objects_per_s": n / seconds,
        "ticks": pipeline.scheduler.ticks,
        "profile": prof,
    }


def _bare(root: Path, n: int, params: dict[str, Any], *, records: bool) -> dict[str, Any]:
    import yaml

    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    host = socket.gethostname()
    src, dst, done = str(root / "in"), str(root / "out"), str(root / "state" / "done")

    def chunk(keys: list[str]) -> None:
        for key in keys:
            start = time.time()
            with open(os.path.join(src, key + ".bin"), "rb") as f:
                data = f.read()
            _atomic_write(os.path.join(dst, key + ".bin"), data.upper(), True)
            if records:
                record = bare_record(key, start, time.time(), host)
                text = yaml.dump(record, Dumper=dumper, sort_keys=False, allow_unicode=True).encode()
                _atomic_write(os.path.join(done, key + ".yaml"), text, True)

    async def main() -> int:
        os.makedirs(dst, exist_ok=True)
        os.makedirs(done, exist_ok=True)
        ready = sorted(listing(src, ".bin") - listing(dst, ".bin"))
        size = params["batch"]
        chunks = iter([ready[i : i + size] for i in range(0, len(ready), size)])
        count = 0

        async def worker() -> None:
            nonlocal count
            for keys in chunks:
                await asyncio.to_thread(chunk, keys)
                count += len(keys)

        await run_workers(params["concurrency"], worker)
        return count

    c0 = time.process_time()
    seconds = timed_count(main, n)
    return {"seconds": seconds, "cpu_seconds": time.process_time() - c0, "objects_per_s": n / seconds}


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
