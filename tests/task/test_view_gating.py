"""Success gating through views: a downstream task never reads what a failed, running or
half-done upstream job wrote, whatever views sit between them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydatatask import (
    FileRepository,
    MemoryMetadataRepository,
    OrRepository,
    ReadOnlyRepository,
    TranslateKeysRepository,
)
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.scheduler import Scheduler
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask


def _prefixed(child: Any, prefix: str) -> Any:
    return TranslateKeysRepository(
        child, lambda k: k[len(prefix) :], lambda k: prefix + k
    )  # view key "x-a" is the child's "a"


def _unprefixed(child: Any, prefix: str) -> Any:
    return TranslateKeysRepository(
        child, lambda k: prefix + k, lambda k: k[len(prefix) :] if k.startswith(prefix) else None
    )  # view key "a" is the child's "out-a"


async def _record(task: FunctionTask, key: str, success: bool) -> None:
    await task.done.put(key, {"task": task.name, "key": key, "success": success})


async def test_half_done_upstream_output_is_not_read_through_a_translating_view() -> None:
    src = MemoryMetadataRepository({"a": 1, "b": 2, "c": 3})
    mid = MemoryMetadataRepository()
    a = FunctionTask("A", lambda key, src: {"mid": src}, inputs={"src": src}, outputs={"mid": mid})
    b = FunctionTask(
        "B",
        lambda key, inp: {"res": inp},
        inputs={"inp": _prefixed(mid, "x-")},
        outputs={"res": MemoryMetadataRepository()},
    )
    pipeline = Pipeline([a, b])
    assert pipeline.graph.upstream["B"] == ["A"]
    # A's outputs exist for every key: "a" without a record (running or half-done),
    # "b" with a failure record (its cleanup failed), "c" with a success record
    for key in ("a", "b", "c"):
        await mid.put(key, {"from": key})
    await _record(a, "b", False)
    await _record(a, "c", True)
    views = await pipeline.figures()
    assert views["B"].ready == {"x-c"}
    assert views["B"].blocked == {"x-a", "x-b"}


async def test_failed_upstream_job_is_not_consumed_through_a_translating_view() -> None:
    src = MemoryMetadataRepository({"good": 1, "bad": 2})
    mid = MemoryMetadataRepository()
    consumed: list[str] = []
    ticks_seen = asyncio.Event()

    async def upstream(key: str, src: MetadataRepository, mid: MetadataRepository) -> None:
        await mid.put(key, await src.get(key))
        if key == "bad":
            await ticks_seen.wait()  # the output stays visible while downstream lists again
            raise RuntimeError("failed after writing its output")

    async def downstream(key: str, inp: MetadataRepository, res: MetadataRepository) -> None:
        consumed.append(key)
        await res.put(key, await inp.get(key))

    a = FunctionTask("A", upstream, inputs={"src": src}, outputs={"mid": mid})
    b = FunctionTask(
        "B", downstream, inputs={"inp": _prefixed(mid, "x-")}, outputs={"res": MemoryMetadataRepository()}
    )

    def on_progress(scheduler: Scheduler) -> None:
        if scheduler.ticks >= 4:
            ticks_seen.set()

    summary = await Pipeline([a, b], poll_interval="0.02s").run(on_progress=on_progress)
    assert summary.failed == 1 and summary.succeeded == 2
    assert consumed == ["x-good"]


async def test_output_written_through_a_view_gates_its_readers(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"a": 1, "b": 2})
    files = FileRepository(tmp_path / "out", ".txt")
    a = FunctionTask(
        "A",
        lambda key, src: {"out": str(src)},
        inputs={"src": src},
        outputs={"out": _unprefixed(files, "out-")},
    )
    b = FunctionTask(
        "B",
        lambda key, f: {"res": {"n": len(f)}},
        inputs={"f": ReadOnlyRepository(files)},
        outputs={"res": MemoryMetadataRepository()},
    )
    pipeline = Pipeline([a, b])
    assert pipeline.graph.upstream["B"] == ["A"]
    await files.write_text("out-a", "half")  # A's output for "a", no record yet
    await files.write_text("out-b", "done")
    await _record(a, "b", True)
    await files.write_text("manual", "placed by hand")  # no upstream job could write it
    views = await pipeline.figures()
    assert views["B"].ready == {"out-b", "manual"}
    assert views["B"].blocked == {"out-a"}


async def test_same_key_gating_through_views_that_keep_keys() -> None:
    src = MemoryMetadataRepository({"a": 1, "b": 2})
    mid = MemoryMetadataRepository()
    other = MemoryMetadataRepository({"z": 0})
    a = FunctionTask("A", lambda key, src: {"mid": src}, inputs={"src": src}, outputs={"mid": mid})
    b = FunctionTask(
        "B",
        lambda key, inp: {"res": inp},
        inputs={"inp": OrRepository(other, ReadOnlyRepository(mid))},
        outputs={"res": MemoryMetadataRepository()},
    )
    pipeline = Pipeline([a, b])
    await mid.put("a", 1)
    await mid.put("b", 2)
    await _record(a, "b", True)
    views = await pipeline.figures()
    assert views["B"].ready == {"b", "z"}
    assert views["B"].blocked == {"a"}


async def test_why_names_the_upstream_gate_through_a_translating_view() -> None:
    src = MemoryMetadataRepository({"a": 1})
    mid = MemoryMetadataRepository({"a": 1})  # A's output, no record: half done
    a = FunctionTask("A", lambda key, src: {"mid": src}, inputs={"src": src}, outputs={"mid": mid})
    b = FunctionTask(
        "B",
        lambda key, inp: {"res": inp},
        inputs={"inp": _prefixed(mid, "x-")},
        outputs={"res": MemoryMetadataRepository()},
    )
    reasons = await Pipeline([a, b]).why("B", "x-a")
    assert reasons == ["an upstream task has no success record for what 'x-a' reads"]
