"""What a valid key is.

A key is a ``str`` of 1 to 200 characters drawn from ASCII letters, digits, ``-``, ``_``
and ``.``, that does not start with ``.`` or ``-``. The rule keeps every key safe as a
file name, an S3 object name part, a Mongo ``_id`` and a shell word, while admitting real
dataset names such as ``moby-dick_v2.txt``. Backends with a narrower alphabet (Kubernetes
names, Docker tags) encode keys themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import InvalidKeyError

__all__ = ("KEY_RULE", "MAX_KEY_LENGTH", "is_valid_key", "validate_key", "filter_valid_keys")

MAX_KEY_LENGTH = 200
KEY_RULE = (
    "a key is 1-200 characters of ASCII letters, digits, '-', '_' and '.', not starting with '.' or '-'"
)
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


def is_valid_key(key: object) -> bool:
    """Return whether ``key`` follows the key rule."""
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


_recent: dict[str, None] = {}


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is valid, else raise :class:`~pydatatask.errors.InvalidKeyError`.

    The error names the key and the part of the rule it breaks.
    """
    if type(key) is str and key in _recent:  # hot: a job touches several repositories with one key
        return key
    if isinstance(key, str) and _KEY_RE.fullmatch(key) is not None:
        if len(_recent) >= 4096:
            _recent.clear()
        _recent[key] = None
        return key
    raise InvalidKeyError(key, _reason(key))


def _reason(key: object) -> str:
    if not isinstance(key, str):
        return f"keys are str, not {type(key).__name__}"
    if not key:
        return "a key may not be empty; " + KEY_RULE
    if len(key) > MAX_KEY_LENGTH:
        return f"a key has at most {MAX_KEY_LENGTH} characters, this one has {len(key)}"
    if key[0] in ".-":
        return f"a key may not start with {key[0]!r}; " + KEY_RULE
    bad = sorted({c for c in key if not (c.isascii() and (c.isalnum() or c in "-_."))})
    return f"characters {''.join(bad)!r} are not allowed; " + KEY_RULE


def filter_valid_keys(names: Iterable[str]) -> tuple[set[str], list[str]]:
    """Split stored names into (valid keys, rejected names)."""
    good: set[str] = set()
    bad: list[str] = []
    match = _KEY_RE.fullmatch
    for name in names:
        if match(name) is not None:
            good.add(name)
        else:
            bad.append(name)
    return good, bad
