"""Jobs whose claims and records are in this process's memory (the default ``done`` and
``live``): the lifecycle makes them as dict operations, with the same guarantees."""

from __future__ import annotations

from typing import Any

import pytest

import pydatatask.keys
import pydatatask.repository.base as repository_base
from pydatatask.errors import ConfigurationError
from pydatatask.pipeline import Pipeline
from pydatatask.repository.memory import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.repository.serialized import YamlMetadataFileRepository
from pydatatask.task import FunctionTask
from pydatatask.task.claims import process_memory
from pydatatask.task.lifecycle import execute
from pydatatask.task.records import make_claim


async def _upper(key: str, src: Any, dst: Any) -> None:
    await dst.write_bytes(key, (await src.read_bytes(key)).upper())


def _task(keys: list[str], **kwargs: Any) -> tuple[FunctionTask, MemoryBlobRepository]:
    out = MemoryBlobRepository()
    src = MemoryBlobRepository({k: b"abc" for k in keys})
    return FunctionTask("up", _upper, inputs={"src": src}, outputs={"dst": out}, **kwargs), out


async def test_the_lifecycle_checks_no_key_again_on_memory_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # every check of a key by a repository's own methods goes through this name; the
    # claim, the done check, the record and the release of a job in memory use none
    checked: list[object] = []
    real = pydatatask.keys.validate_key

    def counting(key: object) -> str:
        checked.append(key)
        return real(key)

    keys = [f"k{i}" for i in range(20)]
    task, out = _task(keys, concurrency=3)
    pipeline = Pipeline([task])
    monkeypatch.setattr(repository_base, "validate_key", counting)
    summary = await pipeline.run()
    assert summary.succeeded == 20
    assert sorted(await out.keys()) == sorted(keys)
    assert sorted(await task.done.keys()) == sorted(keys)
    assert await task.live.keys() == set()
    per_key = {k: checked.count(k) for k in keys}
    assert max(per_key.values()) <= 1, per_key


async def test_a_key_claimed_in_memory_by_another_scheduler_is_left_alone() -> None:
    task, out = _task(["a", "b"])
    await task.live.put("a", make_claim("someone-else", "up", "a", 0.0))
    assert await execute(task, "a") is None
    assert await out.keys() == set()
    assert (await task.live.get("a"))["owner"] == "someone-else"  # not released: not ours
    record = await execute(task, "b")
    assert record is not None and record["success"]
    assert await task.live.keys() == {"a"}


async def test_a_key_done_since_its_listing_is_not_run_again_and_its_claim_is_freed() -> None:
    task, out = _task(["a"])
    await task.done.put("a", {"success": True, "by": "another scheduler"})
    assert await execute(task, "a") is None
    assert await out.keys() == set()
    assert await task.live.keys() == set()
    assert (await task.done.get("a"))["by"] == "another scheduler"


async def test_a_record_kept_in_memory_reads_back_equal_and_is_a_copy() -> None:
    task, _ = _task(["a"])
    record = await execute(task, "a")
    assert record is not None
    stored = await task.done.get("a")
    assert stored == record
    record["inputs"]["src"] = "changed"
    record["extra"] = [1]
    assert await task.done.get("a") == stored
    again = await task.done.get("a")
    again["inputs"]["src"] = "also changed"
    assert await task.done.get("a") == stored
    assert (await task.done.get_many(["a"]))["a"] == stored


async def test_a_default_store_written_to_by_a_job_can_no_longer_be_rebound(tmp_path: Any) -> None:
    task, _ = _task(["a"])
    await execute(task, "a")
    with pytest.raises(ConfigurationError, match="written to in memory"):
        task.done.bind(YamlMetadataFileRepository(tmp_path / "done"))  # type: ignore[attr-defined]


async def test_packed_values_compare_and_replace_like_dicts() -> None:
    repo = MemoryMetadataRepository()
    value: dict[str, Any] = {"a": 1, "b": {"c": [1, {"d": None}]}, "e": [True, "x"], "f": {}}
    repo.put_now("k", value)
    value["b"]["c"].append(2)  # the store keeps its own copy
    kept = {"a": 1, "b": {"c": [1, {"d": None}]}, "e": [True, "x"], "f": {}}
    assert await repo.get("k") == kept
    assert not await repo.replace_if("k", value, {"a": 2})
    assert await repo.replace_if("k", kept, {"a": 2})
    assert await repo.get("k") == {"a": 2}


def test_only_plain_memory_of_this_process_takes_the_short_path(tmp_path: Any) -> None:
    class Slow(MemoryMetadataRepository):
        pass

    task, _ = _task(["a"])
    assert process_memory(task.done) is task.done.target  # type: ignore[attr-defined]
    assert process_memory(Slow()) is None
    assert process_memory(YamlMetadataFileRepository(tmp_path / "d")) is None
    on_files, _ = _task(["a"], done=YamlMetadataFileRepository(tmp_path / "done"))
    assert process_memory(on_files.done) is None
