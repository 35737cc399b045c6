"""Module attributes imported on first access (keeps ``import pydatatask`` light)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ("lazy_getattr",)


def lazy_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (relative to ``package``) on
    first access and caches the attribute in ``namespace`` (the module's globals)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
