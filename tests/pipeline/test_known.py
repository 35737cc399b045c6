"""Listings per run: a scheduler learns its own jobs' writes instead of listing every
repository at every tick, and lists again after the refresh interval for changes from
outside (see pydatatask/pipeline/known.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    ConfigurationError,
    FileRepository,
    MemoryMetadataRepository,
    YamlMetadataFileRepository,
    YamlMetadataRepository,
)
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.known import LOCAL_REFRESH, REMOTE_REFRESH, KnownListings, default_refresh
from pydatatask.pipeline.scheduler import Scheduler, TaskFigures
from pydatatask.repository.base import MetadataRepository
from pydatatask.repository.listing import listing_scope
from pydatatask.repository.s3 import S3BucketRepository
from pydatatask.task import FunctionTask, Hooks
from tests.counting import CountingMetadata


async def copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
    await asyncio.sleep(0.002)  # jobs end over several ticks
    await dst.put(key, await src.get(key))


async def test_a_chained_memory_pipeline_does_not_list_its_own_outputs_per_tick() -> None:
    src = CountingMetadata({f"k{i:03d}": i for i in range(150)})
    mid, out = CountingMetadata(), CountingMetadata()
    done1, done2 = CountingMetadata(), CountingMetadata()
    first = FunctionTask("first", copy, inputs={"src": src}, outputs={"dst": mid}, done=done1, concurrency=4)
    second = FunctionTask(
        "second", copy, inputs={"src": mid}, outputs={"dst": out}, done=done2, concurrency=4
    )
    pipeline = Pipeline([first, second], refresh="1h")
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 300
    assert await out.get_many([f"k{i:03d}" for i in range(150)]) == {f"k{i:03d}": i for i in range(150)}
    ticks = pipeline.scheduler.ticks
    assert ticks > 4  # the second task started on keys while the first still ran
    # the first listing and the one that confirms nothing is left: never one per tick
    for repo in (src, mid, out, done1, done2):
        assert repo.listings == 2, (repo, repo.listings, ticks)


async def test_a_key_added_from_outside_during_a_forever_run_is_picked_up_at_a_refresh() -> None:
    src = CountingMetadata({"a": 1})
    out = MemoryMetadataRepository()
    b_done = asyncio.Event()
    hooks = Hooks()
    hooks.on("job_succeeded", lambda ev: b_done.set() if ev.key == "b" else None)
    task = FunctionTask("copy", copy, inputs={"src": src}, outputs={"dst": out})
    pipeline = Pipeline([task], refresh="0.2s", poll_interval="0.02s", hooks=hooks)
    idle = asyncio.Event()
    ticks: list[int] = []

    def progress(scheduler: Scheduler) -> None:
        # idle: "a" done, confirmed by a second listing, and polled a few times since
        if src.listings == 2 and scheduler.summary.succeeded == 1:
            ticks.append(scheduler.ticks)
            if len(set(ticks)) >= 3:
                idle.set()

    run = asyncio.create_task(pipeline.run(forever=True, on_progress=progress))
    try:
        async with asyncio.timeout(30):  # a bound for a broken scheduler, not a measurement
            await idle.wait()
            await src.put("b", 2)  # not written by any task of the pipeline
            await b_done.wait()
        assert src.listings == 3  # found by the listing made for the refresh
        pipeline.scheduler.request_stop()
        summary = await run
    finally:
        run.cancel()
    assert summary.succeeded == 2 and not summary.failed
    assert await out.get("b") == 2


async def test_an_idle_forever_run_lists_at_the_refresh_interval_not_at_every_poll() -> None:
    src = CountingMetadata({"a": 1})
    task = FunctionTask("copy", copy, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()})
    pipeline = Pipeline([task], refresh="1h", poll_interval="0.01s")
    idle = asyncio.Event()

    def progress(scheduler: Scheduler) -> None:
        if scheduler.ticks >= 20:  # polled many times since the job ended
            idle.set()

    run = asyncio.create_task(pipeline.run(forever=True, on_progress=progress))
    try:
        async with asyncio.timeout(30):
            await idle.wait()
        pipeline.scheduler.request_stop()
        await run
    finally:
        run.cancel()
    # at the start, and once after the job (nothing left); then only every hour
    assert src.listings == 2


def test_refresh_intervals_by_kind_and_bad_values(tmp_path: Path) -> None:
    assert default_refresh(MemoryMetadataRepository()) == LOCAL_REFRESH
    assert default_refresh(FileRepository(tmp_path / "f", ".txt")) == LOCAL_REFRESH
    assert default_refresh(YamlMetadataFileRepository(tmp_path / "y")) == LOCAL_REFRESH
    s3 = S3BucketRepository(object(), "bucket", "prefix/")
    assert default_refresh(s3) == default_refresh(YamlMetadataRepository(s3)) == REMOTE_REFRESH
    assert REMOTE_REFRESH > LOCAL_REFRESH
    task = FunctionTask("t", copy, inputs={"src": MemoryMetadataRepository()})
    assert Pipeline([task], refresh="5s").refresh == 5.0
    assert Pipeline([task]).refresh is None
    with pytest.raises(ConfigurationError, match="refresh must be positive, not '0s'"):
        Pipeline([task], refresh="0s")
    with pytest.raises(ConfigurationError, match="invalid duration"):
        Pipeline([task], refresh="soon")


def _first_part(key: str) -> str:
    return key.split(".")[0]


def _total(key: str, members: list[str], part: dict[str, int]) -> dict[str, Any]:
    return {"total": sum(part.values())}


def _grouped_pipeline() -> tuple[Pipeline, MemoryMetadataRepository, MemoryMetadataRepository]:
    src = MemoryMetadataRepository({"A.1": 1, "A.2": 2})
    parts = MemoryMetadataRepository()
    up = FunctionTask("up", copy, inputs={"src": src}, outputs={"dst": parts})
    fan_in = FunctionTask(
        "sum",
        _total,
        inputs={"part": parts},
        outputs={"total": MemoryMetadataRepository()},
        group_by=_first_part,
    )
    return Pipeline([up, fan_in]), src, parts


async def test_changes_not_learnt_exactly_during_a_tick_are_named_after_it() -> None:
    pipeline, src, parts = _grouped_pipeline()
    known = KnownListings(pipeline.tasks.values())
    with listing_scope() as cache:
        known.fill(cache, full=True)
        known.relist([parts])  # an orphan's outputs removed while the tick lists
        known.take(cache)
    assert id(parts) in known.changed_during
    with listing_scope() as cache:
        known.fill(cache, full=True)
        known.learn(parts, ["A.3"])  # a job's own write: held back by key, not named here
        known.learn(src, ["A.1"], present=False)  # a key gone, learnt exactly: named
        known.take(cache)
    assert known.changed_during == {id(src)}
    with listing_scope() as cache:
        known.fill(cache, full=True)
        known.take(cache)
    assert known.changed_during == set()


async def test_the_groups_of_a_fan_in_task_whose_inputs_changed_during_the_tick_wait_for_the_next() -> None:
    pipeline, src, parts = _grouped_pipeline()
    scheduler = Scheduler(pipeline)
    figures = {name: TaskFigures(name) for name in pipeline.tasks}
    figures["sum"].ready = {"A", "B"}
    figures["up"].ready = {"A.1"}
    scheduler._hold_changed_groups(figures, {id(src)})  # not an input of the fan-in task
    assert figures["sum"].ready == {"A", "B"}
    scheduler._hold_changed_groups(figures, {id(parts)})
    assert figures["sum"].ready == set() and figures["sum"].blocked == {"A", "B"}
    assert figures["up"].ready == {"A.1"}  # only groups wait
