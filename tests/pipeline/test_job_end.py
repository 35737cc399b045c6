"""The end of a job, as the scheduler notes it: what the known listings learn and what
the records index keeps take a shorter path for the common case (a success that names no
children and wrote nothing beyond its key, outside a tick); every other case takes the
general one. Both must leave the same state (see pydatatask/pipeline/known.py and
record_index.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.pipeline.known import KnownListings
from pydatatask.pipeline.record_index import RecordIndex
from pydatatask.repository.base import Repository
from pydatatask.repository.combinators import OrRepository
from pydatatask.task import FunctionTask


async def _noop(key: str, **_: Any) -> None:
    return None


class _Listed(MemoryBlobRepository):
    """Blobs whose listings the scheduler learns, as it does a store's elsewhere (a
    repository in memory that lists what it stores is asked at every tick instead)."""

    async def keys(self) -> set[str]:
        return set(self._data)


class _ListedRecords(MemoryMetadataRepository):
    """Records whose listings are learnt (see :class:`_Listed`)."""

    async def keys(self) -> set[str]:
        return set(self._data)


def _task(**outputs: Repository) -> FunctionTask:
    src = MemoryBlobRepository({"a": b"1", "b": b"2"})
    return FunctionTask(
        "t", _noop, inputs={"src": src}, outputs=outputs, done=_ListedRecords(), live=_ListedRecords()
    )


def _listed(task: FunctionTask) -> KnownListings:
    """Known listings of ``task``'s repositories, each listed empty (as a first tick over
    an empty state would)."""
    known = KnownListings([task])
    for entry in known._known.values():
        entry.listed(set(), 0.0)
    return known


def _state(known: KnownListings, task: FunctionTask) -> dict[str, Any]:
    repos: dict[str, Repository] = {"done": task.done, "live": task.live}
    repos.update({link.name: link.repository for link in task.output_links})
    out: dict[str, Any] = {}
    for name, repo in repos.items():
        entry = known._known.get(id(repo))
        if entry is not None:
            out[name] = (sorted(entry.current()), entry.changed_at > 0)
    return out


def _ended(task: FunctionTask, record: dict[str, Any], *, in_tick: bool) -> dict[str, Any]:
    known = _listed(task)
    for entry in known._known.values():
        if entry.repo is task.live:
            entry.listed({"a"}, 0.0)
    if in_tick:
        known._during = {}  # a tick computes: the general path
    known.job_ended(task, "a", record)
    assert known._end_plans["t"].fast is not None  # the task's plan has the short path
    return _state(known, task)


RECORDS = {
    "success": {"success": True},
    "success naming one output": {"success": True, "outputs": ["x"]},
    "success naming none": {"success": True, "outputs": []},
    "failure": {"success": False},
    "wrote beyond its key": {"success": True, "wrote": True},
}


@pytest.mark.parametrize("which", sorted(RECORDS))
def test_a_job_end_learns_the_same_on_the_short_path_as_on_the_general_one(which: str) -> None:
    record = RECORDS[which]
    fast = _ended(_task(x=_Listed(), y=_Listed()), record, in_tick=False)
    general = _ended(_task(x=_Listed(), y=_Listed()), record, in_tick=True)
    assert fast == general
    assert fast["done"] == (["a"], False) and fast["live"] == ([], False)
    if which == "success":
        assert fast["x"] == fast["y"] == (["a"], False)
    if which == "success naming one output":
        assert fast["x"] == (["a"], False) and fast["y"] == ([], False)
    if which == "success naming none":
        assert fast["x"] == fast["y"] == ([], False)
    if which in ("failure", "wrote beyond its key"):
        assert fast["x"][1] and fast["y"][1]  # listed again at the next tick


def test_an_output_view_takes_the_general_path_and_has_its_children_listed_again() -> None:
    left, right = _Listed(), _Listed()
    task = _task(x=OrRepository(left, right))
    known = _listed(task)
    known.job_ended(task, "a", {"success": True})
    assert known._end_plans["t"].fast is None
    assert known._known[id(task.done)].current() == {"a"}
    # a view's keys are worked out through its children: relisted, not learnt
    assert all(known._known[id(r)].changed_at > 0 for r in (left, right) if id(r) in known._known)


def test_the_plan_of_a_task_is_made_again_when_its_links_change() -> None:
    out = _Listed()
    task = _task(x=out)
    known = _listed(task)
    known.job_ended(task, "a", {"success": True})
    first = known._end_plans["t"]
    assert first.fast is not None
    task.link("extra", _Listed(), "output")
    known.job_ended(task, "b", {"success": True})
    second = known._end_plans["t"]
    assert second is not first and second.links == first.links + 1
    assert second.fast is None  # the new output has no listing here: the general path
    assert known._known[id(out)].current() == {"a", "b"}


def _index_state(index: RecordIndex) -> tuple[Any, ...]:
    return (
        dict(index.success),
        index.succeeded(),
        index.failed(),
        dict(index._kept),
        dict(index._ends),
        dict(index.children),
        dict(index.corrupt),
    )


@pytest.mark.parametrize("facts", [True, False])
def test_the_records_index_keeps_the_same_from_a_noted_success_as_from_a_read_one(facts: bool) -> None:
    records = [
        ("a", {"success": False, "end_time": "2026-12-01T00:00:00Z", "error": {"type": "X"}}),
        ("a", {"success": True, "end_time": "2026-12-01T00:00:01Z", "versions": {"src": "1"}}),
        ("b", {"success": True, "children": {"x": ["b/1", "b/2"]}}),
        ("b", {"success": True, "end_time": "2026-12-01T00:00:02Z"}),  # a redo lists none
        ("c", {"success": True}),
    ]
    noted, taken = RecordIndex(MemoryMetadataRepository()), RecordIndex(MemoryMetadataRepository())
    noted.noted_facts = taken.noted_facts = facts
    handed = noted.succeeded()
    for key, record in records:
        noted.note(key, record)
        taken._take(key, record, facts=facts)
        assert _index_state(noted) == _index_state(taken), (key, record)
    assert noted.succeeded() == {"a", "b", "c"} and noted.failed() == set()
    assert handed == set()  # a set handed out earlier is not changed under its holder
    assert "b" not in noted.children


async def _upper_but_b(key: str, src: MemoryBlobRepository, dst: MemoryBlobRepository) -> None:
    if key == "b":
        raise ValueError("no b")
    await dst.write_bytes(key, (await src.read_bytes(key)).upper())


async def test_a_run_counts_successes_and_failures_everywhere_they_are_shown() -> None:
    from pydatatask.pipeline import Pipeline

    src = MemoryBlobRepository({"a": b"x", "b": b"y", "c": b"z"})
    mid, out = MemoryBlobRepository(), MemoryBlobRepository()
    first = FunctionTask("first", _upper_but_b, inputs={"src": src}, outputs={"dst": mid})
    second = FunctionTask("second", _upper_but_b, inputs={"src": mid}, outputs={"dst": out})
    pipeline = Pipeline([first, second])
    summary = await pipeline.run()
    assert (summary.succeeded, summary.failed) == (4, 1)
    assert summary.per_task["first"]["succeeded"] == 2 and summary.per_task["first"]["failed"] == 1
    assert summary.per_task["second"]["succeeded"] == 2 and summary.per_task["second"]["failed"] == 0
    scheduler = pipeline.scheduler
    assert scheduler.metrics.done("first") == (2, 1) and scheduler.metrics.done("second") == (2, 0)
    assert scheduler.records["first"].succeeded() == {"a", "c"}
    assert scheduler.records["first"].failed() == {"b"}
    assert scheduler.records["second"].succeeded() == {"a", "c"}
    assert await out.read_bytes("a") == b"X" and sorted([k async for k in out]) == ["a", "c"]
    assert scheduler.states == {} and scheduler.running == {}
    durations = scheduler.metrics.tasks["first"].durations
    recorded = await first.done.get_many(["a", "b", "c"])
    assert durations.count == sum(durations.counts) == 3
    assert durations.sum == pytest.approx(sum(r["duration"] for r in recorded.values()))


def test_the_records_index_of_a_memory_done_reads_end_times_where_the_records_are() -> None:
    from pydatatask.task.records import make_record

    done = MemoryMetadataRepository()
    index = RecordIndex(done)
    index.noted_facts = False
    records = {
        f"k{i}": make_record(
            task="t",
            key=f"k{i}",
            success=i != 3,
            attempts=1,
            start=1e9 + i,
            end=1e9 + i + 0.5,
            runner="in-process",
        )
        for i in range(6)
    }
    for key, record in records.items():
        done.put_now(key, record)
        index.note(key, record)
    index.sync({*records})
    assert index._ends == {}  # no copy of what the store holds
    assert dict(index.success) == {k: r["success"] for k, r in records.items()}
    assert index.success.get("k3") is False and index.success.get("nope") is None and "k3" in index.success
    for key, record in records.items():
        assert index.stamp(key) == (record["end_time"] if record["success"] else None)
    index.sync({"k0", "k1"})  # the others' records are gone
    assert dict(index.success) == {"k0": True, "k1": True} and index.stamp("k2") is None
    # a done kept elsewhere: the index keeps the end times itself
    other = RecordIndex(OrRepository(MemoryMetadataRepository(), MemoryMetadataRepository()))
    other.noted_facts = False
    other.note("k0", records["k0"])
    other.sync({"k0"})
    assert other.stamp("k0") == records["k0"]["end_time"] and other._ends == {"k0": records["k0"]["end_time"]}


class _SlowListing(MemoryMetadataRepository):
    """A memory ``done`` whose listing gives the loop a turn after taking its keys, as a
    listing that waits for a server does: a job may end and be recorded meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = asyncio.Event()
        self.go_on = asyncio.Event()

    async def keys(self) -> set[str]:
        keys = set(await super().keys())
        self.listed.set()
        await self.go_on.wait()
        return keys


async def test_a_record_noted_while_a_listing_of_done_runs_stays_in_the_records_index() -> None:
    from pydatatask.pipeline import Pipeline
    from pydatatask.pipeline.scheduler import compute_figures, record_indexes

    done = _SlowListing()
    src, dst = MemoryBlobRepository({"a": b"x"}), MemoryBlobRepository()
    task = FunctionTask("t", _upper_but_b, inputs={"src": src}, outputs={"dst": dst}, done=done)
    pipeline = Pipeline([task])
    records = record_indexes(pipeline.tasks)
    figures = asyncio.create_task(compute_figures(pipeline.tasks, pipeline, records))
    await asyncio.wait_for(done.listed.wait(), 10)
    # the job of "a" ends now: its record is written, then the scheduler notes it
    record = {"task": "t", "key": "a", "state": "succeeded", "success": True, "attempts": 1}
    await done.put("a", record)
    records["t"].note("a", record)
    done.go_on.set()
    await figures
    assert records["t"].succeeded() == {"a"}
