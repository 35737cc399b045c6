"""The progress display's counts during a run that redoes stale keys: a redone key is
counted once (its old record was replaced, not added to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydatatask import FileRepository, YamlMetadataFileRepository
from pydatatask.cli.output import progress_rows
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.scheduler import Scheduler
from pydatatask.task import FunctionTask


async def upper(key: str, src: FileRepository, dst: FileRepository) -> None:
    await dst.write_bytes(key, (await src.read_bytes(key)).upper())


def _pipeline(root: Path) -> Pipeline:
    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": FileRepository(root / "in", ".txt")},
        outputs={"dst": FileRepository(root / "out", ".txt")},
        done=YamlMetadataFileRepository(root / "done", fsync=False),
        live=YamlMetadataFileRepository(root / "live", fsync=False),
    )
    return Pipeline([task])


async def test_a_redone_key_is_counted_once_in_the_progress_rows(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for key in ("a", "b", "c"):
        (tmp_path / "in" / f"{key}.txt").write_text(key)
    assert (await _pipeline(tmp_path).run()).ok
    (tmp_path / "in" / "b.txt").write_text("b, again")  # b is stale now
    rows: list[list[Any]] = []
    base: dict[str, tuple[int, int]] = {}

    def progress(scheduler: Scheduler) -> None:
        if not base:  # the counts of the first tick, as the command's display takes them
            base.update({t: (len(f.succeeded), len(f.failed)) for t, f in scheduler.figures.items()})
        rows.extend(progress_rows(scheduler, base))

    summary = await _pipeline(tmp_path).run(rerun_stale=True, on_progress=progress)
    assert summary.ok and summary.per_task["upper"] == {"succeeded": 1, "failed": 0}
    assert base == {"upper": (3, 0)}
    assert rows[-1][:3] == ["upper", 3, 0], rows  # not 4 ok: b was redone, not added
    assert (tmp_path / "out" / "b.txt").read_text() == "B, AGAIN"
