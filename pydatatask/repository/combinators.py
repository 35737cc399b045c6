"""Views over other repositories: and, or, blocking, filter, translate keys, map values,
fallback and read-only.

A view computes its key set from **one listing of each child** (concurrently, through
:func:`~pydatatask.repository.listing.cached_keys`), with set operations, so a scheduler
tick costs one listing per underlying repository however many views and tasks share it.
Reads are forwarded to the child that holds the key; writes are refused unless the view
says where they go (:class:`TranslateKeysRepository`, :class:`FallbackRepository`).

**A view is the kind of repository its reads come from.** Built over metadata
repositories a view is a :class:`MetadataView` (a
:class:`~pydatatask.repository.MetadataRepository`), over blob repositories a
:class:`BlobView` (a :class:`~pydatatask.repository.BlobRepository`), for the type checker
as well as for ``isinstance``. The children that decide the kind are those reads come
from: the first child of :class:`AndRepository`, the source of
:class:`BlockingRepository`, the one child of the single-child views, and *every* child
of :class:`OrRepository` and :class:`FallbackRepository` (which read from whichever holds
the key). When those children are of different kinds, or of neither (a
:class:`~pydatatask.repository.DirectoryRepository`), the view is a plain
:class:`RepositoryView`: it lists and answers ``contains``, which is all that readiness
needs (``AndRepository(files, yaml_records)``).

Every view also says which stored values a key depends on (:meth:`RepositoryView.underlying`)
and, the other way round, under which keys a stored value is seen
(:meth:`RepositoryView.view_keys`), so the scheduler can gate a downstream task on the
success of the upstream job that wrote what it reads, whatever views sit between them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Self, overload

from ..errors import ConfigurationError, CorruptValueError, KeyNotFoundError
from ..keys import is_valid_key, validate_key
from .base import BlobRepository, MetadataRepository, Repository
from .listing import cached_keys
from .view import BlobView, MetadataView, RepositoryView, _blobs, _list_all, _members, _metadata

__all__ = (
    "AndRepository",
    "AndMetadataView",
    "AndBlobView",
    "OrRepository",
    "OrMetadataView",
    "OrBlobView",
    "BlockingRepository",
    "BlockingMetadataView",
    "BlockingBlobView",
    "FilterRepository",
    "FilterMetadataView",
    "FilterBlobView",
    "TranslateKeysRepository",
    "TranslateKeysMetadataView",
    "TranslateKeysBlobView",
    "MapValuesRepository",
    "FallbackRepository",
    "FallbackMetadataView",
    "FallbackBlobView",
    "ReadOnlyRepository",
    "ReadOnlyMetadataView",
    "ReadOnlyBlobView",
)

log = logging.getLogger("pydatatask.repository")


# ---------------------------------------------------------------- and, or, blocking
class AndRepository(RepositoryView):
    """Keys present in **every** child. Reads come from the first child, which decides
    the kind of the view."""

    @overload
    def __new__(cls, first: MetadataRepository, /, *rest: Repository) -> AndMetadataView: ...
    @overload
    def __new__(cls, first: BlobRepository, /, *rest: Repository) -> AndBlobView: ...
    @overload
    def __new__(cls, first: Repository, /, *rest: Repository) -> AndRepository: ...
    def __new__(cls, *children: Repository) -> AndRepository:
        return cls._make(children)

    def describe(self) -> str:
        return "and(" + ", ".join(c.describe() for c in self.children) + ")"

    async def keys(self) -> set[str]:
        sets = await _list_all(self.children)
        return set.intersection(*sets)

    async def _contains(self, key: str) -> bool:
        for child in self.children:
            if not await child.contains(key):
                return False
        return True

    async def _admit(self, keys: list[str]) -> list[str]:
        held = set(keys)
        for child in self.children[1:]:
            held &= await _members(child, sorted(held))
        return [k for k in keys if k in held]


class AndMetadataView(AndRepository, MetadataView):
    """An :class:`AndRepository` whose first child holds metadata."""


class AndBlobView(AndRepository, BlobView):
    """An :class:`AndRepository` whose first child holds blobs."""


AndRepository._kinds = (AndMetadataView, AndBlobView)


class _FirstHolder(RepositoryView):
    """Reads come from the first child holding the key (or, fallback)."""

    _reads_any_child = True

    async def _source(self, key: str) -> tuple[Repository, str]:
        for child in self.children:
            if await child.contains(key):
                return child, key
        raise KeyNotFoundError(key, self.describe())

    async def _contains(self, key: str) -> bool:
        for child in self.children:
            if await child.contains(key):
                return True
        return False

    async def keys(self) -> set[str]:
        sets = await _list_all(self.children)
        return set().union(*sets)


class _FirstHolderMetadata(_FirstHolder, MetadataView):
    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        todo = list(keys)
        for child in self.children:
            if not todo:
                break
            got = await _metadata(child)._get_many(todo)
            out.update(got)
            todo = [k for k in todo if k not in got]
        return out


class OrRepository(_FirstHolder):
    """Keys present in **any** child. Reads come from the first child holding the key;
    the view is of a kind only when every child is."""

    @overload
    def __new__(cls, *children: MetadataRepository) -> OrMetadataView: ...
    @overload
    def __new__(cls, *children: BlobRepository) -> OrBlobView: ...
    @overload
    def __new__(cls, *children: Repository) -> OrRepository: ...
    def __new__(cls, *children: Repository) -> OrRepository:
        return cls._make(children)

    def describe(self) -> str:
        return "or(" + ", ".join(c.describe() for c in self.children) + ")"


class OrMetadataView(OrRepository, _FirstHolderMetadata):
    """An :class:`OrRepository` of metadata repositories."""


class OrBlobView(OrRepository, BlobView):
    """An :class:`OrRepository` of blob repositories."""


OrRepository._kinds = (OrMetadataView, OrBlobView)


class BlockingRepository(RepositoryView):
    """Keys in ``source`` that are **not** in ``blocker``. Reads come from ``source``,
    which decides the kind of the view."""

    @overload
    def __new__(cls, source: MetadataRepository, blocker: Repository) -> BlockingMetadataView: ...
    @overload
    def __new__(cls, source: BlobRepository, blocker: Repository) -> BlockingBlobView: ...
    @overload
    def __new__(cls, source: Repository, blocker: Repository) -> BlockingRepository: ...
    def __new__(cls, source: Repository, blocker: Repository) -> BlockingRepository:
        return cls._make((source, blocker))

    def describe(self) -> str:
        return f"{self.children[0].describe()} unless in {self.children[1].describe()}"

    async def keys(self) -> set[str]:
        source, blocker = await _list_all(self.children)
        return source - blocker

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key) and not await self.children[1].contains(key)

    async def _admit(self, keys: list[str]) -> list[str]:
        blocked = await _members(self.children[1], keys)
        return [k for k in keys if k not in blocked]


class BlockingMetadataView(BlockingRepository, MetadataView):
    """A :class:`BlockingRepository` whose source holds metadata."""


class BlockingBlobView(BlockingRepository, BlobView):
    """A :class:`BlockingRepository` whose source holds blobs."""


BlockingRepository._kinds = (BlockingMetadataView, BlockingBlobView)


# ---------------------------------------------------------------- filter
Predicate = Callable[[Any], bool | Awaitable[bool]]


async def _call(pred: Predicate, arg: Any) -> bool:
    result = pred(arg)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


class FilterRepository(RepositoryView):
    """Keys of ``child`` accepted by a predicate on the key, and/or on the metadata value.

    Predicates may be plain or async functions. ``value_predicate`` needs a metadata
    child; values are fetched with one bulk read per listing. A value that does not
    decode cannot be judged: its key is left out of the listing (with one warning), and
    ``contains``, ``get`` and ``get_many`` report it as the child does.
    """

    key_predicate: Predicate | None
    value_predicate: Predicate | None
    _warned_corrupt: set[str]

    @overload
    def __new__(
        cls,
        child: MetadataRepository,
        key_predicate: Predicate | None = None,
        *,
        value_predicate: Predicate | None = None,
    ) -> FilterMetadataView: ...
    @overload
    def __new__(
        cls,
        child: BlobRepository,
        key_predicate: Predicate | None = None,
        *,
        value_predicate: Predicate | None = None,
    ) -> FilterBlobView: ...
    @overload
    def __new__(
        cls,
        child: Repository,
        key_predicate: Predicate | None = None,
        *,
        value_predicate: Predicate | None = None,
    ) -> FilterRepository: ...
    def __new__(
        cls,
        child: Repository,
        key_predicate: Predicate | None = None,
        *,
        value_predicate: Predicate | None = None,
    ) -> FilterRepository:
        if key_predicate is None and value_predicate is None:
            raise ConfigurationError("FilterRepository needs key_predicate and/or value_predicate")
        if value_predicate is not None and not isinstance(child, MetadataRepository):
            raise ConfigurationError(
                f"FilterRepository(value_predicate=...) needs a MetadataRepository, not {child.describe()}"
            )
        self = cls._make((child,))
        self.key_predicate = key_predicate
        self.value_predicate = value_predicate
        self._warned_corrupt = set()
        return self

    def describe(self) -> str:
        return f"filtered {self.children[0].describe()}"

    async def _judge(self, values: dict[str, Any]) -> set[str]:
        assert self.value_predicate is not None
        accepted: set[str] = set()
        for k, v in values.items():
            if isinstance(v, CorruptValueError):
                if k not in self._warned_corrupt:
                    self._warned_corrupt.add(k)
                    log.warning("%s; %s leaves the key out", v, self.describe())
            elif await _call(self.value_predicate, v):
                accepted.add(k)
        return accepted

    async def keys(self) -> set[str]:
        keys = await cached_keys(self.children[0])
        if self.key_predicate is not None:
            keys = {k for k in keys if await _call(self.key_predicate, k)}
        if self.value_predicate is not None:
            values = await _metadata(self.children[0])._get_many(sorted(keys))
            keys = await self._judge(values)
        return set(keys)

    async def _contains(self, key: str) -> bool:
        child = self.children[0]
        if self.key_predicate is not None and not await _call(self.key_predicate, key):
            return False
        if self.value_predicate is not None:
            try:  # a value that does not decode raises here: asked about one key, say why
                value = await _metadata(child).get(key)
            except KeyNotFoundError:
                return False
            return await _call(self.value_predicate, value)
        return await child.contains(key)

    async def _source(self, key: str) -> tuple[Repository, str]:
        if self.key_predicate is not None and not await _call(self.key_predicate, key):
            raise KeyNotFoundError(key, self.describe())
        return self.children[0], key

    async def _admit(self, keys: list[str]) -> list[str]:
        if self.key_predicate is None:
            return keys
        return [k for k in keys if await _call(self.key_predicate, k)]


class FilterMetadataView(FilterRepository, MetadataView):
    """A :class:`FilterRepository` over metadata."""

    async def _get(self, key: str) -> Any:
        value = await super()._get(key)
        if self.value_predicate is not None and not await _call(self.value_predicate, value):
            raise KeyNotFoundError(key, self.describe())
        return value

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        got = await super()._get_many(keys)
        if self.value_predicate is None:
            return got
        out: dict[str, Any] = {}
        for k, v in got.items():
            if isinstance(v, CorruptValueError) or await _call(self.value_predicate, v):
                out[k] = v
        return out


class FilterBlobView(FilterRepository, BlobView):
    """A :class:`FilterRepository` over blobs (by key only)."""


FilterRepository._kinds = (FilterMetadataView, FilterBlobView)


# ---------------------------------------------------------------- translate, map
class TranslateKeysRepository(RepositoryView):
    """Presents ``child`` under other key names.

    :param to_child: maps a key of this view to the child's key.
    :param from_child: maps a child's key to this view's key, or ``None`` to hide it.

    Reads, writes and deletes are forwarded with the translated key (the view is writable
    when the child is).
    """

    to_child: Callable[[str], str]
    from_child: Callable[[str], str | None]

    @overload
    def __new__(
        cls,
        child: MetadataRepository,
        to_child: Callable[[str], str],
        from_child: Callable[[str], str | None],
    ) -> TranslateKeysMetadataView: ...
    @overload
    def __new__(
        cls, child: BlobRepository, to_child: Callable[[str], str], from_child: Callable[[str], str | None]
    ) -> TranslateKeysBlobView: ...
    @overload
    def __new__(
        cls, child: Repository, to_child: Callable[[str], str], from_child: Callable[[str], str | None]
    ) -> TranslateKeysRepository: ...
    def __new__(
        cls, child: Repository, to_child: Callable[[str], str], from_child: Callable[[str], str | None]
    ) -> TranslateKeysRepository:
        self = cls._make((child,))
        self.to_child = to_child
        self.from_child = from_child
        return self

    @property
    def is_writable(self) -> bool:
        return self.children[0].is_writable

    @property
    def keeps_keys(self) -> bool:
        return False

    def describe(self) -> str:
        return f"translated {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        out: set[str] = set()
        for k in await cached_keys(self.children[0]):
            mapped = self.from_child(k)
            if mapped is not None and is_valid_key(mapped):
                out.add(mapped)
        return out

    def _child_key(self, key: str) -> str:
        return validate_key(self.to_child(key))

    def _view_key(self, index: int, child_key: str) -> str | None:
        return self.from_child(child_key)

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(self._child_key(key))

    async def _source(self, key: str) -> tuple[Repository, str]:
        return self.children[0], self._child_key(key)

    async def _admit(self, keys: list[str]) -> list[str]:
        return keys

    async def _write_target(self, key: str) -> tuple[Repository, str]:
        return self.children[0], self._child_key(key)

    async def _delete(self, key: str) -> None:
        await self.children[0].delete(self._child_key(key))


class TranslateKeysMetadataView(TranslateKeysRepository, MetadataView):
    """A :class:`TranslateKeysRepository` over metadata."""


class TranslateKeysBlobView(TranslateKeysRepository, BlobView):
    """A :class:`TranslateKeysRepository` over blobs."""


TranslateKeysRepository._kinds = (TranslateKeysMetadataView, TranslateKeysBlobView)


class MapValuesRepository(MetadataView):
    """A read-only view of a metadata repository with each value passed through ``fn``
    (a plain or async function). Values that do not decode are reported as they are."""

    fn: Callable[[Any], Any]

    def __new__(cls, child: MetadataRepository, fn: Callable[[Any], Any]) -> Self:
        if not isinstance(child, MetadataRepository):
            raise ConfigurationError(f"MapValuesRepository needs a MetadataRepository, not {child!r}")
        self = cls._make((child,))
        self.fn = fn
        return self

    def describe(self) -> str:
        return f"mapped {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        return set(await cached_keys(self.children[0]))

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key)

    async def _source(self, key: str) -> tuple[Repository, str]:
        return self.children[0], key

    def source_of(self, key: str) -> tuple[Repository, str] | None:
        return None  # the stored value is not what the view reads

    async def _map(self, value: Any) -> Any:
        result = self.fn(value)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _get(self, key: str) -> Any:
        return await self._map(await super()._get(key))

    async def _admit(self, keys: list[str]) -> list[str]:
        return keys

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        raw = await super()._get_many(keys)
        return {k: v if isinstance(v, CorruptValueError) else await self._map(v) for k, v in raw.items()}


# ---------------------------------------------------------------- fallback, read-only
class FallbackRepository(_FirstHolder):
    """Reads from ``primary``, else from ``fallback``; keys are the union; writes and
    deletes go to ``primary`` (a deleted key shows the fallback's value again, if any).
    The view is of a kind only when both children are."""

    @overload
    def __new__(cls, primary: MetadataRepository, fallback: MetadataRepository) -> FallbackMetadataView: ...
    @overload
    def __new__(cls, primary: BlobRepository, fallback: BlobRepository) -> FallbackBlobView: ...
    @overload
    def __new__(cls, primary: Repository, fallback: Repository) -> FallbackRepository: ...
    def __new__(cls, primary: Repository, fallback: Repository) -> FallbackRepository:
        return cls._make((primary, fallback))

    @property
    def is_writable(self) -> bool:
        return self.children[0].is_writable

    def describe(self) -> str:
        return f"{self.children[0].describe()} (falling back to {self.children[1].describe()})"

    async def _write_target(self, key: str) -> tuple[Repository, str]:
        return self.children[0], key

    async def _delete(self, key: str) -> None:
        await self.children[0].delete(key)


class FallbackMetadataView(FallbackRepository, _FirstHolderMetadata):
    """A :class:`FallbackRepository` of metadata repositories."""

    async def _create(self, key: str, value: Any) -> bool:
        if await self.children[1].contains(key):
            return False
        return await _metadata(self.children[0]).create(key, value)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        primary = _metadata(self.children[0])
        if await primary.contains(key):
            return await primary.replace_if(key, expected, value)
        try:
            current = await _metadata(self.children[1]).get(key)
        except KeyNotFoundError:
            return False
        # the value seen is the fallback's: install the new one in the primary, unless
        # another writer got there first
        return current == expected and await primary.create(key, value)


class FallbackBlobView(FallbackRepository, BlobView):
    """A :class:`FallbackRepository` of blob repositories."""

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        if await self.children[1].contains(key):
            return False
        return await _blobs(self.children[0]).create_bytes(key, data)

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        primary = _blobs(self.children[0])
        if await primary.contains(key):
            return await primary.replace_bytes_if(key, expected, data)
        try:
            current = await _blobs(self.children[1]).read_bytes(key)
        except KeyNotFoundError:
            return False
        return current == expected and await primary.create_bytes(key, data)


FallbackRepository._kinds = (FallbackMetadataView, FallbackBlobView)


class ReadOnlyRepository(RepositoryView):
    """``child`` with every write and delete refused (:class:`ReadOnlyRepositoryError`)."""

    @overload
    def __new__(cls, child: MetadataRepository) -> ReadOnlyMetadataView: ...
    @overload
    def __new__(cls, child: BlobRepository) -> ReadOnlyBlobView: ...
    @overload
    def __new__(cls, child: Repository) -> ReadOnlyRepository: ...
    def __new__(cls, child: Repository) -> ReadOnlyRepository:
        return cls._make((child,))

    def describe(self) -> str:
        return f"read-only {self.children[0].describe()}"

    async def keys(self) -> set[str]:
        return set(await cached_keys(self.children[0]))

    async def _contains(self, key: str) -> bool:
        return await self.children[0].contains(key)

    async def _source(self, key: str) -> tuple[Repository, str]:
        return self.children[0], key

    async def _admit(self, keys: list[str]) -> list[str]:
        return keys


class ReadOnlyMetadataView(ReadOnlyRepository, MetadataView):
    """A :class:`ReadOnlyRepository` over metadata."""


class ReadOnlyBlobView(ReadOnlyRepository, BlobView):
    """A :class:`ReadOnlyRepository` over blobs."""


ReadOnlyRepository._kinds = (ReadOnlyMetadataView, ReadOnlyBlobView)
