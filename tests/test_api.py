"""The public API: explicit tuple __all__ everywhere, light import, layering."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pydatatask

PACKAGE = Path(pydatatask.__file__).parent
HEAVY = (
    "boto",
    "botocore",
    "aiobotocore",
    "pymongo",
    "motor",
    "kubernetes_asyncio",
    "asyncssh",
    "httpx",
    "distributed",
    "dask",
    "rich",
)
# optional modules import a heavy library at module level only where documented
OPTIONAL = {"repository.s3", "repository.mongo", "repository.docker"}


def public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(PACKAGE)], "pydatatask."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", public_modules())
def test_all_is_a_tuple_of_existing_names(name: str) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    assigned = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
    ]
    assert assigned, f"{name} has no __all__"
    assert isinstance(assigned[0].value, ast.Tuple), f"{name}.__all__ is not a tuple"
    try:
        module = importlib.import_module(name)
    except pydatatask.MissingDependencyError:
        assert name.removeprefix("pydatatask.") in OPTIONAL
        return
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which does not exist"


def test_import_is_light() -> None:
    code = "import sys, json, pydatatask; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == [], f"import pydatatask loaded {heavy}"


def test_repository_layer_imports_nothing_above_it() -> None:
    upper = ("task", "pipeline", "cli", "executor")
    for path in (PACKAGE / "repository").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                # relative imports from repository/ reach the package root with level 2
                names = [
                    node.module if node.level == 0 else "pydatatask." + node.module if node.level == 2 else ""
                ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                assert not name.startswith(tuple(f"pydatatask.{up}" for up in upper)), (
                    f"{path} imports {name}"
                )


def test_errors_tree() -> None:
    from pydatatask import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.PydatataskError)
    assert issubclass(errors.KeyNotFoundError, KeyError)
    assert issubclass(errors.InvalidKeyError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)


def test_missing_extra_message() -> None:
    from pydatatask._deps import require

    with pytest.raises(pydatatask.MissingDependencyError, match=r"pip install 'pydatatask\[s3\]'"):
        require("surely_not_installed_module_xyz", "s3")
