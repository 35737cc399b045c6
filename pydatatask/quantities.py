"""Resource quantities: memory sizes and CPU counts, in the forms Kubernetes uses."""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ("parse_memory", "format_memory", "parse_cpu")

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]i?|[kKMGTPE]?B?)?\s*$")
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "p": 10**15,
    "e": 10**18,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
    "pi": 2**50,
    "ei": 2**60,
}


def parse_memory(value: str | int | float) -> int:
    """Bytes in ``value``: a number of bytes, or Kubernetes-style quantities such as
    ``"512Mi"``, ``"2Gi"`` (powers of 1024), ``"1G"``, ``"1000M"``, ``"1GB"`` (powers of 1000).
    Raises :class:`~pydatatask.errors.ConfigurationError` naming the accepted forms on anything else."""
    if isinstance(value, bool):
        raise ConfigurationError(f"invalid memory size {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigurationError(f"a memory size cannot be negative: {value!r}")
        return int(value)
    if isinstance(value, str):
        match = _MEMORY.match(value)
        if match:
            unit = (match.group(2) or "").lower()
            if unit.endswith("b") and len(unit) == 2:
                unit = unit[0]
            if unit in _FACTORS:
                return int(float(match.group(1)) * _FACTORS[unit])
    raise ConfigurationError(
        f"invalid memory size {value!r}: use bytes or a quantity like '512Mi', '2Gi' "
        "(1024-based) or '1G', '1000M' (1000-based)"
    )


def format_memory(n: int) -> str:
    """A short form of ``n`` bytes (``"512Mi"``, ``"2Gi"``, ``"1000000"``)."""
    for unit, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def parse_cpu(value: str | float | int) -> float:
    """Kubernetes CPU quantity (``"500m"``, ``"2"``, ``0.5``) in cores."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000
        return float(text)
    except ValueError:
        raise ConfigurationError(f"invalid CPU quantity {value!r} (use e.g. '500m' or '2')") from None
