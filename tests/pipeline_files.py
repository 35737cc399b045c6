"""Pipeline files that tests write: what the tests of the ``pydatatask`` command and of
the web server for several pipelines share."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ("ROOT", "write_pipeline_file")

#: the project's root: on the ``python_path`` of every pipeline file written here, so
#: that ``function:`` names tests' own functions
ROOT = Path(__file__).resolve().parents[1]


def write_pipeline_file(
    tmp_path: Path,
    name: str,
    inputs: Mapping[str, str],
    repositories: Mapping[str, dict[str, Any]],
    tasks: Mapping[str, dict[str, Any]],
) -> Path:
    """Write ``tmp_path/NAME.yaml`` and return its path: a pipeline file whose repository
    ``src`` holds ``inputs`` (key -> text) as ``.txt`` files in ``tmp_path/NAME/in``, with
    more ``repositories`` and the ``tasks`` (as the file's mappings would hold them; roots
    relative to ``tmp_path``), its state in ``NAME/state``."""
    (tmp_path / name / "in").mkdir(parents=True)
    for key, text in inputs.items():
        (tmp_path / name / "in" / f"{key}.txt").write_text(text)
    spec = {
        "python_path": [str(ROOT)],
        "repositories": {"src": {"kind": "files", "root": f"{name}/in", "extension": ".txt"}, **repositories},
        "tasks": dict(tasks),
        "pipeline": {"state_dir": f"{name}/state"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
