"""Views that change what a child shows: filter keys, translate keys, map values.

They follow the rules of every view (:mod:`pydatatask.repository.view`): the key set comes
from one listing of the child per scheduler tick, a view is the kind of repository its
child is, and each says which stored value a key depends on (``underlying``) and under
which keys a stored value is seen (``view_keys``). The set-operation views (and, or,
blocking, fallback, read-only) are in :mod:`pydatatask.repository.combinators`.
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
from .view import BlobView, MetadataView, RepositoryView, _metadata

__all__ = (
    "FilterRepository",
    "FilterMetadataView",
    "FilterBlobView",
    "TranslateKeysRepository",
    "TranslateKeysMetadataView",
    "TranslateKeysBlobView",
    "MapValuesRepository",
)

log = logging.getLogger("pydatatask.repository")


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
