"""What a scheduler keeps per key-job and does per tick over many keys: the ready queue
merged with the last tick's, the outcomes of the records kept as sets, and only the
facts of records some tick reads."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.record_index import RecordIndex
from pydatatask.pipeline.scheduler import _requeue
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask


def test_the_queue_of_a_tick_is_the_ready_keys_sorted_whatever_the_queue_before() -> None:
    rng = random.Random(7)
    keys = [f"k{i:05d}" for i in range(5000)]
    for _ in range(20):
        ready = set(rng.sample(keys, rng.randrange(1000, 5000)))
        before = sorted(rng.sample(keys, rng.randrange(0, 5000)), reverse=True)
        if rng.random() < 0.5:  # adopted work in front (at the end), out of order
            before += sorted(rng.sample(keys, 20), reverse=True)
            before = list(dict.fromkeys(before))
        if rng.random() < 0.2:
            before += before[:10]  # a key queued twice
        assert _requeue(before, ready) == sorted(ready, reverse=True)
    assert _requeue([], {"b", "a"}) == ["b", "a"]


def test_succeeded_is_handed_out_once_and_never_changes_under_its_holder() -> None:
    index = RecordIndex(MemoryMetadataRepository())
    for i in range(3):
        index.note(f"k{i}", {"success": True, "end_time": f"t{i}"})
    index.note("bad", {"success": False})
    first = index.succeeded()
    assert first == {"k0", "k1", "k2"} and index.failed() == {"bad"}
    assert index.succeeded() is first  # no new set of every key per tick
    index.note("k3", {"success": True})
    index.note("bad", {"success": True})  # redone
    index.forget("k0")
    assert first == {"k0", "k1", "k2"}
    assert index.succeeded() == {"k1", "k2", "k3", "bad"} and index.failed() == set()
    index.sync({"k1", "bad"})
    assert index.succeeded() == {"k1", "bad"}


async def copy(key: str, src: Any, dst: Any) -> None:
    await dst.write_bytes(key, await src.read_bytes(key))


async def test_a_run_keeps_the_facts_of_its_records_only_for_tasks_that_look_for_stale_keys() -> None:
    src = MemoryBlobRepository({f"k{i}": b"x" for i in range(50)})
    mid, out = MemoryBlobRepository(), MemoryBlobRepository()
    a = FunctionTask("a", copy, inputs={"src": src}, outputs={"dst": mid})
    b = FunctionTask("b", copy, inputs={"src": mid}, outputs={"dst": out})
    pipeline = Pipeline([a, b])
    assert (await pipeline.run()).succeeded == 100
    index = pipeline.scheduler.records["a"]
    # what b's records named of a's: the end time of a's record, kept without the rest
    record_b = await b.done.get("k7")
    assert record_b["upstream"]["src"] == index.stamp("k7") == (await a.done.get("k7"))["end_time"]
    assert index.facts("k7") is None and index.recorded() == []
    # a run that redoes stale keys keeps them, and a later run finds the change
    await src.write_bytes("k7", b"changed")
    again = Pipeline([a, b])
    summary = await again.run(rerun_stale=True)
    assert summary.succeeded == 2, summary  # k7 in a, then in b
    facts = again.scheduler.records["a"].facts("k7")
    assert facts is not None and facts.success and facts.inputs
    assert await out.read_bytes("k7") == b"changed"


async def test_workers_of_jobs_that_never_suspend_give_the_event_loop_turns() -> None:
    # in-memory jobs never suspend: without turns given, one worker ran its whole queue
    # while nothing else on the loop (a served page, heartbeats) could run
    done = 0
    gaps: list[int] = []

    async def work(key: str, src: MetadataRepository, out: MetadataRepository) -> None:
        nonlocal done
        await out.put(key, await src.get(key))
        done += 1

    stop = asyncio.Event()

    async def probe() -> None:
        seen = 0
        while not stop.is_set():
            await asyncio.sleep(0)
            gaps.append(done - seen)
            seen = done

    src = MemoryMetadataRepository({f"k{i:05d}": i for i in range(6000)})
    out = MemoryMetadataRepository()
    task = FunctionTask("work", work, inputs={"src": src}, outputs={"out": out}, concurrency=2)
    watcher = asyncio.ensure_future(probe())
    try:
        summary = await Pipeline([task]).run()
    finally:
        stop.set()
        await watcher
    assert summary.ok and summary.succeeded == 6000
    assert max(gaps) <= 2 * 256 + 2, max(gaps)  # two workers, a turn every 256 jobs at most
