"""Functions that tests/config/every_kind.yaml names by dotted path."""

from __future__ import annotations

from typing import Any


def is_text(key: str) -> bool:
    return not key.startswith("_")


def to_child(key: str) -> str:
    return f"k-{key}"


def from_child(key: str) -> str | None:
    return key[2:] if key.startswith("k-") else None


def upper(value: Any) -> Any:
    return {k: str(v).upper() for k, v in value.items()}


def by_folder(key: str) -> str:
    return key.split("/")[0]


async def noop(key: str) -> None:
    return None


def plain_noop(key: str) -> None:  # a plain function: pools and Dask run those
    return None


def on_failure(event: Any) -> None:
    return None


class NotAnException:
    pass


async def summarize(event: Any, meta: Any) -> None:
    await meta.put("last-run", {"event": event.name})
