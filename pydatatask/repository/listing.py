"""One listing per repository per scheduler tick.

Inside ``with listing_scope():`` the first ``cached_keys(repo)`` lists ``repo`` and every
later call (from another task, or from a view over it) reuses that result.
``cached_versions(repo)`` does the same for :meth:`~pydatatask.repository.base.Repository.versions`;
once a repository's versions are listed in a scope, ``cached_keys`` of it is taken from
them (one listing serves both). A caller that wants both should ask for the versions
first: a repository whose keys alone were listed is listed again for its versions.

Inside a scope, a repository that can hand out its listing without a copy (a
:class:`SharedListing`, as the in-memory ones are) is asked for that instead: what a
scope holds is never modified by its callers.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .base import Repository

__all__ = (
    "listing_scope",
    "cached_keys",
    "cached_versions",
    "SharedListing",
    "shared_keys",
    "shared_versions",
)

T = TypeVar("T")

# {(id(repository), "keys" | "versions"): the listing, or its future while it runs}
_Cache = dict[tuple[int, str], "asyncio.Future[Any]"]

_scope: contextvars.ContextVar[_Cache | None] = contextvars.ContextVar(
    "pydatatask_listing_scope", default=None
)


class SharedListing:
    """A repository that hands out its listing as objects its caller must not modify,
    without copying its keys (the same objects while nothing changes)."""

    async def shared_keys(self) -> set[str]:
        """The keys, not to be modified."""
        raise NotImplementedError

    async def shared_versions(self) -> dict[str, str | None]:
        """The versions, not to be modified."""
        raise NotImplementedError

    def keys_of_versions(self, versions: dict[str, str | None]) -> set[str] | None:
        """The keys of ``versions``, when it is what :meth:`shared_versions` handed out and
        nothing changed since (then the keys come without a copy), else None."""
        return None


async def shared_keys(repo: Repository) -> set[str]:
    """``await repo.keys()``, as a set not to be modified (no copy where the repository
    can avoid one)."""
    if isinstance(repo, SharedListing):
        return await repo.shared_keys()
    return await repo.keys()


async def shared_versions(repo: Repository) -> dict[str, str | None]:
    """``await repo.versions()``, as a dict not to be modified (see :func:`shared_keys`)."""
    if isinstance(repo, SharedListing):
        return await repo.shared_versions()
    return await repo.versions()


@contextmanager
def listing_scope() -> Iterator[_Cache]:
    """Share listings made inside the block."""
    cache: _Cache = {}
    token = _scope.set(cache)
    try:
        yield cache
    finally:
        _scope.reset(token)


async def cached_keys(repo: Repository) -> set[str]:
    """``await repo.keys()``, shared within the current :func:`listing_scope`.

    The set returned is shared: callers must not modify it.
    """
    cache = _scope.get()
    if cache is None:
        return await repo.keys()
    fut = cache.get((id(repo), "keys"))
    if fut is not None:
        return await asyncio.shield(fut)
    versions = cache.get((id(repo), "versions"))
    if versions is not None:
        listed: dict[str, str | None] = await asyncio.shield(versions)
        fut = cache.get((id(repo), "keys"))  # another caller may have made the set meanwhile
        if fut is not None:
            return await asyncio.shield(fut)
        same = repo.keys_of_versions(listed) if isinstance(repo, SharedListing) else None
        keys = set(listed) if same is None else same
        done = asyncio.get_running_loop().create_future()
        done.set_result(keys)
        cache[(id(repo), "keys")] = done
        return keys
    return await _shared(cache, (id(repo), "keys"), lambda: shared_keys(repo))


async def cached_versions(repo: Repository) -> dict[str, str | None]:
    """``await repo.versions()``, shared within the current :func:`listing_scope`.

    The dict returned is shared: callers must not modify it.
    """
    cache = _scope.get()
    if cache is None:
        return await repo.versions()
    fut = cache.get((id(repo), "versions"))
    if fut is not None:
        return await asyncio.shield(fut)
    return await _shared(cache, (id(repo), "versions"), lambda: shared_versions(repo))


async def _shared(cache: _Cache, slot: tuple[int, str], list_: Callable[[], Awaitable[T]]) -> T:
    """Run ``list_()`` once for ``slot``: later callers await its future."""
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    cache[slot] = fut
    try:
        result = await list_()
    except BaseException as exc:
        del cache[slot]
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)
            fut.exception()  # waiters get it; nobody waiting is fine too
        raise
    fut.set_result(result)
    return result
