"""Fan-out outputs: children of the job key, gated downstream on the parent's success record
(also across scheduler processes and after a kill), replaced as a whole by a rerun."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pydatatask import FileRepository, MemoryMetadataRepository, YamlMetadataFileRepository
from pydatatask.errors import ConfigurationError
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository, MetadataRepository
from pydatatask.task import FanOut, FunctionTask

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


async def test_children_run_downstream_once_and_the_record_lists_them() -> None:
    src = MemoryMetadataRepository({"A": 3, "B": 2})
    pages = MemoryMetadataRepository()
    out = MemoryMetadataRepository()
    seen: list[str] = []

    async def split(key: str, src: MetadataRepository, pages: MetadataRepository) -> None:
        for i in range(1, await src.get(key) + 1):
            await pages.put(f"{key}.page-{i}", i)

    async def double(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        seen.append(key)
        await out.put(key, 2 * await pages.get(key))

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
    b = FunctionTask("double", double, inputs={"pages": pages}, outputs={"out": out})
    summary = await Pipeline([a, b]).run()
    assert summary.ok and summary.succeeded == 7
    assert sorted(seen) == ["A.page-1", "A.page-2", "A.page-3", "B.page-1", "B.page-2"]
    assert await out.get("A.page-3") == 6
    record = await a.done.get("A")
    assert record["children"] == {"pages": ["A.page-1", "A.page-2", "A.page-3"]}
    assert "wrote" not in record  # the children are listed once


async def test_a_key_that_is_not_a_child_fails_the_attempt_and_leaves_nothing() -> None:
    src = MemoryMetadataRepository({"A": 1})
    pages = MemoryMetadataRepository()

    async def split(key: str, pages: MetadataRepository) -> None:
        await pages.put(f"{key}.page-1", 1)
        await pages.put("elsewhere", 2)

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
    summary = await Pipeline([a]).run()
    assert summary.failed == 1
    error = (await a.done.get("A"))["error"]
    assert "wrote 'elsewhere' to its fan-out output 'pages'" in error["message"]
    assert await pages.keys() == set()


async def test_a_rerun_replaces_the_whole_set_of_children(tmp_path: Path) -> None:
    src = YamlMetadataFileRepository(tmp_path / "src")
    await src.put("A", 3)
    pages = YamlMetadataFileRepository(tmp_path / "pages")
    out = YamlMetadataFileRepository(tmp_path / "out")

    async def split(key: str, src: MetadataRepository, pages: MetadataRepository) -> None:
        n = await src.get(key)
        for i in range(1, n + 1):
            await pages.put(f"{key}.run{n}-{i}", i)

    async def copy(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, await pages.get(key))

    def build() -> Pipeline:
        a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
        b = FunctionTask("copy", copy, inputs={"pages": pages}, outputs={"out": out})
        return Pipeline([a, b], state_dir=tmp_path / "state")

    assert (await build().run()).succeeded == 4
    assert await pages.keys() == {"A.run3-1", "A.run3-2", "A.run3-3"}
    await src.put("A", 2)
    pipeline = build()
    await pipeline.remove("split", ["A"])
    summary = await pipeline.run()
    assert summary.ok and summary.per_task["split"]["succeeded"] == 1
    assert await pages.keys() == {"A.run2-1", "A.run2-2"}  # nothing of the first run is left
    assert summary.per_task["copy"]["succeeded"] == 2
    assert (await pipeline.tasks["split"].done.get("A"))["children"] == {"pages": ["A.run2-1", "A.run2-2"]}


async def test_a_child_no_job_wrote_is_not_consumed_and_why_says_so() -> None:
    src = MemoryMetadataRepository({"A": 1})
    pages = MemoryMetadataRepository({"A.stray": 0, "Z.orphan": 0})
    out = MemoryMetadataRepository()

    async def split(key: str, pages: MetadataRepository) -> None:
        await pages.put(f"{key}.page-1", 1)

    async def copy(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, await pages.get(key))

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
    b = FunctionTask("copy", copy, inputs={"pages": pages}, outputs={"out": out})
    pipeline = Pipeline([a, b])
    status = await pipeline.status()
    assert status["copy"]["ready"] == [] and status["copy"]["blocked"] == ["A.stray", "Z.orphan"]
    assert "no success record of upstream task 'split' (not finished)" in " ".join(
        await pipeline.why("copy", "A.stray")
    )
    # the parent's run removes what was left under it before it writes its children
    summary = await pipeline.run()
    assert summary.ok
    assert await out.keys() == {"A.page-1"}
    assert await pages.keys() == {"A.page-1", "Z.orphan"}
    assert "no job of 'split' wrote it" in " ".join(await pipeline.why("copy", "Z.orphan"))


def test_fan_out_refuses_a_separator_outside_the_key_alphabet() -> None:
    with pytest.raises(ConfigurationError, match="separator ':' must be one of"):
        FanOut(MemoryMetadataRepository(), ":")


# ---------------------------------------------------------------- two processes
PARENT_SCHEDULER = """
import asyncio, sys
from pathlib import Path
from pydatatask import FileRepository, YamlMetadataFileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FanOut, FunctionTask

root = Path(sys.argv[1])
mode = sys.argv[2]

async def split(key, pages):
    await pages.write_bytes(key + ".page-1", b"1")
    await pages.write_bytes(key + ".page-2", b"2")
    (root / "written").write_text("yes")
    if mode == "kill":
        await asyncio.sleep(60)
    while not (root / "release").exists():
        await asyncio.sleep(0.02)
    await pages.write_bytes(key + ".page-3", b"3")

task = FunctionTask(
    "split", split, inputs={"src": YamlMetadataFileRepository(root / "src")},
    outputs={"pages": FanOut(FileRepository(root / "pages"), ".")},
)
asyncio.run(Pipeline([task], state_dir=root / "state").run())
"""


def _start_parent(tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT_SCHEDULER))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode], env=_env())
    deadline = time.monotonic() + 30
    while not (tmp_path / "written").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "written").exists(), "the parent scheduler never wrote its children"
    return proc


def _pipeline(tmp_path: Path, consumed: list[str], split_writes: int = 3) -> Pipeline:
    src = YamlMetadataFileRepository(tmp_path / "src")
    pages = FileRepository(tmp_path / "pages")
    out = FileRepository(tmp_path / "out")
    done = YamlMetadataFileRepository(tmp_path / "state" / "split" / "done")

    async def split(key: str, pages: BlobRepository) -> None:
        for i in range(1, split_writes + 1):
            await pages.write_bytes(f"{key}.page-{i}", str(i).encode())

    async def consume(key: str, pages: BlobRepository, out: BlobRepository) -> None:
        parent = key.split(".")[0]
        # the parent's success record exists before any child is consumed
        record = await done.get(parent)
        assert record["success"] is True, record
        consumed.append(key)
        await out.write_bytes(key, await pages.read_bytes(key))

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
    b = FunctionTask("consume", consume, inputs={"pages": pages}, outputs={"out": out})
    return Pipeline([a, b], state_dir=tmp_path / "state", claim_check_interval="0s")


async def test_children_of_a_parent_running_in_another_scheduler_wait_for_its_record(
    tmp_path: Path,
) -> None:
    await YamlMetadataFileRepository(tmp_path / "src").put("A", 1)
    proc = await asyncio.to_thread(_start_parent, tmp_path, "release")
    try:
        consumed: list[str] = []
        pipeline = _pipeline(tmp_path, consumed)
        assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == ["A.page-1", "A.page-2"]
        summary = await pipeline.run(tasks=["consume"])
        assert summary.ok and consumed == []
        status = await pipeline.status()
        assert status["consume"]["blocked"] == ["A.page-1", "A.page-2"]
        assert status["split"]["running"] == ["A"]
        (tmp_path / "release").write_text("go")
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = await _pipeline(tmp_path, consumed).run(tasks=["consume"])
    assert summary.ok and sorted(consumed) == ["A.page-1", "A.page-2", "A.page-3"]


async def test_a_parent_killed_midway_leaves_no_child_and_the_rerun_makes_each_once(tmp_path: Path) -> None:
    src = YamlMetadataFileRepository(tmp_path / "src")
    await src.put("A", 1)
    await src.put("B", 1)
    proc = await asyncio.to_thread(_start_parent, tmp_path, "kill")
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    # children of A or B (or both) are on disk, with no success record: not ready
    on_disk = {p.name for p in (tmp_path / "pages").iterdir() if not p.name.startswith(".")}
    assert {"A.page-1", "A.page-2"} <= on_disk or {"B.page-1", "B.page-2"} <= on_disk
    consumed: list[str] = []
    pipeline = _pipeline(tmp_path, consumed)
    claims = await pipeline.tasks["split"].live.get_many(await pipeline.tasks["split"].live.keys())
    assert claims and all("wrote" not in claim for claim in claims.values())  # no update per child
    figures = await pipeline.figures()
    assert figures["consume"].ready == set()
    # the rerun recovers the dead claim (its children go), then runs each parent once
    summary = await pipeline.run()
    assert summary.ok, summary.errors
    children = [f"{k}.page-{i}" for k in "AB" for i in (1, 2, 3)]
    assert sorted(consumed) == children  # each child once
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == children
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == children
    assert [p for p in (tmp_path / "state" / "split" / "live").iterdir() if not p.name.startswith(".")] == []
    for key in "AB":
        record = await pipeline.tasks["split"].done.get(key)
        assert record["attempts"] == 1 and record["children"]["pages"] == [
            f"{key}.page-{i}" for i in (1, 2, 3)
        ]


async def test_rm_of_a_parent_removes_its_children_and_cascades_to_them_and_their_groups() -> None:
    src = MemoryMetadataRepository({"A": 2, "B": 1})
    pages = MemoryMetadataRepository()
    out = MemoryMetadataRepository()
    totals = MemoryMetadataRepository()

    async def split(key: str, src: MetadataRepository, pages: MetadataRepository) -> None:
        for i in range(1, await src.get(key) + 1):
            await pages.put(f"{key}.page-{i}", i)

    async def copy(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, await pages.get(key))

    def total(key: str, out: dict[str, int]) -> dict[str, int]:
        return {"totals": sum(out.values())}

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")})
    b = FunctionTask("copy", copy, inputs={"pages": pages}, outputs={"out": out})
    c = FunctionTask(
        "total", total, inputs={"out": out}, outputs={"totals": totals}, group_by=lambda k: k.split(".")[0]
    )
    pipeline = Pipeline([a, b, c])
    assert (await pipeline.run()).succeeded == 2 + 3 + 2
    removed = await pipeline.remove("split", ["A"], cascade=True)
    assert sorted(removed) == [
        ("copy", "done", "A.page-1"),
        ("copy", "done", "A.page-2"),
        ("copy", "out", "A.page-1"),
        ("copy", "out", "A.page-2"),
        ("split", "done", "A"),
        ("split", "pages", "A.page-1"),
        ("split", "pages", "A.page-2"),
        ("total", "done", "A"),
        ("total", "totals", "A"),
    ]
    assert await pages.keys() == {"B.page-1"} and await totals.keys() == {"B"}
    summary = await pipeline.run()
    assert summary.ok and summary.per_task == {
        "split": {"succeeded": 1, "failed": 0},
        "copy": {"succeeded": 2, "failed": 0},
        "total": {"succeeded": 1, "failed": 0},
    }
    assert await totals.get("A") == 3


def test_the_parent_of_a_child_is_the_longest_parent_key_at_a_separator() -> None:
    from pydatatask.task.fan import is_child, parent_among

    parents = {"books", "books/2024/a.tar.gz", "b"}
    assert parent_among("books/2024/a.tar.gz/page-0001", parents, "/") == "books/2024/a.tar.gz"
    assert parent_among("books/2024/other/page-1", parents, "/") == "books"
    assert parent_among("booksX/page-1", parents, "/") is None
    assert parent_among("books", parents, "/") is None  # a parent is not its own child
    assert is_child("A/page 1", "A", "/") and is_child("A.x", "A", ".")
    assert not is_child("A/", "A", "/") and not is_child("AB/x", "A", "/") and not is_child("A", "A", "/")


async def test_nested_path_keys_fan_out_to_children_and_fan_in_per_parent(tmp_path: Path) -> None:
    src = YamlMetadataFileRepository(tmp_path / "src")
    await src.put("books/2024/Moby Dick", 3)
    await src.put("books/2024/Été", 1)
    pages = FileRepository(tmp_path / "pages", ".txt")
    figures = YamlMetadataFileRepository(tmp_path / "figures")
    reports = FileRepository(tmp_path / "reports", ".md")

    async def split(key: str, src: MetadataRepository, pages: BlobRepository) -> None:
        for i in range(1, await src.get(key) + 1):
            await pages.write_text(f"{key}/page {i:02d}", "word " * i)

    def count(key: str, page: bytes) -> dict[str, object]:
        return {"figures": {"words": len(page.split())}}

    def report(key: str, members: list[str], figures: dict[str, dict[str, int]]) -> dict[str, str]:
        return {"reports": " ".join(f"{m.rsplit('/', 1)[1]}={figures[m]['words']}" for m in members)}

    tasks = [
        FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages)}),
        FunctionTask("count", count, inputs={"page": pages}, outputs={"figures": figures}),
        FunctionTask(
            "report",
            report,
            inputs={"figures": figures},
            outputs={"reports": reports},
            group_by=lambda k: k.rsplit("/", 1)[0],
        ),
    ]
    pipeline = Pipeline(tasks)  # claims and records in memory: the values are nested files
    summary = await pipeline.run()
    assert summary.ok and summary.per_task["count"]["succeeded"] == 4, summary.errors
    assert (tmp_path / "pages" / "books" / "2024" / "Moby Dick" / "page 03.txt").read_text() == "word " * 3
    assert await reports.read_text("books/2024/Moby Dick") == "page 01=1 page 02=2 page 03=3"
    assert await reports.read_text("books/2024/Été") == "page 01=1"
    record = await pipeline.tasks["split"].done.get("books/2024/Été")
    assert record["children"] == {"pages": ["books/2024/Été/page 01"]}


class CountingRecords(MemoryMetadataRepository):
    """Job records in memory, counting the records read."""

    reads = 0

    async def _get(self, key: str) -> object:
        self.reads += 1
        return await super()._get(key)

    async def _get_many(self, keys: list[str]) -> dict[str, object]:
        self.reads += len(keys)
        return await super()._get_many(keys)


async def test_five_thousand_children_cost_one_record_read_per_parent() -> None:
    src = MemoryMetadataRepository({f"p{i:02d}": 250 for i in range(20)})
    pages = MemoryMetadataRepository()
    out = MemoryMetadataRepository()
    records = CountingRecords()

    async def split(key: str, src: MetadataRepository, pages: MetadataRepository) -> None:
        for i in range(await src.get(key)):
            await pages.put(f"{key}.{i:04d}", i)

    async def copy(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, await pages.get(key))

    a = FunctionTask("split", split, inputs={"src": src}, outputs={"pages": FanOut(pages, ".")}, done=records)
    b = FunctionTask("copy", copy, inputs={"pages": pages}, outputs={"out": out}, concurrency=64)
    pipeline = Pipeline([a, b], poll_interval="10ms")
    summary = await pipeline.run()
    assert summary.ok and summary.per_task["copy"]["succeeded"] == 5_000
    # the scheduler wrote the parents' records itself and never read them back; a second
    # scheduler reads each parent's record once, and a finished pipeline none at all
    assert records.reads == 0
    assert (await Pipeline([a, b]).figures(full=False))["copy"].ready == set()
    assert records.reads == 0
    await out.delete("p07.0001")
    await b.done.delete("p07.0001")
    figures = await Pipeline([a, b]).figures(full=False)
    assert figures["copy"].ready == {"p07.0001"}
    assert records.reads == 1
