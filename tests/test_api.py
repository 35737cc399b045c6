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
    "aiohttp",
    "selenium",
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


# The layers, lowest first; a module may import its own layer and those below it only.
# Top-level modules (session, keys, errors, durations, quantities, backoff, the private
# helpers) form the lowest layer. The package's own __init__ is the facade: it re-exports
# every layer, so it is exempt. ``testing`` (the conformance suites users run on their own
# backends and executors) may import the layers it tests and nothing above them; no layer
# imports it.
LAYERS = ("base", "repository", "executor", "task", "pipeline", "config", "web", "cli")
LAYER_OF_TESTING = "executor"
RULE = "cli -> web -> config -> pipeline -> task -> executor -> repository -> session/keys/errors/durations/quantities/backoff"


def _layer(module: str) -> str | None:
    """The layer of a module of the package (``None`` for other packages, "facade" for it)."""
    parts = module.split(".")
    if parts[0] != "pydatatask":
        return None
    if len(parts) == 1:
        return "facade"
    if parts[1] in LAYERS or parts[1] == "testing":
        return parts[1]
    if parts[1] == "__main__":  # `python -m pydatatask`: the console script
        return "cli"
    return "base"


def _rank(layer: str) -> int:
    return LAYERS.index(LAYER_OF_TESTING if layer == "testing" else layer)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source``: at module level, inside
    functions and under ``if TYPE_CHECKING:`` alike (a type-only import still ties the
    lower layer's signatures to the upper one)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if node.module is None:  # `from .. import errors`: a name is a module or the package's
                for alias in node.names:
                    where = PACKAGE.parent.joinpath(*target.split("."), alias.name)
                    is_module = where.is_dir() or where.with_suffix(".py").is_file()
                    found.append((node.lineno, f"{target}.{alias.name}" if is_module else target))
            else:
                found.append((node.lineno, target))
    return found


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What ``module`` imports against the layer rule, one line each."""
    own = _layer(module)
    assert own is not None
    if own == "facade":
        return []
    bad = []
    for line, target in imported_modules(source, module, is_package):
        other = _layer(target)
        if other is None or other == own:
            continue
        if other == "facade":
            why = "the package facade (import from the module that defines the name)"
        elif other == "testing":
            why = "the testing suites, which no layer imports"
        elif _rank(other) > _rank(own):
            why = f"the {other} layer, above {own}"
        else:
            continue
        bad.append(f"{module} (line {line}) imports {target}: {why}; the rule is {RULE}")
    return bad


def _package_modules() -> list[tuple[str, Path, bool]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out.append((".".join(parts), path, is_package))
    return out


@pytest.mark.parametrize(("module", "path", "is_package"), _package_modules(), ids=lambda v: str(v))
def test_layers_import_only_downwards(module: str, path: Path, is_package: bool) -> None:
    bad = layer_violations(path.read_text(), module, is_package)
    assert not bad, "\n".join(bad)


def test_the_layer_check_finds_upward_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..errors import ConfigurationError\n"
        "from ..repository.base import Repository\n"
        "if TYPE_CHECKING:\n"
        "    from ..task.base import Task\n"
        "def later():\n"
        "    from pydatatask.pipeline import Pipeline\n"
        "    from .. import cli\n"
        "    from . import local\n"
    )
    bad = layer_violations(source, "pydatatask.executor.example")
    assert [b.split(" imports ")[1].split(":")[0] for b in bad] == [
        "pydatatask.task.base",
        "pydatatask.pipeline",
        "pydatatask.cli",
    ]
    assert bad[0].startswith(
        "pydatatask.executor.example (line 5) imports pydatatask.task.base: the task layer"
    )
    assert layer_violations("from ..executor.base import Executor\n", "pydatatask.repository.x")
    assert layer_violations("from .. import Pipeline\n", "pydatatask.task.x")  # the facade
    assert layer_violations("from ..testing import RepositoryTests\n", "pydatatask.repository.x")
    assert layer_violations("from .repository import base\n", "pydatatask.backoff")
    assert not layer_violations("from .errors import ConfigurationError\n", "pydatatask.backoff")
    assert not layer_violations("from ..s3 import S3BucketRepository\n", "pydatatask.repository.s3._x")
    assert not layer_violations("from .cli import main\n", "pydatatask", is_package=True)


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
