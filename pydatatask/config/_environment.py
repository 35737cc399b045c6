"""``${ENV_VAR}`` in a pipeline file, and ``package.module:name`` dotted paths.

Every string of the file may name environment variables: ``${NAME}`` (an error when it is
not set) or ``${NAME:-default}``; ``$${`` is a literal ``${``. The templates of tasks
(``command``, ``script``, ``manifest``) are left alone: the shell and the job's environment
read their variables when the job runs, and a secret never lands in a command line.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping
from typing import Any

from ._document import Document, Path_

__all__ = ("interpolate", "import_object", "references", "TEMPLATE_FIELDS")

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: task fields that are Jinja2 templates of the job, not settings of the file
TEMPLATE_FIELDS = frozenset({"command", "script", "manifest"})


def references(text: str) -> list[tuple[str, str | None]]:
    """``(name, default)`` of each ``${NAME}`` or ``${NAME:-default}`` in ``text`` (a
    literal ``$${`` is none)."""
    return [(m.group(1), m.group(2)) for m in _VAR.finditer(text) if m.group(1) is not None]


def _is_template(path: Path_) -> bool:
    return len(path) == 3 and path[0] == "tasks" and path[2] in TEMPLATE_FIELDS


def interpolate(doc: Document, environ: Mapping[str, str]) -> tuple[dict[str, Any], set[str]]:
    """The values of ``doc`` with the environment variables put in, and the set of the
    values that came from the environment (kept out of every message)."""
    secrets: set[str] = set()

    def text(value: str, path: Path_) -> str:
        def put(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in environ:
                found = environ[name]
                if found:
                    secrets.add(found)
                return found
            if default is not None:
                return default
            raise doc.error(
                path, f"the environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            )

        return _VAR.sub(put, value)

    def walk(value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and not _is_template(path):
            return text(value, path)
        return value

    result: dict[str, Any] = walk(doc.values, ())
    return result, secrets


def import_object(doc: Document, path: Path_, dotted: str) -> Any:
    """The object named ``package.module:name`` (``name`` may be dotted: ``Class.method``)."""
    module_name, _, attr = dotted.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise doc.error(path, f"cannot import {dotted!r}: {exc}") from exc
    except Exception as exc:
        raise doc.error(
            path, f"cannot import {dotted!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            where = getattr(obj, "__file__", None) or module_name
            raise doc.error(
                path, f"cannot import {dotted!r}: {module_name} has no {attr!r} ({where})"
            ) from exc
    return obj


def add_import_path(folders: list[str]) -> None:
    """Put ``folders`` in front of the import path (once each)."""
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
