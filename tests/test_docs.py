"""The API reference covers every public module."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pydatatask

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_public_module_has_an_automodule_entry() -> None:
    root = Path(pydatatask.__file__).parent
    modules = []
    for info in pkgutil.walk_packages([str(root)], "pydatatask."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        if info.ispkg:
            # a package is documented itself when all its modules are private (its public
            # names are defined there and documented where the package re-exports them)
            path = root.joinpath(*info.name.split(".")[1:])
            children = [child.name for child in pkgutil.iter_modules([str(path)])]
            if not children or not all(name.startswith("_") for name in children):
                continue
        modules.append(info.name)
    entries = re.findall(r"^\.\. automodule:: (\S+)$", (DOCS / "api.rst").read_text(), re.M)
    twice = sorted({m for m in entries if entries.count(m) > 1})
    assert not twice, f"docs/api.rst documents {twice} twice (Sphinx refuses duplicate descriptions)"
    documented = set(entries)
    missing = sorted(set(modules) - documented)
    assert not missing, f"docs/api.rst has no `.. automodule::` for {missing}"
    stale = sorted(documented - set(modules) - {"pydatatask"})
    assert not stale, f"docs/api.rst documents modules that do not exist: {stale}"
