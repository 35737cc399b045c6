"""A job that writes keys beyond its own: a failure removes all of them, and downstream
never starts on them while the job runs or after it failed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from pydatatask import (
    FileRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    TranslateKeysRepository,
    YamlMetadataFileRepository,
)
from pydatatask.pipeline import Pipeline, Scheduler
from pydatatask.repository.base import BlobRepository, MetadataRepository
from pydatatask.repository.journal import WriteJournal, journaling
from pydatatask.task import FunctionTask, RetryPolicy


async def copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
    await dst.put(key, await src.get(key))


async def test_failed_fan_out_leaves_no_part_and_downstream_never_runs() -> None:
    src = MemoryMetadataRepository({"A": 1})
    parts = MemoryMetadataRepository()
    out = MemoryMetadataRepository()

    async def split(key: str, parts: MetadataRepository) -> None:
        await parts.put(f"{key}-part-1", 1)
        await parts.put(f"{key}-part-2", 2)
        raise RuntimeError("broken after two parts")

    a = FunctionTask("a", split, inputs={"src": src}, outputs={"parts": parts})
    b = FunctionTask("b", copy, inputs={"src": parts}, outputs={"dst": out})
    summary = await Pipeline([a, b]).run()
    assert summary.failed == 1 and summary.succeeded == 0
    assert await parts.keys() == set()
    assert await out.keys() == set()
    assert await b.done.keys() == set()
    assert (await a.done.get("A"))["success"] is False


async def test_each_failed_attempt_is_cleaned_before_the_retry(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"A": 1})
    parts = FileRepository(tmp_path / "parts", ".txt")
    seen: list[set[str]] = []

    async def split(key: str, job: Any, parts: BlobRepository) -> None:
        seen.append(await parts.keys())
        await parts.write_bytes(f"{key}-attempt-{job.attempt}", b"x")
        async with parts.open(f"{key}-stream-{job.attempt}", "wb") as f:
            await f.write(b"y")
        if job.attempt < 3:
            raise RuntimeError("try again")

    a = FunctionTask(
        "a",
        split,
        inputs={"src": src},
        outputs={"parts": parts},
        retry=RetryPolicy(max_attempts=3, backoff=0),
    )
    summary = await Pipeline([a]).run()
    assert summary.ok and summary.succeeded == 1
    assert seen == [set(), set(), set()]
    assert await parts.keys() == {"A-attempt-3", "A-stream-3"}
    record = await a.done.get("A")
    assert record["wrote"] == ["A-attempt-3", "A-stream-3"]


async def test_writes_through_a_view_are_removed_in_the_underlying_repository(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"A": 1})
    under = YamlMetadataFileRepository(tmp_path / "under")
    view = TranslateKeysRepository(under, lambda k: f"v-{k}", lambda k: k[2:] if k.startswith("v-") else None)

    async def split(key: str, parts: Any) -> None:
        await parts.put(f"{key}-1", 1)
        await parts.put(f"{key}-2", 2)
        raise RuntimeError("broken")

    a = FunctionTask("a", split, inputs={"src": src}, outputs={"parts": view})
    summary = await Pipeline([a]).run()
    assert summary.failed == 1
    assert await under.keys() == set()


async def test_parts_are_not_ready_downstream_while_the_job_runs() -> None:
    src = MemoryMetadataRepository({"A": 1})
    parts = MemoryBlobRepository()
    out = MemoryBlobRepository()
    release = asyncio.Event()
    written = asyncio.Event()
    started_b: list[str] = []

    async def split(key: str, parts: BlobRepository) -> None:
        await parts.write_bytes(f"{key}-part-1", b"1")
        written.set()
        await release.wait()
        raise RuntimeError("failed late")

    async def consume(key: str, src: BlobRepository, dst: BlobRepository) -> None:
        started_b.append(key)
        await dst.write_bytes(key, await src.read_bytes(key))

    a = FunctionTask("a", split, inputs={"src": src}, outputs={"parts": parts})
    b = FunctionTask("b", consume, inputs={"src": parts}, outputs={"dst": out})
    pipeline = Pipeline([a, b], poll_interval="20ms")
    ticks_after_write: set[int] = set()
    listed_again = asyncio.Event()

    def progress(scheduler: Scheduler) -> None:
        if written.is_set():
            ticks_after_write.add(scheduler.ticks)
            if len(ticks_after_write) >= 3:
                listed_again.set()

    run = asyncio.create_task(pipeline.run(on_progress=progress))
    # the scheduler lists again while A runs; the part must not be ready for B
    await listed_again.wait()
    assert "A-part-1" in await parts.keys()
    assert "A-part-1" not in pipeline.scheduler.figures["b"].ready
    assert started_b == []
    release.set()
    summary = await run
    assert summary.failed == 1
    assert started_b == []
    assert await parts.keys() == set() and await out.keys() == set()


async def test_claims_and_records_are_not_taken_for_outputs() -> None:
    """The journal of a job is restricted to the task's outputs when cleaning up."""
    src = MemoryMetadataRepository({"A": 1})
    other = MemoryMetadataRepository({"keep": 1})

    async def writes_elsewhere(key: str, side: MetadataRepository) -> None:
        await side.put("keep", 2)  # a repository that is not an output: not the job's to remove
        raise RuntimeError("failed")

    a = FunctionTask("a", writes_elsewhere, inputs={"src": src})
    a.link("side", other)
    await Pipeline([a]).run()
    assert await other.get("keep") == 2


async def test_journal_notes_each_write_path_once(tmp_path: Path) -> None:
    meta = MemoryMetadataRepository({"old": 0})
    blobs = FileRepository(tmp_path / "b")
    journal = WriteJournal()
    with journaling(journal):
        await meta.put("p", 1)
        await meta.put("p", 2)
        assert await meta.create("c", 1)
        assert not await meta.create("old", 1)  # exists: someone else's key, not noted
        assert await meta.replace_if("old", 0, 1)
        await blobs.write_bytes("w", b"x")
        assert await blobs.create_bytes("cb", b"x")
        async with blobs.open("s", "wb") as f:
            await f.write(b"x")
        try:
            async with blobs.open("aborted", "wb") as f:
                await f.write(b"x")
                raise ValueError("abort")
        except ValueError:
            pass
    await meta.put("outside", 1)
    assert [(r is meta, k) for r, k in journal.entries()] == [
        (True, "p"),
        (True, "c"),
        (True, "old"),
        (False, "w"),
        (False, "cb"),
        (False, "s"),
    ]


async def test_a_timed_out_fan_out_job_leaves_no_part() -> None:
    src = MemoryMetadataRepository({"A": 1})
    parts = MemoryMetadataRepository()

    async def split(key: str, parts: MetadataRepository) -> None:
        await parts.put(f"{key}-part-1", 1)
        await asyncio.sleep(30)

    a = FunctionTask("a", split, inputs={"src": src}, outputs={"parts": parts}, timeout="50ms")
    summary = await Pipeline([a]).run()
    assert summary.failed == 1
    assert (await a.done.get("A"))["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    assert await parts.keys() == set()


async def test_a_cancelled_fan_out_job_leaves_no_part(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"A": 1})
    parts = FileRepository(tmp_path / "parts")
    written = asyncio.Event()

    async def split(key: str, parts: BlobRepository) -> None:
        await parts.write_bytes(f"{key}-part-1", b"1")
        written.set()
        await asyncio.sleep(30)

    a = FunctionTask("a", split, inputs={"src": src}, outputs={"parts": parts})
    pipeline = Pipeline([a], state_dir=tmp_path / "state")
    run = asyncio.create_task(pipeline.run(grace="10ms"))
    await written.wait()
    pipeline.scheduler.request_stop()
    summary = await run
    assert summary.interrupted
    assert await parts.keys() == set()
    assert await a.done.keys() == set() and await a.live.keys() == set()


CRASHING_SCHEDULER = """
import asyncio, sys, time
from pathlib import Path
from pydatatask import FileRepository, MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

root = Path(sys.argv[1])

async def split(key, parts):
    await parts.write_bytes(key + "-part-1", b"1")
    await parts.write_bytes(key + "-part-2", b"2")
    (root / "written").write_text("yes")
    await asyncio.sleep(60)

task = FunctionTask(
    "a", split, inputs={"src": MemoryMetadataRepository({"A": 1})},
    outputs={"parts": FileRepository(root / "parts")},
)
asyncio.run(Pipeline([task], state_dir=root / "state").run())
"""


def test_parts_of_a_job_whose_scheduler_was_killed_are_removed_by_the_recovery(tmp_path: Path) -> None:
    script = tmp_path / "sched.py"
    script.write_text(textwrap.dedent(CRASHING_SCHEDULER))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "written").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "written").exists(), "the first scheduler never wrote its parts"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["A-part-1", "A-part-2"]
    asyncio.run(_run_again_after_the_crash(tmp_path))


async def _run_again_after_the_crash(tmp_path: Path) -> None:
    parts = FileRepository(tmp_path / "parts")

    async def fails(key: str, parts: BlobRepository) -> None:
        raise RuntimeError("broken this time")

    out = MemoryBlobRepository()
    consumed: list[str] = []

    async def consume(key: str, src: BlobRepository, dst: BlobRepository) -> None:
        consumed.append(key)
        await dst.write_bytes(key, await src.read_bytes(key))

    a = FunctionTask("a", fails, inputs={"src": MemoryMetadataRepository({"A": 1})}, outputs={"parts": parts})
    b = FunctionTask("b", consume, inputs={"src": parts}, outputs={"dst": out})
    summary = await Pipeline([a, b], state_dir=tmp_path / "state").run()
    assert consumed == []
    assert await parts.keys() == set()
    assert summary.failed == 1 and (await a.done.get("A"))["success"] is False
