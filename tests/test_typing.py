"""What a type checker sees of the public API: every exported name has a real type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pydatatask

mypy_api = pytest.importorskip("mypy.api")  # in the test extra: never skipped in CI


def test_every_exported_name_is_typed_for_mypy(tmp_path: Path) -> None:
    # the lazily exported names (S3, Mongo, Docker backends, Pipeline, tasks, ...) were `Any`
    names = [n for n in pydatatask.__all__ if n != "__version__"]
    lines = ["import pydatatask", "import pydatatask.repository"]
    lines += [f"reveal_type(pydatatask.{n})" for n in names]
    repo_names = [n for n in pydatatask.repository.__all__]
    lines += [f"reveal_type(pydatatask.repository.{n})" for n in repo_names]
    snippet = tmp_path / "snippet.py"
    snippet.write_text("\n".join(lines) + "\n")
    out, err, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(snippet)]
    )
    revealed = re.findall(r'Revealed type is "(.*)"', out)
    assert len(revealed) == len(names) + len(repo_names), out + err
    untyped = [n for n, t in zip(names + repo_names, revealed, strict=True) if t == "Any"]
    assert not untyped, f"reach a type checker as Any: {untyped}"
    assert "error:" not in out, out
