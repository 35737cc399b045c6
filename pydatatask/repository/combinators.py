"""Views over other repositories: and, or, blocking, filter, translate keys, map values,
fallback and read-only.

A view computes its key set from **one listing of each child** (concurrently), with set
operations, so a scheduler tick costs one listing per underlying repository. Reads are
forwarded to the child that holds the key; writes are refused unless the view says where
they go (:class:`TranslateKeysRepository`, :class:`FallbackRepository`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from ..errors import (
    ConfigurationError,
    CorruptValueError,
    KeyNotFoundError,
    ReadOnlyRepositoryError,
    UnsupportedOperationError,
)
from ..keys import is_valid_key, validate_key
from .base import BlobRepository, MetadataRepository, Repository
from .listing import cached_keys

__all__ = (
    "RepositoryView",
    "AndRepository",
    "OrRepository",
    "BlockingRepository",
    "FilterRepository",
    "TranslateKeysRepository",
    "MapValuesRepository",
    "FallbackRepository",
    "ReadOnlyRepository",
)

log = logging.getLogger("pydatatask.repository")


async def _list_all(repos: Iterable[Repository]) -> list[set[str]]:
    return list(await asyncio.gather(*(cached_keys(r) for r in repos)))


class RepositoryView(Repository):
    """Base of the combinators: forwards reads to :meth:`_source`, refuses writes."""

    children: tuple[Repository, ...] = ()

    def __init__(self, *children: Repository) -> None:
        if not children:
            raise ConfigurationError(f"{type(self).__name__} needs at least one repository")
        for child in children:
            if not isinstance(child, Repository):
                raise ConfigurationError(f"{type(self).__name__}: {child!r} is not a Repository")
        self.children = children

    @property
    def is_writable(self) -> bool:
        return False

    async def validate(self, create: bool = False) -> None:
        for child in self.children:
            await child.validate(create)

    async def _source(self, key: str) -> Repository:
        """The child that holds ``key`` for reading."""
        if not await self._contains(key):
            raise KeyNotFoundError(key, self.describe())
        return self.children[0]

    async def _delete(self, key: str) -> None:
        raise ReadOnlyRepositoryError(f"{self.describe()} is a view; delete from its underlying repository")

    # ---- forwarded reads ----
    async def get(self, key: str) -> Any:
        """Read a metadata value through the view."""
        src = await self._source(validate_key(key))
        if not isinstance(src, (MetadataRepository, RepositoryView)):
            raise UnsupportedOperationError(f"{src.describe()} holds no metadata values")
        return await src.get(self._child_key(key))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Read several metadata values through the view (absent keys left out)."""
        out: dict[str, Any] = {}
        for key in keys:
            try:
                out[key] = await self.get(key)
            except KeyNotFoundError:
                pass
        return out

    async def read_bytes(self, key: str) -> bytes:
        """Read a blob value through the view."""
        src = await self._source(validate_key(key))
        if not isinstance(src, (BlobRepository, RepositoryView)):
            raise UnsupportedOperationError(f"{src.describe()} holds no blobs")
        return await src.read_bytes(self._child_key(key))

    async def read_text(self, key: str, encoding: str = "utf-8") -> str:
        """Read a blob value as text through the view."""
        return (await self.read_bytes(key)).decode(encoding)

    def open(self, key: str, mode: Literal["rb", "wb"] = "rb") -> Any:
        """Stream a blob through the view (``"rb"`` only, unless the view is writable)."""
        view = self

        class _Ctx:
            _cm: Any

            async def __aenter__(self) -> Any:
                if mode == "wb":
                    target = await view._write_target(validate_key(key))
                    if not isinstance(target, BlobRepository):
                        raise UnsupportedOperationError(f"{target.describe()} holds no blobs")
                    self._cm = target.open(view._child_key(key), "wb")
                else:
                    src = await view._source(validate_key(key))
                    if not isinstance(src, (BlobRepository, RepositoryView)):
                        raise UnsupportedOperationError(f"{src.describe()} holds no blobs")
                    self._cm = src.open(view._child_key(key), "rb")
                return await self._cm.__aenter__()

            async def __aexit__(self, *exc: Any) -> Any:
                return await self._cm.__aexit__(*exc)

        return _Ctx()

    # ---- writes (refused unless a subclass says where they go) ----
    async def _write_target(self, key: str) -> Repository:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only")

    def _child_key(self, key: str) -> str:
        return key

    async def put(self, key: str, value: Any) -> None:
        """Write a metadata value, where the view allows writes."""
        target = await self._write_target(validate_key(key))
        if not isinstance(target, MetadataRepository):
            raise UnsupportedOperationError(f"{target.describe()} holds no metadata values")
        await target.put(self._child_key(key), value)

    async def write_bytes(self, key: str, data: bytes) -> None:
        """Write a blob, where the view allows writes."""
        target = await self._write_target(validate_key(key))
        if not isinstance(target, BlobRepository):
            raise UnsupportedOperationError(f"{target.describe()} holds no blobs")
        await target.write_bytes(self._child_key(key), data)

    async def write_text(self, key: str, text: str, encoding: str = "utf-8") -> None:
        """Write text, where the view allows writes."""
        await self.write_bytes(key, text.encode(encoding))


class AndRepository(RepositoryView):
    """Keys present in **every** child. Reads come from the first child."""

    def describe(self) -> str:
        return "and(" + ", ".join(c.describe() for c in self.children) + ")"

    async def keys(self) -> set[str]:
        sets = await _list_all(self.children)
        return set.intersection(*sets)

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        for child in self.children:
            if not await child.contains(key):
                return False
        return True


class OrRepository(RepositoryView):
    """Keys present in **any** child. Reads come from the first child holding the key."""

    def describe(self) -> str:
        return "or(" + ", ".join(c.describe() for c in self.children) + ")"

    async def keys(self) -> set[str]:
        sets = await _list_all(self.children)
        return set().union(*sets)

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        for child in self.children:
            if await child.contains(key):
                return True
        return False

    async def _source(self, key: str) -> Repository:
        for child in self.children:
            if await child.contains(key):
                return child
        raise KeyNotFoundError(key, self.describe())


class BlockingRepository(RepositoryView):
    """Keys in ``source`` that are **not** in ``blocker``. Reads come from ``source``."""

    def __init__(self, source: Repository, blocker: Repository) -> None:
        super().__init__(source, blocker)

    def describe(self) -> str:
        return f"{self.children[0].describe()} unless in {self.children[1].describe()}"

    async def keys(self) -> set[str]:
        source, blocker = await _list_all(self.children)
        return source - blocker

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key) and not await self.children[1].contains(key)


Predicate = Callable[[Any], bool | Awaitable[bool]]


async def _call(pred: Predicate, arg: Any) -> bool:
    result = pred(arg)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


class FilterRepository(RepositoryView):
    """Keys of ``child`` accepted by a predicate on the key, and/or on the metadata value.

    Predicates may be plain or async functions. ``value_predicate`` needs a metadata
    child; values are fetched with one ``get_many`` per listing.
    """

    def __init__(
        self,
        child: Repository,
        key_predicate: Predicate | None = None,
        *,
        value_predicate: Predicate | None = None,
    ) -> None:
        super().__init__(child)
        if key_predicate is None and value_predicate is None:
            raise ConfigurationError("FilterRepository needs key_predicate and/or value_predicate")
        if value_predicate is not None and not isinstance(child, MetadataRepository):
            raise ConfigurationError("FilterRepository(value_predicate=...) needs a MetadataRepository")
        self.key_predicate = key_predicate
        self.value_predicate = value_predicate

    def describe(self) -> str:
        return f"filtered {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        keys = await self.children[0].keys()
        if self.key_predicate is not None:
            keys = {k for k in keys if await _call(self.key_predicate, k)}
        if self.value_predicate is not None:
            child = self.children[0]
            assert isinstance(child, MetadataRepository)
            warned: set[str] = self.__dict__.setdefault("_warned_corrupt", set())

            def skip(err: CorruptValueError) -> None:  # left out; named once per key
                if err.key not in warned:
                    warned.add(str(err.key))
                    log.warning("%s; %s leaves the key out", err, self.describe())

            values = await child.get_many(keys, on_corrupt=skip)
            keys = {k for k, v in values.items() if await _call(self.value_predicate, v)}
        return keys

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        child = self.children[0]
        if not await child.contains(key):
            return False
        if self.key_predicate is not None and not await _call(self.key_predicate, key):
            return False
        if self.value_predicate is not None:
            assert isinstance(child, MetadataRepository)
            try:
                value = await child.get(key)
            except KeyNotFoundError:
                return False
            return await _call(self.value_predicate, value)
        return True


class TranslateKeysRepository(RepositoryView):
    """Presents ``child`` under other key names.

    :param to_child: maps a key of this view to the child's key.
    :param from_child: maps a child's key to this view's key, or ``None`` to hide it.

    Reads, writes and deletes are forwarded with the translated key.
    """

    def __init__(
        self,
        child: Repository,
        to_child: Callable[[str], str],
        from_child: Callable[[str], str | None],
    ) -> None:
        super().__init__(child)
        self.to_child = to_child
        self.from_child = from_child

    @property
    def is_writable(self) -> bool:
        return self.children[0].is_writable

    def describe(self) -> str:
        return f"translated {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        out: set[str] = set()
        for k in await self.children[0].keys():
            mapped = self.from_child(k)
            if mapped is not None and is_valid_key(mapped):
                out.add(mapped)
        return out

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    def _child_key(self, key: str) -> str:
        return validate_key(self.to_child(key))

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(self._child_key(key))

    async def _source(self, key: str) -> Repository:
        return self.children[0]

    async def _write_target(self, key: str) -> Repository:
        return self.children[0]

    async def _delete(self, key: str) -> None:
        await self.children[0].delete(self._child_key(key))


class MapValuesRepository(RepositoryView):
    """A read-only view of a metadata repository with each value passed through ``fn``."""

    def __init__(self, child: MetadataRepository, fn: Callable[[Any], Any]) -> None:
        if not isinstance(child, MetadataRepository):
            raise ConfigurationError("MapValuesRepository needs a MetadataRepository")
        super().__init__(child)
        self.fn = fn

    def describe(self) -> str:
        return f"mapped {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        return await self.children[0].keys()

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key)

    async def get(self, key: str) -> Any:
        child = self.children[0]
        assert isinstance(child, MetadataRepository)
        result = self.fn(await child.get(key))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        child = self.children[0]
        assert isinstance(child, MetadataRepository)
        raw = await child.get_many(keys)
        out: dict[str, Any] = {}
        for k, v in raw.items():
            result = self.fn(v)
            if inspect.isawaitable(result):
                result = await result
            out[k] = result
        return out


class FallbackRepository(RepositoryView):
    """Reads from ``primary``, else from ``fallback``; keys are the union; writes and
    deletes go to ``primary``."""

    def __init__(self, primary: Repository, fallback: Repository) -> None:
        super().__init__(primary, fallback)

    @property
    def is_writable(self) -> bool:
        return self.children[0].is_writable

    def describe(self) -> str:
        return f"{self.children[0].describe()} (falling back to {self.children[1].describe()})"

    async def keys(self) -> set[str]:
        a, b = await _list_all(self.children)
        return a | b

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key) or await self.children[1].contains(key)

    async def _source(self, key: str) -> Repository:
        for child in self.children:
            if await child.contains(key):
                return child
        raise KeyNotFoundError(key, self.describe())

    async def _write_target(self, key: str) -> Repository:
        return self.children[0]

    async def _delete(self, key: str) -> None:
        await self.children[0].delete(key)


class ReadOnlyRepository(RepositoryView):
    """``child`` with every write and delete refused (:class:`ReadOnlyRepositoryError`)."""

    def __init__(self, child: Repository) -> None:
        super().__init__(child)

    def describe(self) -> str:
        return f"read-only {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        return await self.children[0].keys()

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key)

    async def _source(self, key: str) -> Repository:
        return self.children[0]
