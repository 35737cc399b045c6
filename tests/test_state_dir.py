"""Pipeline(state_dir=...): the state repositories a user obtained from a task are the ones used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pydatatask import ConfigurationError, FilterRepository, MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask


def _failed(record: Any) -> bool:
    return isinstance(record, dict) and record.get("success") is False


async def test_alert_over_done_built_before_the_pipeline_fires(tmp_path: Path) -> None:
    src = MemoryMetadataRepository({"good": 1, "bad": 2})
    out = MemoryMetadataRepository()
    alerts = MemoryMetadataRepository()

    async def work(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
        if key == "bad":
            raise RuntimeError("bad input")
        await dst.put(key, await src.get(key))

    a = FunctionTask("A", work, inputs={"src": src}, outputs={"dst": out})
    failed_a = FilterRepository(a.done, value_predicate=_failed)  # before the Pipeline exists

    async def alert(key: str, failure: MetadataRepository, alerts: MetadataRepository) -> None:
        await alerts.put(key, (await failure.get(key))["error"]["message"])

    b = FunctionTask("alert", alert, inputs={"failure": failed_a}, outputs={"alerts": alerts})
    done_before = a.done
    pipeline = Pipeline([a, b], state_dir=tmp_path / "state")
    assert a.done is done_before
    summary = await pipeline.run()
    assert summary.succeeded == 2 and summary.failed == 1  # A on good, the alert on bad; A on bad failed
    assert await alerts.get_many(["bad", "good"]) == {"bad": "bad input"}
    assert sorted(p.name for p in (tmp_path / "state" / "A" / "done").iterdir()) == ["bad.yaml", "good.yaml"]


async def test_records_survive_in_the_files_for_a_new_pipeline(tmp_path: Path) -> None:
    def make() -> FunctionTask:
        async def work(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
            await dst.put(key, await src.get(key))

        return FunctionTask("A", work, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()})

    src = MemoryMetadataRepository({"k": 1})
    first = make()
    await Pipeline([first], state_dir=tmp_path).run()
    second = make()
    view = FilterRepository(second.done, value_predicate=lambda r: bool(r.get("success")))
    Pipeline([second], state_dir=tmp_path)
    assert await view.keys() == {"k"}


def test_moving_a_bound_store_is_an_error_naming_the_task(tmp_path: Path) -> None:
    task = FunctionTask("A", lambda key: None)
    Pipeline([task], state_dir=tmp_path / "one")
    Pipeline([task], state_dir=tmp_path / "one")  # the same store again: fine
    with pytest.raises(ConfigurationError, match="task 'A': the done repository is already stored in"):
        Pipeline([task], state_dir=tmp_path / "two")


async def test_binding_after_values_were_written_in_memory_is_an_error(tmp_path: Path) -> None:
    task = FunctionTask("A", lambda key: None)
    await task.done.put("k", {"success": True})
    with pytest.raises(ConfigurationError, match="task 'A': the done repository was written to in memory"):
        Pipeline([task], state_dir=tmp_path)
    assert await task.done.get("k") == {"success": True}  # nothing lost


def test_given_repositories_are_kept(tmp_path: Path) -> None:
    done = MemoryMetadataRepository()
    task = FunctionTask("A", lambda key: None, done=done)
    Pipeline([task], state_dir=tmp_path)
    assert task.done is done
    assert task.logs is not None and "logs" in task.logs.describe()
