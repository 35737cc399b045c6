"""The JSON Schema of pipeline files (``schema.json`` in this package) and the check of a
document against it, with the first error as one line naming its place.

``jsonschema`` is imported here only, when a file is checked: ``import pydatatask`` does
not load it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError, PipelineFileError
from ._document import Document, Path_
from ._environment import references

if TYPE_CHECKING:
    import jsonschema

__all__ = ("schema", "check", "describe_error", "expected_type", "NUMBER_TYPES", "ENVIRONMENT_NUMBER")

#: the JSON types a value written as ``"${ENV_VAR}"`` is converted to
NUMBER_TYPES = frozenset({"integer", "number"})
#: the pattern of the string the schema admits where it wants a number: one naming an
#: environment variable (``"${N}"``, ``"${N:-4}"``), converted once the variable is read
ENVIRONMENT_NUMBER = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"

_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The schema of pipeline files, as shipped in the package."""
    text = resources.files("pydatatask.config").joinpath("schema.json").read_text(encoding="utf-8")
    value: dict[str, Any] = json.loads(text)
    return value


def _numbers_only(node: Any) -> Any:
    """``node`` with each place that admits a number or a ``"${ENV_VAR}"`` string narrowed
    to the number: what a file is checked against, so that such a string is found (and
    converted) where it stands, and a string that names no variable is told a number is
    expected."""
    if isinstance(node, list):
        return [_numbers_only(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _numbers_only(value) for key, value in node.items()}
    kinds = out.get("type")
    if out.get("pattern") == ENVIRONMENT_NUMBER and isinstance(kinds, list) and "string" in kinds:
        del out["pattern"]
        rest = [kind for kind in kinds if kind != "string"]
        out["type"] = rest[0] if len(rest) == 1 else rest
    return out


@functools.cache
def _checked_schema() -> dict[str, Any]:
    value: dict[str, Any] = _numbers_only(schema())
    return value


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    return repr(value)


def expected_type(types: Any) -> str:
    """``"a whole number or a string"`` for the JSON type(s) ``types``."""
    if isinstance(types, str):
        types = [types]
    return " or ".join(_TYPES.get(t, t) for t in types)


def describe_error(error: jsonschema.ValidationError, doc: Document) -> tuple[Path_, str, bool]:
    """(path, what is wrong, whether the path names a key rather than a value)."""
    path: Path_ = tuple(error.absolute_path)
    instance = error.instance
    validator = error.validator
    spec: Any = error.validator_value
    if validator == "additionalProperties" and isinstance(instance, dict):
        known = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(k for k in instance if k not in known)
        key = extra[0] if extra else "?"
        known_text = ", ".join(k for k in known if k != "kind") or "none"
        return (*path, key), f"unknown key {key!r} (expected one of: {known_text})", True
    if validator == "required":
        missing = [k for k in spec if isinstance(instance, dict) and k not in instance]
        return path, f"missing the key {missing[0] if missing else spec[0]!r}", False
    if validator == "type":
        return path, f"expected {expected_type(spec)}, found {_found(instance)}", False
    if validator == "enum":
        return path, f"expected one of {', '.join(map(str, spec))}, found {_found(instance)}", False
    if validator == "const":
        return path, f"expected {spec!r}, found {_found(instance)}", False
    if validator == "pattern":
        what = error.schema.get("description", f"text matching {spec}")
        if isinstance(instance, str) and "${" in what and not instance.startswith("${"):
            # never repeat a literal credential
            return path, f"expected {what}, found a literal value", False
        return path, f"expected {what}, found {_found(instance)}", False
    if validator == "minProperties" and isinstance(instance, dict):
        return path, f"expected at least {spec} entry, found {len(instance)}", False
    if validator == "minItems" and isinstance(instance, list):
        return path, f"expected at least {spec} item, found {len(instance)}", False
    if validator == "minimum":
        return path, f"expected at least {spec}, found {_found(instance)}", False
    if validator == "propertyNames":
        return path, f"a name must be {error.schema.get('description', 'valid')}", False
    if validator == "oneOf":
        what = error.schema.get("description", "one of the allowed forms")
        return path, f"expected {what}, found {_found(instance)}", False
    return path, " ".join(error.message.split()), False


def _leaf(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The most specific error under ``oneOf``: that of the branch of the right type."""
    while error.context:
        typed = [e for e in error.context if e.validator != "type" and e.validator != "oneOf"]
        deeper = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        candidates = deeper or typed
        if not candidates:
            return error
        error = min(candidates, key=lambda e: -len(e.absolute_path))
    return error


def _number_from_environment(error: jsonschema.ValidationError) -> bool:
    """Whether ``error`` is a string naming environment variables where the schema wants a
    number: accepted here, converted and checked once the variables are read."""
    if error.validator != "type" or not isinstance(error.instance, str):
        return False
    types = {error.validator_value} if isinstance(error.validator_value, str) else set(error.validator_value)
    return bool(types & NUMBER_TYPES) and "string" not in types and bool(references(error.instance))


def check(doc: Document) -> dict[Path_, dict[str, Any]]:
    """Raise a :class:`~pydatatask.errors.PipelineFileError` for the first error of
    ``doc`` against the schema (the one written first in the file).

    Return the numbers written as ``"${ENV_VAR}"``: their paths and the part of the schema
    that applies to each, for :func:`~pydatatask.config._numbers.put_numbers`."""
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise MissingDependencyError("jsonschema", "config") from exc
    validator = jsonschema.Draft202012Validator(_checked_schema())
    errors = list(validator.iter_errors(doc.values))
    numbers: dict[Path_, dict[str, Any]] = {}
    found: list[tuple[tuple[int, int], PipelineFileError]] = []
    for error in errors:
        if error.validator in ("allOf", "if"):
            continue
        if _number_from_environment(error):
            numbers[tuple(error.absolute_path)] = dict(error.schema)
            continue
        if error.validator == "oneOf":
            error = _leaf(error)
        path, problem, is_key = describe_error(error, doc)
        failure = doc.error(path, problem, key=is_key)
        found.append(((failure.line, failure.column), failure))
    if found:
        found.sort(key=lambda item: item[0])
        raise found[0][1]
    others = [e for e in errors if not _number_from_environment(e)]
    if others:  # pragma: no cover - every keyword above has its own message
        raise doc.error((), " ".join(others[0].message.split()))
    return numbers
