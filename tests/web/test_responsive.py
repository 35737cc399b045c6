"""The server answers while a large status is being built: the stale keys of every task
are looked for a chunk of keys at a time, the event loop serving requests in between."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from pydatatask import MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask
from pydatatask.web.state import Monitor

from .conftest import Gate, demo, serve

#: done keys: fewer than the records ``serve`` reads at once, so that the first
#: /api/status reads them all and looks for the stale ones among them before it answers
KEYS = 15_000


def finished(n: int) -> Pipeline:
    """One task whose ``n`` jobs all succeeded (their records, inputs and outputs there)."""
    keys = [f"k{i:06d}" for i in range(n)]
    done = MemoryMetadataRepository({k: {"success": True, "attempts": 1} for k in keys})

    async def never(key: str, src: Any, out: Any) -> None:
        raise AssertionError("every job is done")

    src = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    out = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    return Pipeline([FunctionTask("thumb", never, inputs={"src": src}, outputs={"out": out}, done=done)])


async def test_a_request_is_answered_while_the_status_of_many_keys_is_built(
    http: aiohttp.ClientSession,
) -> None:
    pipeline = finished(KEYS)
    server, client = await serve(pipeline, http)
    answered: list[str] = []

    async def get(path: str) -> Any:
        body = await client.json(path)
        answered.append(path)
        return body

    try:
        status = asyncio.create_task(get("/api/status"))  # the first: the whole status
        records = server.monitor._records["thumb"]  # the job records the status reads
        while len(records.recorded()) < KEYS:  # read: the status looks for stale keys now
            assert not status.done()
            await asyncio.sleep(0)
        graph = await get("/api/graph")
        assert [n["label"] for n in graph["nodes"] if n["kind"] == "task"] == ["thumb"]
        body = await status
        assert body["records_pending"] == 0 and body["tasks"]["thumb"]["counts"]["succeeded"] == KEYS
        assert body["tasks"]["thumb"]["counts"]["stale"] == 0
        # the graph was asked for after the status and answered before it
        assert answered == ["/api/graph", "/api/status"]
    finally:
        await server.__aexit__(None, None, None)


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (looked at every 10 ms)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_a_snapshot_of_a_run_is_taken_again_after_twenty_times_what_it_cost() -> None:
    gate = Gate()
    pipeline = demo(5, gate=gate)
    monitor = Monitor(pipeline, interval=0.0, live=True)
    async with pipeline:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        try:
            async with asyncio.timeout(20):
                await until(lambda: monitor.scheduler is not None)
                first = await monitor.snapshot()
                monitor._snapshot_seconds = 3600.0  # as if it had taken an hour to make
                before = monitor.version()
                gate.open()
                await until(lambda: monitor.version() != before)  # a job ended: the counts changed
            assert await monitor.snapshot() is first  # not taken again for 20 hours
            assert (await monitor.counts())["square"]["succeeded"] >= 1  # the counts are live
            monitor._snapshot_seconds = 0.0
            again = await monitor.snapshot()
            assert again is not first and len(again.tasks["square"].keys["succeeded"]) >= 1
        finally:
            gate.open(10)
            await run
        await monitor.aclose()
