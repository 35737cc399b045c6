"""Numbers taken from the environment: ``concurrency: "${N}"``.

Where the schema wants an integer or a number, :func:`~pydatatask.config._schema.check`
lets a string that names environment variables through; once the variables are read
(:func:`~pydatatask.config._environment.interpolate`), :func:`put_numbers` converts each
such value and checks it against what the schema says of that place (its bounds), so
``"${N}"`` holding ``0`` where at least 1 is expected is the same error as a literal ``0``,
naming the variable besides the place.

A message shows the value read unless the variable is a credential: named where the file
takes a credential, in a job's ``env``, or by a name that says so (``..._SECRET``,
``..._TOKEN``, ``..._PASSWORD``, ``..._KEY``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ._document import Document, Path_
from ._environment import references
from ._schema import describe_error, expected_type, schema

__all__ = ("put_numbers",)

_INTEGER = re.compile(r"[+-]?[0-9]+")
_CREDENTIAL_NAME = re.compile(r"SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.IGNORECASE)


@functools.cache
def _credential_keys() -> frozenset[str]:
    """The keys of the schema whose values are credentials (``"${ENV_VAR}"`` only)."""
    found: set[str] = set()

    def is_secret(spec: Any) -> bool:
        refs = [spec, *spec.get("allOf", ())] if isinstance(spec, dict) else []
        return any(isinstance(r, dict) and r.get("$ref") == "#/$defs/secret" for r in refs)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, spec in (node.get("properties") or {}).items():
                if is_secret(spec):
                    found.add(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    return frozenset(found)


def _strings(value: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))
    elif isinstance(value, str):
        yield path, value


def _credential_variables(doc: Document) -> set[str]:
    keys = _credential_keys()
    names: set[str] = set()
    for path, text in _strings(doc.values, ()):
        if (path and path[-1] in keys) or "env" in path[:-1]:
            names.update(name for name, _default in references(text))
    return names


def _convert(text: str, types: set[str]) -> int | float | None:
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if "number" not in types:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _at(values: Any, path: Path_) -> Any:
    for part in path:
        values = values[part]
    return values


def put_numbers(
    doc: Document,
    values: dict[str, Any],
    numbers: Mapping[Path_, Mapping[str, Any]],
    environ: Mapping[str, str],
) -> None:
    """Replace in ``values`` each string of ``numbers`` (path -> the schema of that place)
    by the number it holds, checked against that schema; a
    :class:`~pydatatask.errors.PipelineFileError` at the place otherwise."""
    if not numbers:
        return
    import jsonschema

    hidden = _credential_variables(doc)
    for path, spec in sorted(numbers.items(), key=lambda item: doc.where(item[0])):
        written = _at(doc.values, path)
        named = references(written)
        unset = [f"${{{name}}}" for name, default in named if name not in environ and default is not None]
        variables = [name for name, _default in named if name in environ]
        sources = []
        if variables:
            plural = "s" if len(variables) > 1 else ""
            sources.append(f"the environment variable{plural} {', '.join(variables)}")
        if unset:
            sources.append(f"the default of {', '.join(unset)}")
        source = " and ".join(sources)
        secret = any(name in hidden or _CREDENTIAL_NAME.search(name) for name, _default in named)
        types = {spec["type"]} if isinstance(spec["type"], str) else set(spec["type"])
        text = _at(values, path)
        number = _convert(text, types)
        expected = expected_type(sorted(types & {"integer", "number"}))
        if number is None:
            found = (
                "a value that is not one" if secret else (repr(text) if text.strip() else "an empty value")
            )
            raise doc.error(path, f"expected {expected}, found {found} (from {source})")
        errors = list(jsonschema.Draft202012Validator(dict(spec)).iter_errors(number))
        if errors:
            error = min(errors, key=lambda e: str(e.validator))
            problem = describe_error(error, doc)[1]
            if secret:
                problem = problem.split(", found ")[0] + ", found another value"
            raise doc.error(path, f"{problem} (from {source})")
        parent = _at(values, path[:-1])
        parent[path[-1]] = number
