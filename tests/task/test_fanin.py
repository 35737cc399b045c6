"""Fan-in tasks (group_by=): one job per group, started when every member known upstream
has succeeded; members in the record; membership changes; two schedulers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pydatatask import MemoryMetadataRepository, YamlMetadataFileRepository
from pydatatask.errors import ConfigurationError
from pydatatask.pipeline import Pipeline, Scheduler
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask, RetryPolicy


def first_part(key: str) -> str:
    return key.split(".")[0]


async def copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
    await dst.put(key, await src.get(key))


def total(key: str, members: list[str], part: dict[str, int]) -> dict[str, Any]:
    return {"total": {"group": key, "members": members, "sum": sum(part.values())}}


async def test_one_job_per_group_with_member_values_and_members_in_the_record() -> None:
    src = MemoryMetadataRepository({"A.1": 1, "A.2": 2, "B.1": 10, "lonely": 5})
    parts = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()
    up = FunctionTask("up", copy, inputs={"src": src}, outputs={"dst": parts})
    fan_in = FunctionTask(
        "sum", total, inputs={"part": parts}, outputs={"total": totals}, group_by=first_part
    )
    summary = await Pipeline([up, fan_in]).run()
    assert summary.ok and summary.per_task["sum"] == {"succeeded": 3, "failed": 0}
    assert await totals.get("A") == {"group": "A", "members": ["A.1", "A.2"], "sum": 3}
    assert await totals.get("B") == {"group": "B", "members": ["B.1"], "sum": 10}
    assert await totals.get("lonely") == {"group": "lonely", "members": ["lonely"], "sum": 5}
    assert (await fan_in.done.get("A"))["members"] == ["A.1", "A.2"]


async def test_an_async_function_gets_the_members_and_the_repositories() -> None:
    parts = MemoryMetadataRepository({"x.1": 1, "x.2": 2, "y.1": 3})
    totals = MemoryMetadataRepository()

    async def gather(
        key: str, members: list[str], parts: MetadataRepository, totals: MetadataRepository
    ) -> None:
        await totals.put(key, [await parts.get(m) for m in members])

    task = FunctionTask(
        "gather", gather, inputs={"parts": parts}, outputs={"totals": totals}, group_by=first_part
    )
    assert (await Pipeline([task]).run()).ok
    assert await totals.get("x") == [1, 2] and await totals.get("y") == [3]


async def test_a_member_still_running_upstream_holds_the_group() -> None:
    src = MemoryMetadataRepository({"A.1": 1, "A.2": 2, "B.1": 3})
    parts = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()
    release = asyncio.Event()
    started: list[str] = []

    async def slow_copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
        if key == "A.2":
            await release.wait()
        await dst.put(key, await src.get(key))

    def summed(key: str, members: list[str], part: dict[str, int]) -> dict[str, Any]:
        started.append(key)
        return {"total": sum(part.values())}

    up = FunctionTask("up", slow_copy, inputs={"src": src}, outputs={"dst": parts})
    fan_in = FunctionTask(
        "sum", summed, inputs={"part": parts}, outputs={"total": totals}, group_by=first_part
    )
    pipeline = Pipeline([up, fan_in], poll_interval="20ms")
    seen_held = asyncio.Event()

    def progress(scheduler: Scheduler) -> None:
        fig = scheduler.figures.get("sum")
        if fig is not None and "A" in fig.blocked and "B" in started:
            seen_held.set()

    run = asyncio.create_task(pipeline.run(on_progress=progress))
    await asyncio.wait_for(seen_held.wait(), 20)
    fig = pipeline.scheduler.figures["sum"]
    assert "A" not in fig.ready and fig.held["A"] == ("up", "A.2")
    assert started == ["B"]
    release.set()
    summary = await run
    assert summary.ok and sorted(started) == ["A", "B"]
    assert await totals.get("A") == 3


async def test_a_member_ready_upstream_holds_the_group_and_why_names_it() -> None:
    src = MemoryMetadataRepository({"A.1": 1})
    parts = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()
    up = FunctionTask("up", copy, inputs={"src": src}, outputs={"dst": parts})
    fan_in = FunctionTask(
        "sum", total, inputs={"part": parts}, outputs={"total": totals}, group_by=first_part
    )
    pipeline = Pipeline([up, fan_in])
    assert (await pipeline.run(tasks=["up"])).ok
    await src.put("A.2", 2)  # a new member, not yet copied
    status = await pipeline.status()
    assert status["sum"]["ready"] == [] and status["sum"]["blocked"] == ["A"]
    reasons = " ".join(await pipeline.why("sum", "A"))
    assert "upstream task 'up' has no success record for member 'A.2' (not finished)" in reasons
    summary = await pipeline.run()
    assert summary.ok
    assert (await fan_in.done.get("A"))["members"] == ["A.1", "A.2"]


async def test_a_failed_member_blocks_the_group_and_status_and_why_say_so() -> None:
    src = MemoryMetadataRepository({"A.1": 1, "A.2": 2, "B.1": 3})
    parts = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()

    async def fails_on_a2(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
        if key == "A.2":
            raise RuntimeError("bad member")
        await dst.put(key, await src.get(key))

    up = FunctionTask(
        "up",
        fails_on_a2,
        inputs={"src": src},
        outputs={"dst": parts},
        retry=RetryPolicy(max_attempts=2, backoff=0),
    )
    fan_in = FunctionTask(
        "sum", total, inputs={"part": parts}, outputs={"total": totals}, group_by=first_part
    )
    pipeline = Pipeline([up, fan_in])
    summary = await pipeline.run()
    assert summary.failed == 1 and summary.per_task["sum"]["succeeded"] == 1
    assert await totals.keys() == {"B"}
    status = await pipeline.status()
    assert status["sum"]["blocked"] == ["A"]
    assert "member 'A.2' (failed)" in " ".join(await pipeline.why("sum", "A"))


async def test_changed_groups_names_what_was_added_and_removed() -> None:
    src = MemoryMetadataRepository({"A.1": 1, "A.2": 2, "B.1": 3})
    parts = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()
    up = FunctionTask("up", copy, inputs={"src": src}, outputs={"dst": parts})
    fan_in = FunctionTask(
        "sum", total, inputs={"part": parts}, outputs={"total": totals}, group_by=first_part
    )
    pipeline = Pipeline([up, fan_in])
    assert (await pipeline.run()).ok
    assert await pipeline.changed_groups("sum") == {}
    await src.put("A.3", 3)
    assert (await pipeline.run(tasks=["up"])).ok
    await parts.delete("B.1")
    changes = await pipeline.changed_groups("sum")
    assert set(changes) == {"A", "B"}
    assert changes["A"].added == ("A.3",) and changes["A"].removed == ()
    assert changes["B"].added == () and changes["B"].removed == ("B.1",)
    assert changes["A"].describe() == "group 'A': 1 member(s) added ('A.3')"
    with pytest.raises(ConfigurationError, match="has no group_by"):
        await pipeline.changed_groups("up")


async def test_a_group_by_returning_a_bad_key_is_named() -> None:
    parts = MemoryMetadataRepository({"x": 1})
    task = FunctionTask(
        "sum",
        total,
        inputs={"part": parts},
        outputs={"total": MemoryMetadataRepository()},
        group_by=lambda k: 3,
    )
    with pytest.raises(ConfigurationError, match="group_by returned 3 for 'x'"):
        await Pipeline([task]).run()


async def test_two_concurrent_schedulers_run_each_group_once(tmp_path: Path) -> None:
    parts = YamlMetadataFileRepository(tmp_path / "parts")
    for g in range(6):
        for i in range(3):
            await parts.put(f"g{g}.{i}", i)
    calls = tmp_path / "calls.log"

    async def slow_sum(
        key: str, members: list[str], parts: MetadataRepository, totals: MetadataRepository
    ) -> None:
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{key}\n".encode())
        finally:
            os.close(fd)
        await asyncio.sleep(0.05)
        await totals.put(key, sum([await parts.get(m) for m in members]))

    def build() -> Pipeline:
        task = FunctionTask(
            "sum",
            slow_sum,
            inputs={"parts": parts},
            outputs={"totals": YamlMetadataFileRepository(tmp_path / "totals")},
            group_by=first_part,
            concurrency=2,
        )
        return Pipeline([task], state_dir=tmp_path / "state")

    first, second = await asyncio.gather(build().run(), build().run())
    assert first.ok and second.ok
    assert first.succeeded + second.succeeded == 6
    assert sorted(calls.read_text().split()) == [f"g{g}" for g in range(6)]
    assert await YamlMetadataFileRepository(tmp_path / "totals").get("g5") == 3


async def test_a_process_task_template_gets_the_members(tmp_path: Path) -> None:
    from pydatatask import FileRepository
    from pydatatask.executor import LocalHost
    from pydatatask.task import ProcessTask

    parts = FileRepository(tmp_path / "parts", ".txt")
    for key, text in {"a.1": "one\n", "a.2": "two\n", "b.1": "three\n"}.items():
        await parts.write_text(key, text)
    joined = FileRepository(tmp_path / "joined", ".txt")
    task = ProcessTask(
        "join",
        "cat {% for m in members %}{{ m.links.part.path }} {% endfor %}> {{ out.path }}",
        executor=LocalHost(workdir=tmp_path / "jobs"),
        inputs={"part": parts},
        outputs={"out": joined},
        group_by=first_part,
    )
    summary = await Pipeline([task]).run()
    assert summary.ok, summary.errors
    assert await joined.read_text("a") == "one\ntwo\n" and await joined.read_text("b") == "three\n"
    assert (await task.done.get("a"))["members"] == ["a.1", "a.2"]
