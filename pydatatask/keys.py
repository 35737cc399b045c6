"""What a valid key is.

A key names one value. It may be a **path**: segments joined by ``/``, where

- no segment is empty (no leading or trailing ``/``, no ``//``), and none is ``.`` or ``..``;
- every character is printable (``str.isprintable``: letters, digits, marks, punctuation,
  symbols of any script, and the ASCII space), so no control character, no NUL, no tab or
  newline, no other white space, no format character (such as a zero-width joiner), no
  unassigned, surrogate or private-use code point;
- the key is in Unicode normalization form NFC;
- the key is 1 to 1,024 bytes long in UTF-8 (the S3 limit of an object name).

Flat names such as ``moby-dick_v2.txt`` are paths of one segment; nested names such as
``images/2024/01/IMG 0001.jpg`` or ``corpus/Éluard/poème.txt`` are keys too.

**NFC**: a key that is not in NFC is refused (the error shows its NFC form), never
normalized silently. Two names that differ only in normalization (``é`` as one code point
or as ``e`` and a combining accent) therefore can never be two keys, and a key is stored
exactly as it is given: what a backend lists is what the user wrote. A stored name that
is not in NFC (written by another program) is skipped by listings with the one warning,
like any other name that is not a valid key.

Backends refuse the keys they cannot hold faithfully with
:class:`~pydatatask.errors.InvalidKeyError` naming their own rule (a file name segment
over 255 bytes, a Docker tag outside the tag grammar); see ``docs/keys.rst``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import InvalidKeyError

__all__ = (
    "KEY_RULE",
    "MAX_KEY_BYTES",
    "MAX_KEY_LENGTH",
    "is_valid_key",
    "validate_key",
    "filter_valid_keys",
    "key_segments",
)

#: the longest key, in UTF-8 bytes
MAX_KEY_BYTES = 1024
#: the same limit under its older name (a key has at most this many UTF-8 bytes)
MAX_KEY_LENGTH = MAX_KEY_BYTES
KEY_RULE = (
    "a key is a path of segments joined by '/' (none empty, none '.' or '..'), of printable "
    "characters (spaces allowed, no control characters), in Unicode NFC, of 1-1024 UTF-8 bytes"
)

# The common case, checked by one precompiled regex: printable ASCII (space to '~') with
# single '/' between non-empty segments; then '.' and '..' segments, looked for only when
# a segment starts with a dot. ASCII text is always NFC and its length in characters is its
# length in bytes.
_ASCII_KEY_RE = re.compile(r"[\x20-\x2e\x30-\x7e]+(?:/[\x20-\x2e\x30-\x7e]+)*")


def _dot_segment(key: str) -> bool:
    """Whether ``key`` (segments already non-empty) has a ``.`` or ``..`` segment."""
    return (
        key in (".", "..")
        or key.startswith(("./", "../"))
        or key.endswith(("/.", "/.."))
        or "/./" in key
        or "/../" in key
    )


def _ascii_ok(key: str) -> bool:
    return (
        len(key) <= MAX_KEY_BYTES
        and _ASCII_KEY_RE.fullmatch(key) is not None
        and ((key[0] != "." and "/." not in key) or not _dot_segment(key))
    )


def _slow_ok(key: str) -> bool:
    """The full rule, for keys outside printable ASCII."""
    return _reason(key) is None


def is_valid_key(key: object) -> bool:
    """Return whether ``key`` follows the key rule."""
    if type(key) is not str and not isinstance(key, str):
        return False
    if key.isascii():
        return _ascii_ok(key)
    return _slow_ok(key)


_recent: dict[str, None] = {}
_match = _ASCII_KEY_RE.fullmatch


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is valid, else raise :class:`~pydatatask.errors.InvalidKeyError`.

    The error names the key (its ``repr``, shortened when long) and the part of the rule
    it breaks.
    """
    if type(key) is str and key in _recent:  # hot: a job touches several repositories with one key
        return key
    if (
        type(key) is str
        and key.isascii()
        and len(key) <= MAX_KEY_BYTES
        and _match(key) is not None
        and ((key[0] != "." and "/." not in key) or not _dot_segment(key))
    ) or (isinstance(key, str) and not key.isascii() and _slow_ok(key)):
        if len(_recent) >= 4096:
            _recent.clear()
        _recent[key] = None
        return key
    reason = _reason(key)
    raise InvalidKeyError(key, reason or KEY_RULE)


def key_segments(key: str) -> list[str]:
    """The segments of a valid ``key`` (``"a/b c/d"`` -> ``["a", "b c", "d"]``)."""
    return validate_key(key).split("/")


_CATEGORIES = {
    "Cc": "control character",
    "Cf": "format character",
    "Cs": "surrogate",
    "Co": "private-use character",
    "Cn": "unassigned code point",
}


def _reason(key: object) -> str | None:
    """What part of the rule ``key`` breaks, or None if it is valid."""
    if not isinstance(key, str):
        return f"keys are str, not {type(key).__name__}"
    if not key:
        return "a key may not be empty; " + KEY_RULE
    for i, c in enumerate(key):
        if not c.isprintable():
            name = unicodedata.name(c, "") or f"a {_CATEGORIES.get(unicodedata.category(c), 'character')}"
            return (
                f"character {i} is {name} (U+{ord(c):04X}), which is not printable: keys hold no "
                "control, format, white-space (other than the space), unassigned or surrogate characters"
            )
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"a key has at most {MAX_KEY_BYTES} bytes in UTF-8, this one has {size}"
    if key.startswith("/"):
        return "a key may not start with '/' (keys are relative paths)"
    if key.endswith("/"):
        return "a key may not end with '/'"
    for segment in key.split("/"):
        if not segment:
            return "a key may not contain an empty segment ('//')"
        if segment in (".", ".."):
            return f"a key may not contain a {segment!r} segment"
    if not unicodedata.is_normalized("NFC", key):
        nfc = ascii(unicodedata.normalize("NFC", key))
        if len(nfc) > 120:
            nfc = nfc[:100] + "..." + nfc[-12:]
        return f"a key must be in Unicode NFC (written {ascii(key)[:120]}); its NFC form is {nfc}"
    return None


#: printable ASCII and newlines: the text of many names joined by newlines (no newline is
#: in a valid key)
_ASCII_LINES_RE = re.compile(r"[\x20-\x7e\n]*")


def _all_plain_keys(names: list[str]) -> bool:
    """Whether every one of ``names`` is a valid key of printable ASCII with no segment
    starting with ``.``, looked at together (what most listings hold: one pass over the
    names joined by newlines, instead of a regex match per name). False says nothing: the
    names are then checked one by one."""
    try:
        joined = "\n".join(names)
    except TypeError:
        return False  # not all str
    return (
        bool(joined)
        and joined.isascii()
        and _ASCII_LINES_RE.fullmatch(joined) is not None
        and joined.count("\n") == len(names) - 1  # no newline inside a name
        and min(map(len, names)) > 0
        and max(map(len, names)) <= MAX_KEY_BYTES
        # no empty segment, no leading or trailing '/'
        and "//" not in joined
        and "\n/" not in joined
        and "/\n" not in joined
        and joined[0] != "/"
        and joined[-1] != "/"
        # no segment starting with '.' (so no '.' or '..' segment)
        and joined[0] != "."
        and "/." not in joined
        and "\n." not in joined
    )


def filter_valid_keys(names: Iterable[str]) -> tuple[set[str], list[str]]:
    """Split stored names into (valid keys, rejected names)."""
    names = names if isinstance(names, list) else list(names)
    if len(names) > 8 and _all_plain_keys(names):
        return set(names), []
    good: set[str] = set()
    bad: list[str] = []
    match = _ASCII_KEY_RE.fullmatch
    for name in names:
        if type(name) is str and name.isascii():
            ok = (
                len(name) <= MAX_KEY_BYTES
                and match(name) is not None
                and ((name[0] != "." and "/." not in name) or not _dot_segment(name))
            )
        else:
            ok = is_valid_key(name)
        if ok:
            good.add(name)
        else:
            bad.append(name)
    return good, bad
