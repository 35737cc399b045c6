"""The base of the views: :class:`RepositoryView`, and the kinds :class:`MetadataView`
and :class:`BlobView` (see :mod:`pydatatask.repository.combinators` for the views
themselves and the rule that decides a view's kind).

A view computes its key set from its ``children``; reads are forwarded to the child that
holds the key, writes to the child the view names (or refused). Every view also says
which stored values a key depends on (:meth:`RepositoryView.underlying`) and, the other
way round, under which keys a stored value is seen (:meth:`RepositoryView.view_keys`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Self, cast

from ..errors import ConfigurationError, InvalidKeyError, KeyNotFoundError, ReadOnlyRepositoryError
from ..keys import is_valid_key, validate_key
from .base import BlobReader, BlobRepository, BlobWriter, MetadataRepository, Repository
from .listing import cached_keys

__all__ = ("RepositoryView", "MetadataView", "BlobView", "read_source", "stored_repositories")

#: above this many keys, a view checks membership in a child with one (per-tick cached)
#: listing instead of one ``contains`` round trip per key
_LIST_ABOVE = 32


async def _list_all(repos: Iterable[Repository]) -> list[set[str]]:
    return list(await asyncio.gather(*(cached_keys(r) for r in repos)))


async def _members(repo: Repository, keys: list[str]) -> set[str]:
    """Those of ``keys`` that ``repo`` holds."""
    if len(keys) > _LIST_ABOVE:
        return (await cached_keys(repo)).intersection(keys)
    found = await asyncio.gather(*(repo.contains(k) for k in keys))
    return {k for k, ok in zip(keys, found, strict=True) if ok}


def _metadata(repo: Repository) -> MetadataRepository:
    # a MetadataView is only ever built over metadata children (see RepositoryView._make)
    assert isinstance(repo, MetadataRepository), repo
    return repo


def _blobs(repo: Repository) -> BlobRepository:
    assert isinstance(repo, BlobRepository), repo
    return repo


class RepositoryView(Repository):
    """Base of the views: a key set computed from ``children``, reads forwarded to them.

    A plain ``RepositoryView`` (children of mixed kinds) lists keys and answers
    ``contains``; :class:`MetadataView` and :class:`BlobView` add the reads (and, where
    the view allows it, the writes) of their kind.

    A view of your own subclasses one of the three, builds itself in ``__new__`` (with
    ``cls._make(children)``, then its own attributes) and implements ``describe``,
    ``keys`` (listing its children with :func:`~pydatatask.repository.listing.cached_keys`)
    and ``_contains``; the hooks below say where reads and writes go and how keys map.
    """

    children: tuple[Repository, ...] = ()
    #: the (metadata, blob) classes of this combinator, chosen by the kind of the children
    _kinds: ClassVar[tuple[type[RepositoryView], type[RepositoryView]] | None] = None
    #: reads may come from any child (or, fallback), not only the first
    _reads_any_child: ClassVar[bool] = False

    def __new__(cls, *children: Repository) -> Self:
        return cls._make(children)

    @classmethod
    def _make(cls, children: tuple[Repository, ...]) -> Self:
        """A new view of the kind its read children decide (see the module docstring)."""
        name = cls._public_name()
        if not children:
            raise ConfigurationError(f"{name} needs at least one repository")
        for child in children:
            if not isinstance(child, Repository):
                raise ConfigurationError(f"{name}: {child!r} is not a Repository")
        target: type[RepositoryView] = cls
        if cls.__dict__.get("_kinds") is not None:  # a combinator (not one of its kinds, nor a subclass)
            assert cls._kinds is not None
            readers = children if cls._reads_any_child else children[:1]
            if all(isinstance(c, MetadataRepository) for c in readers):
                target = cls._kinds[0]
            elif all(isinstance(c, BlobRepository) for c in readers):
                target = cls._kinds[1]
        self = cast(Self, object.__new__(target))
        self.children = children
        return self

    @classmethod
    def _public_name(cls) -> str:
        """The combinator's name, also for its metadata and blob classes."""
        for klass in cls.__mro__[1:]:
            if cls in (klass.__dict__.get("_kinds") or ()):
                return klass.__name__
        return cls.__name__

    # ---- what a view is made of ----
    @property
    def is_writable(self) -> bool:
        return False

    async def validate(self, create: bool = False) -> None:
        for child in self.children:
            await child.validate(create)

    @property
    def keeps_keys(self) -> bool:
        """Whether every key of the view is the same key in every repository under it."""
        return all(not isinstance(c, RepositoryView) or c.keeps_keys for c in self.children)

    def underlying(self, key: str) -> list[tuple[Repository, str]]:
        """The ``(repository, key)`` pairs of the stored (non-view) repositories whose
        contents decide what the view holds under ``key``, through nested views.

        Membership and reads depend on nothing else: a task reading ``key`` through the
        view reads (or is started because of) exactly these values.
        """
        out: list[tuple[Repository, str]] = []
        try:
            pairs_of_children = self._child_pairs(key)
        except InvalidKeyError:  # a translated key no repository can hold: nothing is read
            return out
        for child, child_key in pairs_of_children:
            pairs = child.underlying(child_key) if isinstance(child, RepositoryView) else [(child, child_key)]
            for pair in pairs:
                if not any(pair[0] is r and pair[1] == k for r, k in out):
                    out.append(pair)
        return out

    def view_keys(self, repository: Repository, key: str) -> set[str]:
        """The keys of this view whose :meth:`underlying` pairs include ``(repository, key)``."""
        out: set[str] = set()
        for index, child in enumerate(self.children):
            if isinstance(child, RepositoryView):
                child_keys = child.view_keys(repository, key)
            elif child is repository:
                child_keys = {key}
            else:
                continue
            for child_key in child_keys:
                mine = self._view_key(index, child_key)
                if mine is not None and is_valid_key(mine):
                    out.add(mine)
        return out

    def repositories(self) -> list[Repository]:
        """The stored (non-view) repositories under this view, each once."""
        out: list[Repository] = []
        for child in self.children:
            for repo in child.repositories() if isinstance(child, RepositoryView) else [child]:
                if not any(repo is r for r in out):
                    out.append(repo)
        return out

    def source_of(self, key: str) -> tuple[Repository, str] | None:
        """The child and child key that reads of ``key`` come from, when that is known
        without looking (None for views that read from whichever child holds the key)."""
        if self._reads_any_child and len(self.children) > 1:
            return None
        return self.children[0], self._child_key(key)

    def _check_key(self, key: str) -> str:
        """A view admits the keys every child admits (under its child key)."""
        for child, child_key in self._child_pairs(key):
            child._check_key(child_key)
        return key

    # ---- hooks of the combinators ----
    def _child_key(self, key: str) -> str:
        """The key in the children (translated by :class:`TranslateKeysRepository`)."""
        return key

    def _view_key(self, index: int, child_key: str) -> str | None:
        """The key of the view for ``child_key`` of child ``index`` (None: not seen)."""
        return child_key

    def _child_pairs(self, key: str) -> list[tuple[Repository, str]]:
        return [(child, self._child_key(key)) for child in self.children]

    async def _source(self, key: str) -> tuple[Repository, str]:
        """The child (and its key) that holds ``key`` for reading."""
        if not await self._contains(key):
            raise KeyNotFoundError(key, self.describe())
        return self.children[0], self._child_key(key)

    async def _admit(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` (held by the read source) that the view holds."""
        return [
            k
            for k, ok in zip(keys, await asyncio.gather(*(self._contains(k) for k in keys)), strict=True)
            if ok
        ]

    async def _write_target(self, key: str) -> tuple[Repository, str]:
        raise ReadOnlyRepositoryError(f"{self.describe()} is read-only")

    async def _list(self) -> Iterable[str]:
        return await self.keys()

    async def _list_versions(self) -> dict[str, str | None]:
        """Each key's version in the child its reads come from: the first child (or, for
        views that read from whichever child holds the key, the first that does), under
        the child's key."""
        readers = self.children if self._reads_any_child else self.children[:1]
        keys = await self.keys()
        versions = await asyncio.gather(*(c.versions() for c in readers))
        out: dict[str, str | None] = {}
        for key in keys:
            out[key] = None
            try:
                child_key = self._child_key(key)
            except InvalidKeyError:
                continue
            for child_versions in versions:
                if child_key in child_versions:
                    out[key] = child_versions[child_key]
                    break
        return out

    async def _delete(self, key: str) -> None:
        raise ReadOnlyRepositoryError(f"{self.describe()} is a view; delete from its underlying repository")


class MetadataView(RepositoryView, MetadataRepository):
    """A view over metadata repositories: a :class:`~pydatatask.repository.base.MetadataRepository`.

    ``get_many`` asks each read source once (its own bulk read), so values that do not
    decode reach the caller exactly as the child reports them.
    """

    async def _get(self, key: str) -> Any:
        repo, child_key = await self._source(key)
        try:
            return await _metadata(repo).get(child_key)
        except KeyNotFoundError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        wanted = await self._admit(keys)
        mapping = {k: self._child_key(k) for k in wanted}
        got = await _metadata(self.children[0])._get_many(list(mapping.values()))
        return {k: got[ck] for k, ck in mapping.items() if ck in got}

    async def _put(self, key: str, value: Any) -> None:
        repo, child_key = await self._write_target(key)
        await _metadata(repo).put(child_key, value)

    async def _create(self, key: str, value: Any) -> bool:
        repo, child_key = await self._write_target(key)
        return await _metadata(repo).create(child_key, value)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        repo, child_key = await self._write_target(key)
        return await _metadata(repo).replace_if(child_key, expected, value)


class BlobView(RepositoryView, BlobRepository):
    """A view over blob repositories: a :class:`~pydatatask.repository.base.BlobRepository`.

    Streams are the child's own: a write through a writable view is as atomic as the
    child makes it.
    """

    async def _open_reader(self, key: str) -> BlobReader:
        repo, child_key = await self._source(key)
        try:
            return await _blobs(repo)._open_reader(child_key)
        except KeyNotFoundError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _open_writer(self, key: str) -> BlobWriter:
        repo, child_key = await self._write_target(key)
        writer = _ChildWriter(_blobs(repo).open(child_key, "wb"))
        await writer.start()
        return writer

    async def read_bytes(self, key: str) -> bytes:
        """Return the whole value of ``key`` (the child's own whole-value read)."""
        repo, child_key = await self._source(validate_key(key))
        try:
            return await _blobs(repo).read_bytes(child_key)
        except KeyNotFoundError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, where the view allows writes."""
        repo, child_key = await self._write_target(validate_key(key))
        await _blobs(repo).write_bytes(child_key, data)

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        repo, child_key = await self._write_target(key)
        return await _blobs(repo).create_bytes(child_key, data)

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        repo, child_key = await self._write_target(key)
        return await _blobs(repo).replace_bytes_if(child_key, expected, data)


class _ChildWriter(BlobWriter):
    """A write through a view: the child's own ``open(key, "wb")``, committed or aborted
    with the view's, so whatever the child does around a write happens as for a direct one."""

    def __init__(self, context: AbstractAsyncContextManager[BlobWriter]) -> None:
        self._context = context
        self._inner: BlobWriter | None = None
        self._ended = False  # the child's context has been left (it aborts a failed commit itself)

    async def start(self) -> None:
        self._inner = await self._context.__aenter__()

    async def write(self, data: bytes) -> int:
        assert self._inner is not None
        return await self._inner.write(data)

    async def commit(self) -> None:
        self._ended = True
        await self._context.__aexit__(None, None, None)

    async def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        reason = _Aborted("the write through the view was abandoned")
        await self._context.__aexit__(_Aborted, reason, None)


class _Aborted(Exception):
    """Passed to the child's write context so that it aborts."""


def read_source(repo: Repository, key: str) -> tuple[Repository, str]:
    """Follow views down to the repository (and key) that reads of ``key`` come from.

    Stops at a stored repository, or at a view that reads from whichever child holds the
    key (:class:`~pydatatask.repository.combinators.OrRepository`,
    :class:`~pydatatask.repository.combinators.FallbackRepository`); template information
    such as a file's path is that of the repository returned.
    """
    while isinstance(repo, RepositoryView):
        source = repo.source_of(key)
        if source is None:
            break
        repo, key = source
    return repo, key


def stored_repositories(repo: Repository) -> list[Repository]:
    """``[repo]``, or for a view the stored repositories under it (each once)."""
    return repo.repositories() if isinstance(repo, RepositoryView) else [repo]
