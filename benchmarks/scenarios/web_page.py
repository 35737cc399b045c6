"""The web page at 1,000,000 keys, and the scheduler's throughput with the page open.

* ``page`` (1M keys, one task, all done, memory, compact records): a ``serve`` server is
  started cold; **first paint** is the time to fetch what the page loads before it
  draws (the HTML, its script and stylesheet, ``/api/status`` - which makes the first
  listing - and ``/graph.svg``). The server then reads the job records in the background
  (``records_loaded_seconds``: until ``/api/status`` has the complete counts); **keys
  page** is one ``/api/keys`` page in the middle of the succeeded keys after that (the
  sort of the million keys included), then the next page (warm) and a search.
* ``paired`` (10k memory jobs as ``memory_jobs``, 2k file jobs as ``file_jobs``): the same
  pipeline run without and with ``run --serve`` (a ``WebServer(live=True)``) and one open
  page (a separate process reading ``/api/events`` and asking ``/api/status`` every 5 s
  as the page does), alternately in one worker (without, with, with, without, ...: the
  load of the machine changes slower than that), each run on fresh repositories;
  ``ratio`` is the median of the ratios of neighbouring runs (with / without), 5 pairs (3 quick);
  ``cpu_ratio`` the same of the CPU time of the scheduler's process (the server runs in
  it), which the load of other processes on a shared machine does not move.

Targets: first paint and one keys page under 1 s each; throughput with the page open at
least 0.95x without (the median ratio over every repetition).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import Options, Point, ScenarioResult, Verdict

NAME = "web_page"
TITLE = "web page: first paint and a keys page at 1M keys; throughput with the page open"
CONCURRENCY = 15

#: what stands for the open page: server-sent events read, /api/status every 5 s
PAGE_CLIENT = r"""
import sys, threading, time, urllib.request
base = sys.argv[1]
def status():
    while True:
        time.sleep(5)
        try:
            urllib.request.urlopen(base + "/api/status", timeout=30).read()
        except OSError:
            return
threading.Thread(target=status, daemon=True).start()
try:
    with urllib.request.urlopen(base + "/api/events", timeout=60) as r:
        opened = False
        for line in r:
            if not opened and line.startswith(b"data:"):
                opened = True
                print("open", flush=True)  # connected, the first event read
except OSError:
    pass
"""


#: runs without and with the page in one worker: 2 * PAIRS, in ABBA order (3 pairs quick)
PAIRS = 5


def points(opts: Options) -> list[Point]:
    keys = 100_000 if opts.quick else 1_000_000
    jobs = 2_000 if opts.quick else 10_000
    files = 500 if opts.quick else 2_000
    pairs = 3 if opts.quick else PAIRS
    return [
        Point(f"{keys} keys", keys, {"kind": "page", "n": keys}, ["page"]),
        Point(
            f"{jobs} memory jobs",
            jobs,
            {"kind": "run", "backend": "memory", "n": jobs, "concurrency": CONCURRENCY, "pairs": pairs},
            ["paired"],
        ),
        Point(
            f"{files} file jobs",
            files,
            {"kind": "run", "backend": "files", "n": files, "concurrency": CONCURRENCY, "pairs": pairs},
            ["paired"],
        ),
    ]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    page = res.points[0].label
    paint = res.median(page, "page", "first_paint_seconds")
    keys = res.median(page, "page", "keys_page_seconds")
    out = [
        Verdict(
            f"first paint < 1 s ({page})",
            "n/a" if paint is None else f"{paint:.3f} s",
            None if paint is None else paint < 1,
        ),
        Verdict(
            f"one keys page < 1 s ({page})",
            "n/a" if keys is None else f"{keys:.3f} s",
            None if keys is None else keys < 1,
        ),
    ]
    for point in res.points[1:]:
        r = res.median(point.label, "paired", "ratio")
        c = res.median(point.label, "paired", "cpu_ratio")
        out.append(
            Verdict(
                f"throughput with --serve and one open page >= 0.95x ({point.label})",
                "n/a" if r is None else f"{r:.3f}x" + ("" if c is None else f" (CPU time: {c:.3f}x)"),
                None if r is None else r >= 0.95,
            )
        )
    return out


def run(series: str, params: dict[str, Any]) -> dict[str, Any]:
    if params["kind"] == "page":
        return _page(params["n"])
    return _paired(params["backend"], params["n"], params["concurrency"], params.get("pairs", PAIRS))


def _page(n: int) -> dict[str, Any]:
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import MemoryMetadataRepository
    from pydatatask.task import FunctionTask
    from pydatatask.web import WebServer

    keys = [f"k{i:07d}" for i in range(n)]
    src = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    out = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    done = MemoryMetadataRepository({k: {"success": True} for k in keys})

    async def never(key: str, src: Any, out: Any) -> None:
        raise AssertionError("all done")

    task = FunctionTask("thumb", never, inputs={"src": src}, outputs={"out": out}, done=done)
    pipeline = Pipeline([task])

    async def main() -> dict[str, Any]:
        async with WebServer(pipeline, port=0) as server:
            base = server.url.rstrip("/")

            def get(path: str) -> bytes:
                with urllib.request.urlopen(base + path, timeout=60) as r:
                    return bytes(r.read())

            async def fetch(path: str) -> bytes:
                return await asyncio.to_thread(get, path)

            t0 = time.perf_counter()
            await asyncio.gather(fetch("/"), fetch("/static/app.js"), fetch("/static/style.css"))
            status = json.loads(await fetch("/api/status"))
            await fetch("/graph.svg")
            paint = time.perf_counter() - t0
            pending = status["records_pending"]
            while status["records_pending"]:  # the records are read after the first paint
                await asyncio.sleep(0.05)
                status = json.loads(await fetch("/api/status"))
            loaded = time.perf_counter() - t0
            assert status["tasks"]["thumb"]["counts"]["succeeded"] == n, status
            t1 = time.perf_counter()
            page = json.loads(await fetch(f"/api/keys?task=thumb&state=succeeded&offset={n // 2}&limit=100"))
            cold = time.perf_counter() - t1
            assert page["keys"][0] == keys[n // 2] and len(page["keys"]) == 100
            t2 = time.perf_counter()
            await fetch(f"/api/keys?task=thumb&state=succeeded&offset={n // 2 + 100}&limit=100")
            warm = time.perf_counter() - t2
            t3 = time.perf_counter()
            found = json.loads(await fetch("/api/keys?task=thumb&state=succeeded&q=k09999&limit=100"))
            search = time.perf_counter() - t3
            assert found["matched"] == (100 if n >= 1_000_000 else 0), found["matched"]
        return {
            "seconds": paint,
            "first_paint_seconds": paint,
            "keys_page_seconds": cold,
            "keys_page_warm_seconds": warm,
            "search_seconds": search,
            "records_loaded_seconds": loaded,
            "records_pending_at_paint": pending,
        }

    return asyncio.run(main())


def _pipeline(backend: str, n: int, conc: int, where: Path) -> Any:
    """A fresh pipeline of ``n`` jobs upper-casing 8 bytes (memory, or files on disk)."""
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import FileRepository, MemoryBlobRepository
    from pydatatask.task import FunctionTask

    async def upper(key: str, src: Any, dst: Any) -> None:
        await dst.write_bytes(key, (await src.read_bytes(key)).upper())

    if backend == "memory":
        src: Any = MemoryBlobRepository({f"k{i:07d}": b"abcdefgh" for i in range(n)})
        out: Any = MemoryBlobRepository()
        state = None
    else:
        (where / "src").mkdir(parents=True)
        for i in range(n):
            (where / "src" / f"k{i:07d}.txt").write_bytes(b"abcdefgh")
        src, out, state = (
            FileRepository(where / "src", ".txt"),
            FileRepository(where / "out", ".txt"),
            where / "state",
        )
    task = FunctionTask("upper", upper, inputs={"src": src}, outputs={"dst": out}, concurrency=conc)
    return Pipeline([task], state_dir=state)


def _paired(backend: str, n: int, conc: int, pairs: int = PAIRS) -> dict[str, Any]:
    async def once(served: bool, where: Path) -> tuple[float, float]:
        pipeline = _pipeline(backend, n, conc, where)

        async def plain() -> tuple[float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = await pipeline.run(on_progress=lambda s: None)
            assert summary.succeeded == n, summary
            return time.perf_counter() - t0, time.process_time() - c0

        if not served:
            return await plain()
        from pydatatask.web import WebServer

        async with WebServer(pipeline, port=0, live=True) as server:
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PAGE_CLIENT, server.url.rstrip("/"), stdout=subprocess.PIPE
            )
            assert client.stdout is not None
            await client.stdout.readline()  # the page is open
            try:
                return await plain()
            finally:
                client.terminate()
                await client.wait()

    order = [False, True, True, False] * ((pairs + 1) // 2)
    order = order[: 2 * pairs]
    seconds: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pdt-web-bench-") as tmp:
        for i, served in enumerate(order):
            wall, used = asyncio.run(once(served, Path(tmp) / str(i)))
            seconds[served].append(wall)
            cpu[served].append(used)
            if i % 2:  # a pair: throughput with / without = time without / time with
                ratios.append(seconds[False][-1] / seconds[True][-1])
                cpu_ratios.append(cpu[False][-1] / cpu[True][-1])
    without, with_page = statistics.median(seconds[False]), statistics.median(seconds[True])
    return {
        "seconds": without + with_page,
        "jobs_per_s": n / without,
        "jobs_per_s_served": n / with_page,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        # the same ratio of the CPU time of the scheduler's process (the server runs in it):
        # what the page costs the run, unmoved by the load other processes put on the machine
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
    }


if __name__ == "__main__":
    from .. import worker_main

    worker_main(run)
