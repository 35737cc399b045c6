"""``pydatatask -m A -m B run OPTIONS``: each pipeline's run gets the options of the command."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydatatask.cli.command import run_command

MODULE = """\
from pydatatask import MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask


async def copy(key, src, dst):
    await dst.put(key, await src.get(key))


def make(name):
    src = MemoryMetadataRepository({f"{name}{i}": i for i in range(3)})
    task = FunctionTask("copy", copy, inputs={"src": src}, outputs={"dst": MemoryMetadataRepository()})
    return Pipeline([task])


one = make("a")
two = make("b")
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a module in ``tmp_path`` holding the pipelines ``one`` and ``two``."""
    name = f"several_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_run_of_several_pipelines_passes_refresh_to_each(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_command(["-m", f"{module}:one", "-m", f"{module}:two", "run", "--refresh", "7s", "--json"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(capsys.readouterr().out)
    assert [r["succeeded"] for r in results.values()] == [3, 3]
    loaded = importlib.import_module(module)
    for pipeline in (loaded.one, loaded.two):
        intervals = {known.refresh for known in pipeline.scheduler.known._known.values()}
        assert intervals == {7.0}, intervals
