"""Views over other repositories: and, or, blocking, fallback and read-only (the views that
filter keys, translate keys or map values are in :mod:`pydatatask.repository.transform`).

A view computes its key set from **one listing of each child** (concurrently, through
:func:`~pydatatask.repository.listing.cached_keys`), with set operations, so a scheduler
tick costs one listing per underlying repository however many views and tasks share it.
Reads are forwarded to the child that holds the key; writes are refused unless the view
says where they go (:class:`~pydatatask.repository.transform.TranslateKeysRepository`,
:class:`FallbackRepository`).

**A view is the kind of repository its reads come from.** Built over metadata
repositories a view is a :class:`~pydatatask.repository.view.MetadataView` (a
:class:`~pydatatask.repository.base.MetadataRepository`), over blob repositories a
:class:`~pydatatask.repository.view.BlobView` (a :class:`~pydatatask.repository.base.BlobRepository`), for the type checker
as well as for ``isinstance``. The children that decide the kind are those reads come
from: the first child of :class:`AndRepository`, the source of
:class:`BlockingRepository`, the one child of the single-child views, and *every* child
of :class:`OrRepository` and :class:`FallbackRepository` (which read from whichever holds
the key). When those children are of different kinds, or of neither (a
:class:`~pydatatask.repository.filesystem.DirectoryRepository`), the view is a plain
:class:`~pydatatask.repository.view.RepositoryView`: it lists and answers ``contains``, which is all that readiness
needs (``AndRepository(files, yaml_records)``).

Every view also says which stored values a key depends on (:meth:`RepositoryView.underlying <pydatatask.repository.view.RepositoryView.underlying>`)
and, the other way round, under which keys a stored value is seen
(:meth:`RepositoryView.view_keys <pydatatask.repository.view.RepositoryView.view_keys>`), so the scheduler can gate a downstream task on the
success of the upstream job that wrote what it reads, whatever views sit between them.
"""

from __future__ import annotations

import logging
from typing import Any, overload

from ..errors import InvalidKeyError, KeyNotFoundError
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


def _admits(repo: Repository, key: str) -> bool:
    """Whether ``repo`` can store ``key`` by its own rule (a file name length, a tag grammar)."""
    try:
        repo._check_key(key)
    except InvalidKeyError:
        return False
    return True


async def _holds(repo: Repository, key: str) -> bool:
    """Whether ``repo`` holds ``key``; False for a key it cannot store at all."""
    return _admits(repo, key) and await repo.contains(key)


class _FirstHolder(RepositoryView):
    """Reads come from the first child holding the key (or, fallback).

    The view holds the keys of any child, so it admits a key that **some** child can
    store: a name one child lists is never refused because another child could not hold
    it (a key over a file name's length, kept in S3); such a child is passed over.
    """

    _reads_any_child = True

    def _check_key(self, key: str) -> str:
        first: InvalidKeyError | None = None
        for child in self.children:
            try:
                child._check_key(key)
            except InvalidKeyError as exc:
                first = first or exc
            else:
                return key
        assert first is not None
        raise first

    async def _source(self, key: str) -> tuple[Repository, str]:
        for child in self.children:
            if await _holds(child, key):
                return child, key
        raise KeyNotFoundError(key, self.describe())

    async def _contains(self, key: str) -> bool:
        for child in self.children:
            if await _holds(child, key):
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
            got = await _metadata(child)._get_many([k for k in todo if _admits(child, k)])
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
        if await _holds(self.children[1], key):
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
        if await _holds(self.children[1], key):
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
    """``child`` with every write and delete refused (:class:`~pydatatask.errors.ReadOnlyRepositoryError`)."""

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
