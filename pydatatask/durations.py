"""Durations written as ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h30m"``, ``"1d"`` (or plain seconds)."""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ("parse_duration", "format_duration")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | float | int) -> float:
    """Return ``value`` in seconds. Numbers are seconds; strings combine ``<n><unit>`` parts
    with units ms, s, m, h, d (``"1h30m"``, ``"2.5s"``). Raises :class:`~pydatatask.errors.ConfigurationError`
    with the accepted forms on anything else."""
    if isinstance(value, bool):
        raise ConfigurationError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigurationError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigurationError(
            f"invalid duration {value!r}: expected a number of seconds or a string like '2s'"
        )
    text = value.strip().lower().replace(" ", "")
    try:
        return float(text) if text else _bad(value)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return _bad(value)
    return total


def _bad(value: str) -> float:
    raise ConfigurationError(
        f"invalid duration {value!r}: use a number of seconds or parts like '500ms', '2s', '5m', '1h30m', '1d'"
    )


def format_duration(seconds: float) -> str:
    """A short human form: ``"850ms"``, ``"12.3s"``, ``"4m05s"``, ``"2h10m"``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
