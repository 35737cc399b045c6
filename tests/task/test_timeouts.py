"""Timeouts of function tasks count from when the call starts, not while it is queued."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.executor import PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask


def _slow_upper(key: str, src: bytes) -> dict[str, bytes]:
    time.sleep(0.3)
    return {"dst": src.upper()}


def _keys(n: int) -> MemoryBlobRepository:
    return MemoryBlobRepository({f"k{i}": b"abc" for i in range(n)})


def _on_pool(pool: Any, work: Any, src: Any, dst: Any, **kwargs: Any) -> FunctionTask:
    """Task ``t``: ``work`` from ``src`` to ``dst`` on ``pool`` (a concurrent.futures
    executor or a Dask client)."""
    return FunctionTask(
        "t", work, executor=PoolExecutor(pool), inputs={"src": src}, outputs={"dst": dst}, **kwargs
    )


async def test_queue_wait_of_a_thread_pool_does_not_count() -> None:
    src, dst = _keys(4), MemoryBlobRepository()
    calls: list[str] = []

    def work(key: str, src: bytes) -> dict[str, bytes]:
        calls.append(key)
        time.sleep(0.15)
        return {"dst": src.upper()}

    with ThreadPoolExecutor(1) as pool:
        task = _on_pool(pool, work, src, dst, timeout="0.3s", concurrency=4)
        summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 4, summary
    assert sorted(calls) == ["k0", "k1", "k2", "k3"]
    assert await dst.keys() == {"k0", "k1", "k2", "k3"}


async def test_queue_wait_of_a_process_pool_does_not_count() -> None:
    src, dst = _keys(3), MemoryBlobRepository()
    with ProcessPoolExecutor(1) as pool:
        pool.submit(time.sleep, 0).result()  # the worker process is up before the clock matters
        task = _on_pool(pool, _slow_upper, src, dst, timeout="0.8s", concurrency=3)
        summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 3, summary


def test_queue_wait_of_a_dask_client_does_not_count() -> None:
    import distributed

    src, dst = _keys(3), MemoryBlobRepository()
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        task = _on_pool(client, _slow_upper, src, dst, timeout="0.6s", concurrency=3)
        summary = Pipeline([task]).run_sync()
    assert summary.ok and summary.succeeded == 3, summary
    assert asyncio.run(dst.read_bytes("k2")) == b"ABC"


async def test_a_sync_function_task_has_its_own_pool_sized_by_concurrency() -> None:
    src, dst = _keys(3), MemoryMetadataRepository()
    together = threading.Barrier(3, timeout=5)
    loop = asyncio.get_running_loop()
    # asyncio's default executor is busy (the repositories' file work would be in there)
    busy = ThreadPoolExecutor(1)
    unblock = threading.Event()
    loop.set_default_executor(busy)
    blocker = loop.run_in_executor(None, unblock.wait, 10)

    def work(key: str) -> dict[str, Any]:
        together.wait()  # all three calls run at once
        return {"dst": {"thread": threading.current_thread().name}}

    task = FunctionTask("sync", work, inputs={"src": src}, outputs={"dst": dst}, timeout="3s", concurrency=3)
    try:
        summary = await Pipeline([task]).run()
    finally:
        unblock.set()
        await blocker
        busy.shutdown()
    assert summary.ok and summary.succeeded == 3, summary
    assert all(
        v["thread"].startswith("pydatatask-sync") for v in (await dst.get_many(["k0", "k1", "k2"])).values()
    )
    # the pool was shut down when the pipeline closed: its threads end
    for thread in threading.enumerate():
        if thread.name.startswith("pydatatask-sync"):
            thread.join(5)
    assert not [t for t in threading.enumerate() if t.name.startswith("pydatatask-sync")]


async def test_a_timed_out_thread_call_is_reported_and_its_late_result_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, dst = _keys(1), MemoryBlobRepository()
    finished = threading.Event()

    def work(key: str, src: bytes) -> dict[str, bytes]:
        time.sleep(0.6)
        finished.set()
        return {"dst": b"late"}

    with ThreadPoolExecutor(1) as pool:
        task = _on_pool(pool, work, src, dst, timeout="0.2s")
        with caplog.at_level(logging.WARNING, logger="pydatatask"):
            summary = await Pipeline([task]).run()
        assert summary.failed == 1
        record = await task.done.get("k0")
        assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        assert "cannot be interrupted" in record["error"]["message"]
        assert "discarded" in record["error"]["message"]
        assert any(
            "task t: job 'k0'" in r.getMessage() and "cannot be interrupted" in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]
        assert await asyncio.to_thread(finished.wait, 5)
        await asyncio.sleep(0.05)
        assert await dst.keys() == set()  # never written after the timeout


async def test_a_job_that_never_started_is_not_recorded() -> None:
    src, dst = _keys(3), MemoryBlobRepository()
    calls: list[str] = []
    first_started = threading.Event()
    release = threading.Event()

    def work(key: str, src: bytes) -> dict[str, bytes]:
        calls.append(key)
        first_started.set()
        release.wait(10)
        return {"dst": src}

    with ThreadPoolExecutor(1) as pool:
        task = _on_pool(pool, work, src, dst, timeout="5s", concurrency=3)
        pipeline = Pipeline([task])
        run = asyncio.create_task(pipeline.run(grace="50ms"))
        assert await asyncio.to_thread(first_started.wait, 5)
        pipeline.scheduler.request_stop()
        summary = await run
        release.set()
    assert summary.interrupted and summary.failed == 0
    assert calls == ["k0"]  # the queued calls were cancelled before they started
    assert await task.done.keys() == set()
    assert await dst.keys() == set()
