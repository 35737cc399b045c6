"""Changed data: versions in job records, stale keys, and redoing them (``rerun_stale``,
``on_change="rerun"``), on memory and file repositories, with two schedulers at once and
with a scheduler killed during a redo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pydatatask import AndRepository, FileRepository, MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.errors import ConfigurationError
from pydatatask.executor.base import Outcome
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.record_index import RecordFacts, RecordIndex
from pydatatask.pipeline.staleness import redo
from pydatatask.repository.base import BlobRepository
from pydatatask.task import FunctionTask, JobOutcome
from pydatatask.task.base import JobContext
from tests.counting import CountingBlobs

from .stale_pipeline import build as build_files_pipeline
from .stale_support import kill_when, runs, start

SCRIPT = Path(__file__).with_name("stale_pipeline.py")


class Stages:
    """Two stages: ``upper`` (src -> mid) then ``mark`` (mid -> out), noting every job."""

    def __init__(self, make: Callable[[str], BlobRepository], version: str | None = "1") -> None:
        self.src, self.mid, self.out = make("src"), make("mid"), make("out")
        self.calls: list[tuple[str, str]] = []

        async def upper(key: str, src: BlobRepository, mid: BlobRepository) -> None:
            self.calls.append(("upper", key))
            await mid.write_bytes(key, (await src.read_bytes(key)).upper())

        async def mark(key: str, mid: BlobRepository, out: BlobRepository) -> None:
            self.calls.append(("mark", key))
            await out.write_bytes(key, (await mid.read_bytes(key)) + b"!")

        self.upper = FunctionTask(
            "upper", upper, inputs={"src": self.src}, outputs={"mid": self.mid}, version=version
        )
        self.mark = FunctionTask("mark", mark, inputs={"mid": self.mid}, outputs={"out": self.out})
        self.pipeline = Pipeline([self.upper, self.mark])

    async def stale(self) -> dict[str, list[str]]:
        status = await self.pipeline.status()
        return {name: s["stale"] for name, s in status.items()}

    async def run(self, **kwargs: Any) -> list[tuple[str, str]]:
        """Run; return the jobs it ran."""
        self.calls.clear()
        summary = await self.pipeline.run(**kwargs)
        assert summary.ok, summary.as_dict()
        return sorted(self.calls)


@pytest.fixture(params=["memory", "files"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], BlobRepository]:
    if request.param == "memory":
        return lambda name: MemoryBlobRepository()
    return lambda name: FileRepository(tmp_path / name, ".txt")


async def fill(stages: Stages, values: dict[str, bytes]) -> None:
    for key, value in values.items():
        await stages.src.write_bytes(key, value)


async def test_records_store_the_versions_read_and_the_task_version(
    make: Callable[[str], BlobRepository],
) -> None:
    stages = Stages(make)
    await fill(stages, {"a": b"one", "b": b"two"})
    assert await stages.run() == [("mark", "a"), ("mark", "b"), ("upper", "a"), ("upper", "b")]
    src_versions, mid_versions = await stages.src.versions(), await stages.mid.versions()
    up = await stages.upper.done.get("a")
    assert up["version"] == "1"
    assert up["inputs"] == {"src": src_versions["a"]} and src_versions["a"] is not None
    assert "upstream" not in up  # nothing upstream of it
    assert "outputs" not in up  # it wrote its key to every output
    down = await stages.mark.done.get("a")
    assert down["version"] is None
    # "a" was put in mid by a job of the same run: known without a listing of files, so
    # its version is not (None: unknown, never compared); a repository in memory is asked
    # at every tick, and its version is known at once. The upstream record it read after
    # is named either way
    if isinstance(stages.mid, MemoryBlobRepository):
        assert down["inputs"] == {"mid": mid_versions["a"]}
    else:
        assert down["inputs"] == {"mid": None}
    assert mid_versions["a"] is not None
    assert down["upstream"] == {"mid": up["end_time"]}  # the upstream record it read after
    assert await stages.stale() == {"upper": [], "mark": []}
    # a middle value that a listing shows when its job starts: its version is stored
    await fill(stages, {"c": b"three"})
    assert await stages.run(tasks=["upper"]) == [("upper", "c")]
    assert await stages.run() == [("mark", "c")]
    mid_versions = await stages.mid.versions()
    down = await stages.mark.done.get("c")
    assert down["inputs"] == {"mid": mid_versions["c"]} and mid_versions["c"] is not None
    assert down["upstream"] == {"mid": (await stages.upper.done.get("c"))["end_time"]}
    assert await stages.stale() == {"upper": [], "mark": []}


async def test_a_changed_input_is_stale_and_only_rerun_stale_redoes_it_and_downstream(
    make: Callable[[str], BlobRepository],
) -> None:
    stages = Stages(make)
    await fill(stages, {"a": b"one", "b": b"two", "c": b"three"})
    await stages.run()
    old = await stages.upper.done.get("b")
    await stages.src.write_bytes("b", b"second")  # another length: a new version on every backend
    assert await stages.stale() == {"upper": ["b"], "mark": ["b"]}  # mark: stale upstream
    status = await stages.pipeline.status()
    (reason,) = status["upper"]["stale_details"]["b"]
    assert reason["kind"] == "input" and reason["link"] == "src"
    assert reason["old"] == old["inputs"]["src"] and reason["new"] == (await stages.src.versions())["b"]
    assert "b" in status["upper"]["succeeded"]  # still counted where its record says

    assert await stages.run() == []  # the default never recomputes
    assert await stages.stale() == {"upper": ["b"], "mark": ["b"]}  # mark: stale upstream

    assert await stages.run(rerun_stale=True) == [("mark", "b"), ("upper", "b")]
    assert await stages.out.read_bytes("b") == b"SECOND!"
    assert await stages.out.read_bytes("a") == b"ONE!"
    assert await stages.stale() == {"upper": [], "mark": []}
    assert await stages.run(rerun_stale=True) == []


async def test_a_new_task_version_redoes_every_key_once_then_downstream(
    make: Callable[[str], BlobRepository],
) -> None:
    stages = Stages(make)
    await fill(stages, {"a": b"one", "b": b"two"})
    await stages.run()
    stages.upper.version = "2"
    stale = await stages.pipeline.status()
    assert stale["upper"]["stale"] == ["a", "b"] and stale["mark"]["stale"] == ["a", "b"]
    assert stale["upper"]["stale_details"]["a"][0]["kind"] == "version"
    reasons = await stages.pipeline.why("upper", "a")
    assert "a job record exists (succeeded); `rm upper a` to run it again" in reasons
    assert reasons[-1] == "stale: the task version changed: 1 -> 2; `run --rerun-stale` redoes it"
    assert await stages.run(rerun_stale=True) == [
        ("mark", "a"),
        ("mark", "b"),
        ("upper", "a"),
        ("upper", "b"),
    ]
    assert (await stages.upper.done.get("a"))["version"] == "2"
    assert await stages.stale() == {"upper": [], "mark": []}


async def test_a_gone_output_is_stale_and_only_its_key_is_redone(
    make: Callable[[str], BlobRepository],
) -> None:
    stages = Stages(make)
    await fill(stages, {"a": b"one", "b": b"two"})
    await stages.run()
    await stages.out.delete("a")
    assert await stages.stale() == {"upper": [], "mark": ["a"]}
    reasons = await stages.pipeline.why("mark", "a")
    assert any("output 'out'" in r and "no longer has 'a'" in r for r in reasons), reasons
    assert await stages.run() == []
    assert await stages.run(rerun_stale=True) == [("mark", "a")]
    assert await stages.out.read_bytes("a") == b"ONE!"
    assert await stages.stale() == {"upper": [], "mark": []}


async def test_on_change_rerun_redoes_that_task_without_the_flag(
    make: Callable[[str], BlobRepository],
) -> None:
    stages = Stages(make)
    stages.upper.on_change = "rerun"
    await fill(stages, {"a": b"one"})
    # one stage after the other: mark's record has the version of the middle value it read
    # (a run of both learns it from upper's job, without a listing: then no version)
    await stages.run(tasks=["upper"])
    await stages.run()
    await stages.src.write_bytes("a", b"uno!")
    assert await stages.run() == [("upper", "a")]
    # the downstream task keeps its default: stale (its upstream was redone), not redone
    status = await stages.pipeline.status()
    assert status["mark"]["stale"] == ["a"]
    assert {r["kind"] for r in status["mark"]["stale_details"]["a"]} == {"input", "upstream"}
    assert await stages.out.read_bytes("a") == b"ONE!"
    assert await stages.run(rerun_stale=True) == [("mark", "a")]
    assert await stages.out.read_bytes("a") == b"UNO!!"


def test_on_change_and_version_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="on_change must be one of 'keep', 'rerun', got 'always'"):
        FunctionTask("t", lambda key: None, on_change="always")
    with pytest.raises(ConfigurationError, match="version must be a string"):
        FunctionTask("t", lambda key: None, version=2)  # type: ignore[arg-type]


class Unversioned(MemoryBlobRepository):
    """A backend that cannot tell versions (the base class's default)."""

    async def _list_versions(self) -> dict[str, str | None]:
        return dict.fromkeys(await self.keys())


async def test_unknown_versions_never_make_a_key_stale_but_a_redone_upstream_does() -> None:
    stages = Stages(lambda name: Unversioned())
    await fill(stages, {"a": b"one"})
    await stages.run()
    assert (await stages.upper.done.get("a"))["inputs"] == {"src": None}
    await stages.src.write_bytes("a", b"other")
    assert await stages.stale() == {"upper": [], "mark": []}  # None: unknown, not changed
    stages.upper.version = "2"
    assert await stages.run(rerun_stale=True) == [("mark", "a"), ("upper", "a")]
    assert await stages.out.read_bytes("a") == b"OTHER!"


async def test_one_listing_per_repository_per_tick_serves_keys_and_versions() -> None:
    repos: dict[str, CountingBlobs] = {}

    def make(name: str) -> CountingBlobs:
        repos[name] = CountingBlobs()
        return repos[name]

    stages = Stages(make)
    await fill(stages, {"a": b"one"})
    await stages.pipeline.figures(full=False)
    # "mid" is an output of one task and the input of the other: listed once, with versions
    assert {name: r.listings for name, r in repos.items()} == {"src": 1, "mid": 1, "out": 1}
    await stages.pipeline.status()
    assert {name: r.listings for name, r in repos.items()} == {"src": 2, "mid": 2, "out": 2}


# ---------------------------------------------------------------- two schedulers, a kill
def _write_sources(data: Path, values: dict[str, str]) -> None:
    (data / "src").mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (data / "src" / f"{key}.txt").write_text(value)


def test_two_schedulers_rerun_stale_redo_each_key_exactly_once(tmp_path: Path) -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    _write_sources(tmp_path, {k: f"v-{k}" for k in keys})
    assert build_files_pipeline(tmp_path).run_sync().ok
    changed = keys[::2]
    _write_sources(tmp_path, {k: f"changed-{k}" for k in changed})
    before = len(runs(tmp_path))
    procs = [start(SCRIPT, tmp_path, "--rerun-stale") for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["ok"], out
    redone = runs(tmp_path)[before:]
    assert sorted(redone) == sorted([("upper", k) for k in changed] + [("mark", k) for k in changed])
    for k in keys:
        expected = (f"changed-{k}" if k in changed else f"v-{k}").upper() + "!"
        assert (tmp_path / "out" / f"{k}.txt").read_text() == expected
    status = asyncio.run(build_files_pipeline(tmp_path).status())
    assert status["upper"]["stale"] == [] and status["mark"]["stale"] == []
    assert not list((tmp_path / "state" / "upper" / "live").glob("*.yaml"))


def test_a_scheduler_killed_during_a_redo_leaves_the_key_to_be_done_again(tmp_path: Path) -> None:
    _write_sources(tmp_path, {"k1": "one", "k2": "two"})
    assert build_files_pipeline(tmp_path).run_sync().ok
    _write_sources(tmp_path, {"k1": "uno"})
    hold = tmp_path / "hold-k1"
    hold.touch()
    before = len(runs(tmp_path))
    proc = start(SCRIPT, tmp_path, "--rerun-stale")
    kill_when(proc, tmp_path, before, ("upper", "k1"), "the redo of k1 never started")
    hold.unlink()
    record, output = tmp_path / "state" / "upper" / "done" / "k1.yaml", tmp_path / "mid" / "k1.txt"
    # the record went first: never a success record beside a missing output
    assert not record.exists() and not output.exists()
    # a plain run takes the dead scheduler's claim over and does the job again ...
    assert build_files_pipeline(tmp_path).run_sync().ok
    assert output.read_text() == "UNO"
    # ... which makes the downstream key stale, redone when asked
    pipeline = build_files_pipeline(tmp_path)
    assert asyncio.run(pipeline.status())["mark"]["stale"] == ["k1"]
    assert build_files_pipeline(tmp_path).run_sync(rerun_stale=True).ok
    assert (tmp_path / "out" / "k1.txt").read_text() == "UNO!"
    assert (tmp_path / "out" / "k2.txt").read_text() == "TWO!"
    redone = runs(tmp_path)[before:]
    assert redone.count(("upper", "k2")) == 0 and redone.count(("mark", "k2")) == 0


def test_a_scheduler_killed_between_removing_the_record_and_the_outputs(tmp_path: Path) -> None:
    """The record goes first: a scheduler killed before the old outputs are removed leaves
    the key without a record and a claim; the next run's claim recovery removes the old
    outputs and the key is done again (never read as done with its old outputs)."""
    _write_sources(tmp_path, {"k1": "one"})
    assert build_files_pipeline(tmp_path).run_sync().ok
    _write_sources(tmp_path, {"k1": "uno"})
    hold = tmp_path / "hold-rm-k1"
    hold.touch()
    before = len(runs(tmp_path))
    proc = start(SCRIPT, tmp_path, "--rerun-stale")
    kill_when(proc, tmp_path, before, ("rm", "k1"), "the redo of k1 never removed its old output")
    hold.unlink()
    state = tmp_path / "state" / "upper"
    assert not (state / "done" / "k1.yaml").exists()  # the record went first
    assert (tmp_path / "mid" / "k1.txt").read_text() == "ONE"  # the old output, no record
    assert (state / "live" / "k1.yaml").exists()  # the dead scheduler's claim
    status = asyncio.run(build_files_pipeline(tmp_path).status())
    assert "k1" not in status["upper"]["succeeded"] and status["upper"]["running"] == ["k1"]
    assert build_files_pipeline(tmp_path).run_sync().ok  # recovery, then the job
    assert (tmp_path / "mid" / "k1.txt").read_text() == "UNO"
    assert ("upper", "k1") in runs(tmp_path)[before:]
    assert not (state / "live" / "k1.yaml").exists()


async def test_a_key_redone_by_another_scheduler_meanwhile_is_not_redone_again(tmp_path: Path) -> None:
    """The record judged stale is checked under the claim: a scheduler that judged from
    the record another scheduler has replaced since leaves the key alone."""
    _write_sources(tmp_path, {"k1": "one"})
    late = build_files_pipeline(tmp_path)
    assert (await late.run()).ok
    task = late.task("upper")
    judged = RecordFacts(await task.done.get("k1"))  # what a slow scheduler saw
    _write_sources(tmp_path, {"k1": "uno"})
    assert (await build_files_pipeline(tmp_path).run(rerun_stale=True)).ok  # another redoes it
    new = await task.done.get("k1")
    assert new["end_time"] != judged.end_time
    before = len(runs(tmp_path))
    index = RecordIndex(task.done)
    async with late:
        assert await redo(task, "k1", judged=judged, index=index, owner="late") is None
    assert runs(tmp_path)[before:] == []
    assert await task.done.get("k1") == new and index.facts("k1").end_time == new["end_time"]  # type: ignore[union-attr]
    assert not await task.live.contains("k1")  # the claim was given back


async def test_state_in_memory_records_the_versions_too() -> None:
    src = MemoryMetadataRepository({"a": 1})
    out = MemoryMetadataRepository()

    async def inc(key: str, src: MemoryMetadataRepository, out: MemoryMetadataRepository) -> None:
        await out.put(key, await src.get(key) + 1)

    task = FunctionTask("inc", inc, inputs={"src": src}, outputs={"out": out})
    pipeline = Pipeline([task])
    assert (await pipeline.run()).ok
    assert (await task.done.get("a"))["inputs"] == {"src": (await src.versions())["a"]}
    await src.put("a", 5)
    assert (await pipeline.status())["inc"]["stale"] == ["a"]
    assert (await pipeline.run(rerun_stale=True)).succeeded == 1
    assert await out.get("a") == 6


async def test_an_output_the_job_did_not_write_is_not_missing() -> None:
    src, x, y = MemoryBlobRepository({"a": b"1", "b": b"2"}), MemoryBlobRepository(), MemoryBlobRepository()

    async def only_x(key: str, src: BlobRepository, x: BlobRepository, y: BlobRepository) -> None:
        await x.write_bytes(key, await src.read_bytes(key))

    task = FunctionTask("only_x", only_x, inputs={"src": src}, outputs={"x": x, "y": y})
    pipeline = Pipeline([task])
    assert (await pipeline.run()).succeeded == 2
    assert (await task.done.get("a"))["outputs"] == ["x"]
    assert (await pipeline.status())["only_x"]["stale"] == []
    await x.delete("b")
    status = await pipeline.status()
    assert status["only_x"]["stale"] == ["b"]
    assert status["only_x"]["stale_details"]["b"][0]["link"] == "x"


async def test_a_view_input_lists_its_children_once_per_tick_with_versions() -> None:
    a, b, out = CountingBlobs(), CountingBlobs(), MemoryBlobRepository()
    await a.write_bytes("x", b"1")
    await b.write_bytes("x", b"2")

    async def f(key: str, both: BlobRepository, out: BlobRepository) -> None:
        await out.write_bytes(key, await both.read_bytes(key))

    task = FunctionTask("t", f, inputs={"both": AndRepository(a, b)}, outputs={"out": out})
    pipeline = Pipeline([task])
    await pipeline.figures(full=False)
    assert (a.listings, b.listings) == (1, 1)
    assert (await pipeline.run()).succeeded == 1
    assert (await task.done.get("x"))["inputs"] == {"both": (await a.versions())["x"]}
    await a.write_bytes("x", b"3")
    assert (await pipeline.status())["t"]["stale"] == ["x"]


class GroupTask(FunctionTask):
    """Notes every key of its input in the record and calls a key stale when that set has
    changed: the extension point a task reading a group of keys uses."""

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome | None:
        done = await super().finish(job, outcome) or JobOutcome()
        done.extra["members"] = sorted(await self.links["src"].repository.keys())
        return done

    def stale_facts(self, record: Mapping[str, Any]) -> Any:
        return frozenset(record.get("members") or ())

    def stale_reasons(
        self, key: str, facts: Any, inputs: Mapping[str, Mapping[str, str | None]]
    ) -> list[str]:
        now = frozenset(inputs["src"])
        return [] if now == facts else [f"the group changed: {sorted(facts)} -> {sorted(now)}"]


async def test_a_task_can_give_stale_reasons_of_its_own() -> None:
    src, out = MemoryBlobRepository({"a": b"1", "b": b"2"}), MemoryBlobRepository()

    async def members(key: str, src: BlobRepository, out: BlobRepository) -> None:
        await out.write_bytes(key, b"")

    task = GroupTask("group", members, inputs={"src": src}, outputs={"out": out})
    pipeline = Pipeline([task])
    assert (await pipeline.run()).succeeded == 2
    assert (await pipeline.status())["group"]["stale"] == []
    await src.write_bytes("c", b"3")
    status = await pipeline.status()
    assert status["group"]["stale"] == ["a", "b"]  # c has no record: it is ready, not stale
    assert status["group"]["stale_details"]["a"] == [
        {
            "kind": "task",
            "message": "the group changed: ['a', 'b'] -> ['a', 'b', 'c']",
            "link": None,
            "old": None,
            "new": None,
        }
    ]
    summary = await pipeline.run(rerun_stale=True)
    assert summary.succeeded == 3
    assert (await pipeline.status())["group"]["stale"] == []
