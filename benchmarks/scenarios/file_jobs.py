"""10k file jobs: read one 8-byte file, write it upper-cased, a YAML done record per job.

* ``ours``: ``FileRepository`` in/out, ``FunctionTask`` with ``concurrency=C``,
  ``Pipeline(state_dir=...)`` (done records and claims as YAML files; atomic writes),
  everything durable as by default (``fsync`` of each file and of its directory).
* ``ours-nofsync``: the same with ``fsync=False`` on every repository (the output, and
  done/live/logs given to the task in the same layout): the default before durability.
* ``bare``: plain asyncio, ``C`` worker coroutines, the same listing, the same reads and
  atomic writes (temp file in the same directory + ``os.replace``) of the output and of
  the same YAML job record, with blocking calls made inline (the physical limit).
* ``bare-thread``: the same with one ``asyncio.to_thread`` hop per job (the shape a
  loop that must never block its event loop has).
* ``bare-fsync``: ``bare-thread`` with the output and the record made durable the way
  ours are (fsync of the file before ``os.replace``, of the directory after it): the
  physical cost of durability.
* ``0.4.7``: the same pipeline written for pydatatask 0.4.7 (``baseline_047``).

Our pipeline additionally writes and removes a claim file per job (``live``), which
the bare loops do not (durably: two fsyncs to create it, one to remove it). Directory
fsyncs of concurrent jobs in one directory are shared (one fsync serves every job that
changed the directory before it started), so a job pays fewer than its seven.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Options, Point, ScenarioResult, Verdict, bare_record, profiled, ratio
from ._common import at_least, at_most, figure, listing, run_workers, timed_jobs

NAME = "file_jobs"
TITLE = "file jobs: FileRepository in/out, YAML done records on disk, atomic writes"
CONCURRENCY = 15  # 0.4.7 launches at most 15 jobs at once (fixed); every series uses 15


def points(opts: Options) -> list[Point]:
    n = 300 if opts.quick else 10_000
    series = ["ours", "ours-nofsync", "bare", "bare-thread", "bare-fsync"] + (
        ["0.4.7"] if opts.with_047 else []
    )
    return [Point(f"{n} jobs", n, {"n": n, "concurrency": CONCURRENCY}, series)]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    p = res.points[0].label
    ours, bare, old = (res.median(p, s) for s in ("ours", "bare", "0.4.7"))
    out = []
    r = ratio(old, ours)
    out.append(at_least(">= 3x pydatatask 0.4.7 throughput", r, 3))
    out.append(at_most("<= 2x the bare loop's time", ratio(ours, bare), 2))
    # durability: what it costs us, and what it costs a bare loop (figures, no target)
    nofsync, bare_fsync, bare_thread = (
        res.median(p, s) for s in ("ours-nofsync", "bare-fsync", "bare-thread")
    )
    out.append(figure("time with fsync / without (ours)", ratio(ours, nofsync)))
    out.append(figure("time with fsync / without (bare-thread)", ratio(bare_fsync, bare_thread)))
    out.append(figure("durable: ours / bare-fsync time", ratio(ours, bare_fsync)))
    return out


def make_inputs(root: Path, n: int) -> Path:
    src = root / "in"
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"k{i:07d}.txt").write_bytes(b"abcdefgh")
    return src


# ---------------------------------------------------------------------- workers
def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    n, conc = params["n"], params["concurrency"]
    root = Path(tempfile.mkdtemp(prefix="pdt-bench-files-", dir=os.environ.get("PDT_BENCH_TMP")))
    try:
        make_inputs(root, n)
        if series in ("ours", "ours-nofsync"):
            return _ours(root, n, conc, params, fsync=series == "ours")
        return _bare(root, n, conc, threaded=series != "bare", fsync=series == "bare-fsync")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ours(root: Path, n: int, conc: int, params: dict[str, Any], *, fsync: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import FileRepository, YamlMetadataFileRepository
    from pydatatask.task import FunctionTask

    import_s = time.perf_counter() - t0

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    state: dict[str, Any] = {}
    if not fsync:  # what state_dir makes, unsynced
        base = root / "state" / "upper"
        state = {
            "done": YamlMetadataFileRepository(base / "done", fsync=False),
            "live": YamlMetadataFileRepository(base / "live", fsync=False),
            "logs": FileRepository(base / "logs", ".log", fsync=False),
        }
    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(root / "in", ".txt", fsync=fsync)},
        outputs={"dst": FileRepository(root / "out", ".txt", fsync=fsync)},
        concurrency=conc,
        **state,
    )
    pipeline = Pipeline([task], state_dir=root / "state" if fsync else None)
    t1 = time.perf_counter()
    summary, prof = profiled(params, lambda: asyncio.run(pipeline.run()))
    seconds = time.perf_counter() - t1
    done = len(os.listdir(root / "state" / "upper" / "done"))
    assert summary.succeeded == n and done == n, (summary, done)
    assert (root / "out" / "k0000000.txt").read_bytes() == b"ABCDEFGH"
    return {
        "seconds": seconds,
        "jobs_per_s": n / seconds,
        "import_seconds": import_s,
        "ticks": pipeline.scheduler.ticks,
        "profile": prof,
    }


def _atomic_write(path: str, data: bytes, fsync: bool = False) -> None:
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.tmp-{secrets.token_hex(6)}")
    with open(tmp, "xb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _bare(root: Path, n: int, conc: int, *, threaded: bool, fsync: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    import yaml

    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    import_s = time.perf_counter() - t0
    host = socket.gethostname()
    src, dst, done = str(root / "in"), str(root / "out"), str(root / "state" / "done")

    def job(key: str) -> None:
        start = time.time()
        with open(os.path.join(src, key + ".txt"), "rb") as f:
            data = f.read()
        _atomic_write(os.path.join(dst, key + ".txt"), data.upper(), fsync)
        end = time.time()
        record = bare_record(key, start, end, host)
        text = yaml.dump(record, Dumper=dumper, sort_keys=False, allow_unicode=True).encode()
        _atomic_write(os.path.join(done, key + ".yaml"), text, fsync)

    async def main() -> int:
        os.makedirs(dst, exist_ok=True)
        os.makedirs(done, exist_ok=True)
        ready = sorted(listing(src, ".txt") - listing(dst, ".txt") - listing(done, ".yaml"))
        it = iter(ready)
        count = 0

        async def worker() -> None:
            nonlocal count
            for key in it:
                if threaded:
                    await asyncio.to_thread(job, key)
                else:
                    job(key)
                    await asyncio.sleep(0)
                count += 1

        await run_workers(conc, worker)
        return count

    return timed_jobs(main, n, import_s)


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
