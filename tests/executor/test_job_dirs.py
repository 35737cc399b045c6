"""The background removal of job directories and the waiting for local children."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from pydatatask.executor import _job_dirs
from pydatatask.executor._job_dirs import Remover
from pydatatask.executor.base import ProcessWork, Resources
from pydatatask.executor.local import LocalHost
from pydatatask.pipeline import Pipeline
from pydatatask.repository import MemoryBlobRepository
from pydatatask.task.process import ProcessTask


def _job_dir(root: Path, name: str, extra: bool = False) -> tuple[str, ProcessWork]:
    path = root / name
    (path / "in" / "src").mkdir(parents=True)
    (path / "in" / "src" / "k").write_bytes(b"x")
    (path / ".pdt-log").write_bytes(b"")
    if extra:  # something the command left: removed by a listing
        (path / "scratch" / "deep").mkdir(parents=True)
        (path / "scratch" / "deep" / "f").write_text("f")
    work = ProcessWork(command="true", files_in={"in/src/k": b"x"}, job_dir=str(path), transient=True)
    return str(path), work


def _removal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pdt-job-dir-removal"]


async def test_drain_returns_once_every_directory_handed_in_is_gone(tmp_path: Path) -> None:
    remover = Remover()
    for i in range(40):
        remover.remove(*_job_dir(tmp_path, f"j{i}", extra=i % 7 == 0))
    await remover.drain()
    assert os.listdir(tmp_path) == []


async def test_the_removing_thread_ends_when_idle_and_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_job_dirs, "IDLE", 0.05)
    remover = Remover()
    before = len(_removal_threads())
    remover.remove(*_job_dir(tmp_path, "a"))
    await remover.drain()
    for _ in range(200):
        if len(_removal_threads()) == before:
            break
        await asyncio.sleep(0.01)
    assert len(_removal_threads()) == before  # ended for want of work
    remover.remove(*_job_dir(tmp_path, "b"))  # started again on demand
    await remover.drain()
    assert os.listdir(tmp_path) == []


async def test_a_pipeline_with_claims_in_memory_leaves_no_job_directory(tmp_path: Path) -> None:
    """The job directories go in the background; the pipeline's close waits for them."""
    keys = [f"k{i}" for i in range(30)]
    task = ProcessTask(
        "t",
        "test -f {{ src.path }} && test ! -e .pdt-pid",
        executor=LocalHost("here", cpus=4, workdir=tmp_path / "jobs"),
        inputs={"src": MemoryBlobRepository(dict.fromkeys(keys, b"x"))},
        concurrency=4,
    )
    summary = await Pipeline([task]).run()
    assert summary.succeeded == len(keys), summary
    assert list((tmp_path / "jobs").iterdir()) == []


async def test_a_cancelled_wait_leaves_the_process_to_be_waited_for_again(tmp_path: Path) -> None:
    host = LocalHost("here", cpus=2, workdir=tmp_path / "jobs")
    slot = host.acquire(Resources(cpu=1))
    assert slot is not None
    handle = await host.start(ProcessWork(command="sleep 0.3; exit 4"), slot)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await handle.wait()
        outcome = await asyncio.wait_for(handle.wait(), 30)
        assert outcome.exit_code == 4
        pid = handle.info["pid"]
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
    finally:
        await handle.close()
        host.release(slot)
    assert list((tmp_path / "jobs").iterdir()) == []


async def test_a_few_directories_go_without_a_drain(tmp_path: Path) -> None:
    """Fewer than a batch are handed to the thread after a short delay."""
    remover = Remover()
    remover.remove(*_job_dir(tmp_path, "a"))
    for _ in range(500):
        if not os.listdir(tmp_path):
            break
        await asyncio.sleep(0.01)
    assert os.listdir(tmp_path) == []


def test_what_a_closed_loop_left_queued_goes_with_the_next_loop_or_at_exit(tmp_path: Path) -> None:
    remover = Remover()

    async def hand_in(name: str) -> None:
        remover.remove(*_job_dir(tmp_path, name))

    asyncio.run(hand_in("a"))  # its loop closes before the delay is over
    asyncio.run(hand_in("b"))  # another loop: both go now
    asyncio.run(remover.drain())
    assert os.listdir(tmp_path) == []
    asyncio.run(hand_in("c"))
    remover.drain_now()  # as at the interpreter's exit
    assert os.listdir(tmp_path) == []
